"""Accepting, describing and canceling jobs: what the API calls; the worker does the generating."""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass
from pathlib import Path

import trimesh
from PIL import Image

from orfeas.config import Settings
from orfeas.errors import InvalidImage, InvalidOptions
from orfeas.options import GenerateOptions
from orfeas.pipeline.generate import batch_key
from orfeas.pipeline.generators import Generator, available_generators, create_generator
from orfeas.pipeline.image import load_image
from orfeas.pipeline.preview import render_preview
from orfeas.service.auth import Principal
from orfeas.store.artifacts import ArtifactStorage
from orfeas.store.jobs import JobNotFound, JobRecord, JobStore, NewJob

PREVIEW_NAME = "preview.png"
# The stage a job is in, and the progress it has reached when that stage starts.
STAGE_PROGRESS = {
    "queued": 0,
    "starting": 2,
    "image_loading": 5,
    "background_removal": 10,
    "shape_generation": 20,
    "mesh_extraction": 60,
    "mesh_cleanup": 70,
    "texturing": 85,
    "export": 92,
    "done": 100,
}


@dataclass(frozen=True)
class Upload:
    """One uploaded image: its file name and bytes."""

    name: str
    data: bytes


class JobService:
    """Validates uploads, stores them with their jobs, and reads jobs back."""

    def __init__(self, store: JobStore, artifacts: ArtifactStorage, settings: Settings):
        self.store = store
        self.artifacts = artifacts
        self.settings = settings
        self._generators: dict[str, Generator] = {}  # built once, only to check options

    def submit(
        self,
        uploads: list[Upload],
        options: GenerateOptions,
        principal: Principal,
        idempotency_key: str | None = None,
    ) -> tuple[list[JobRecord], bool]:
        """Create one queued job per image for `principal`; returns (jobs, created). An idempotency key this
        principal used before returns the jobs of that request and creates nothing. Every image is decoded first,
        so a bad one refuses the whole request before anything is stored."""
        owner = principal.owner
        if not uploads:
            raise InvalidImage("no image uploaded (send one or more files in the field 'image')")
        if len(uploads) > self.settings.max_images_per_request:
            raise InvalidOptions(
                f"{len(uploads)} images in one request; the limit is {self.settings.max_images_per_request}"
            )
        if options.backend not in available_generators(self.settings):
            known = ", ".join(available_generators(self.settings))
            raise InvalidOptions(f"unknown backend {options.backend!r}; available: {known}")
        self.generator(options.backend).check_options(options.generator_options)
        if idempotency_key:
            existing = self.store.find_idempotent(idempotency_key, owner)
            if existing:
                return existing, False
        for upload in uploads:
            try:
                load_image(upload.data, max_pixels=self.settings.max_image_pixels)
            except InvalidImage as exc:
                raise InvalidImage(f"{upload.name}: {exc}") from None

        key = batch_key(options)
        new_jobs = [
            NewJob(id=uuid.uuid4().hex, options=options.model_dump(mode="json"), batch_key=key, input_name=u.name)
            for u in uploads
        ]
        for job, upload in zip(new_jobs, uploads, strict=True):
            self.artifacts.save_input(job.id, upload.data)
        jobs, created = self.store.create_jobs(new_jobs, idempotency_key=idempotency_key, owner=owner)
        if not created:  # a concurrent request with the same key won: drop our copies
            for job in new_jobs:
                self.artifacts.delete(job.id)
        return jobs, created

    def generator(self, name: str) -> Generator:
        """The named generator, built once (building is cheap; weights load on first use)."""
        if name not in self._generators:
            self._generators[name] = create_generator(name, self.settings)
        return self._generators[name]

    def preview_path(self, job: JobRecord) -> Path:
        """A 256 px rendering of a finished job's model, drawn on first request and kept with its results."""
        existing = self.artifacts.result_file(job.id, PREVIEW_NAME)
        if existing is not None:
            return existing
        files = (job.result or {}).get("files", {})
        fmt = next((f for f in ("glb", "ply", "stl") if f in files), None)
        source = self.artifacts.result_file(job.id, files[fmt]) if fmt else None
        if job.status != "succeeded" or source is None:
            raise JobNotFound(f"job {job.id} has no preview (status {job.status})")
        image = render_preview(trimesh.load(source, force="mesh"), size=256)
        png = io.BytesIO()
        Image.fromarray(image).save(png, format="PNG")
        self.artifacts.save_result(job.id, PREVIEW_NAME, png.getvalue())
        return self.artifacts.result_file(job.id, PREVIEW_NAME)

    def get(self, job_id: str, principal: Principal) -> JobRecord:
        """The job if `principal` may see it; another owner's job is indistinguishable from a missing one."""
        job = self.store.get(job_id)
        if not principal.may_see(job.owner):
            raise JobNotFound(f"no job {job_id!r}")
        return job

    def cancel(self, job_id: str, principal: Principal) -> JobRecord:
        """Cancel a queued or running job `principal` may see; a finished job comes back unchanged."""
        self.get(job_id, principal)
        return self.store.cancel(job_id)

    def list(
        self, principal: Principal, limit: int, offset: int = 0, status: str | None = None
    ) -> tuple[list[JobRecord], int]:
        """One page of the jobs `principal` may see, newest first, and how many there are."""
        owner = None if principal.is_admin else principal.owner
        return self.store.list_jobs(limit=limit, offset=offset, status=status, owner=owner)
