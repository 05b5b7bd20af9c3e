"""Accepting, describing and canceling jobs: what the API calls; the worker does the generating."""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trimesh
from PIL import Image

from orfeas.config import Settings
from orfeas.errors import IdempotencyConflict, InvalidImage, InvalidOptions, StorageUnavailable, WeightsMissing
from orfeas.limits import check_idempotency_key, clean_input_name
from orfeas.pipeline.generate import batch_key, check_input_views
from orfeas.pipeline.generators import Generator, GeneratorCache, available_generators, is_available
from orfeas.pipeline.image import decoded_bytes, inspect_image, read_header
from orfeas.pipeline.options import GenerateOptions
from orfeas.pipeline.preview import render_preview
from orfeas.pipeline.stages import Stage
from orfeas.pipeline.views import batch_views, check_view_names
from orfeas.service.auth import Principal
from orfeas.service.budget import MemoryBudget
from orfeas.store.artifacts import ArtifactStorage
from orfeas.store.jobs import JobNotFound, JobRecord, JobStore, NewJob

logger = logging.getLogger(__name__)
PREVIEW_NAME = "preview.png"
STORAGE_FULL_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}
# The progress a job has reached when a pipeline stage starts: the stages the pipeline reports (`on_stage`) and the
# export the worker does after it. Background removal is timed but not reported (it runs with image loading); the
# store writes the lifecycle stages itself ("starting" at 0, "done" at 100).
STAGE_PROGRESS: dict[Stage, int] = {
    Stage.IMAGE_LOADING: 5,
    Stage.SHAPE_GENERATION: 20,
    Stage.MESH_EXTRACTION: 60,
    Stage.MESH_CLEANUP: 70,
    Stage.TEXTURING: 85,
    Stage.EXPORT: 92,
}


@dataclass(frozen=True)
class Upload:
    """One job's upload: an image (its file name and bytes), or several views of one object by view name
    (`views`, front required; `data` is then unused)."""

    name: str
    data: bytes = b""
    views: dict[str, bytes] | None = None

    def stored(self) -> bytes:
        """What is kept as the job's input: the image itself, or a zip of the views (`read_input` undoes it)."""
        if self.views is None:
            return self.data
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            for name, data in self.views.items():
                archive.writestr(name, data)
        return buffer.getvalue()


def read_input(stored: bytes) -> bytes | dict[str, bytes]:
    """A job's stored input as the pipeline takes it: an image's bytes, or {view name: bytes} (a zip is never an
    image we accept, so the two cannot be confused)."""
    if not stored.startswith(b"PK\x03\x04"):
        return stored
    with zipfile.ZipFile(io.BytesIO(stored)) as archive:
        views = {name: archive.read(name) for name in archive.namelist()}
    return {name: views[name] for name in check_view_names(views)}


class JobService:
    """Validates uploads, stores them with their jobs, and reads jobs back."""

    def __init__(self, store: JobStore, artifacts: ArtifactStorage, settings: Settings):
        self.store = store
        self.artifacts = artifacts
        self.settings = settings
        self.pipeline_settings = settings.pipeline()
        self._generators = GeneratorCache(self.pipeline_settings)  # only to check options
        self._validation_budget = MemoryBudget(settings.validation_memory_bytes)
        self._on_submitted: list[Callable[[], None]] = []

    def on_submitted(self, callback: Callable[[], None]) -> None:
        """Call `callback` (quick, thread-safe: a worker's `wake`) whenever new jobs have been queued."""
        self._on_submitted.append(callback)

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
        idempotency_key = check_idempotency_key(idempotency_key)
        if not is_available(options.backend, self.pipeline_settings):
            known = ", ".join(available_generators(self.pipeline_settings))
            raise InvalidOptions(f"unknown backend {options.backend!r}; available: {known}")
        views = batch_views([upload.views for upload in uploads if upload.views is not None] or [None])
        if any(upload.views is None for upload in uploads) and views:
            raise InvalidOptions("one request holds single images or multi-view jobs, not both")
        generator = self.generator(options.backend)
        try:
            generator.check_options(options.generator_options)
        except WeightsMissing:
            if principal.is_admin:
                raise
            raise WeightsMissing(
                "the chosen model's weights are not on this server; GET /api/generators lists the usable models "
                "(an admin sees where the weights go)"
            ) from None
        check_input_views(generator, options, views)
        names = [clean_input_name(upload.name) for upload in uploads]
        if idempotency_key:
            existing = self.store.find_idempotent(idempotency_key, owner)
            if existing:
                self._check_same_request(idempotency_key, existing, names, uploads, options)
                return existing, False
        for name, upload in zip(names, uploads, strict=True):
            for view, data in (upload.views or {"": upload.data}).items():
                self._check_image(f"{name} ({view} view)" if view else name, data)

        key = batch_key(options, views)
        new_jobs = [
            NewJob(id=uuid.uuid4().hex, options=options.model_dump(mode="json"), batch_key=key, input_name=name)
            for name in names
        ]
        try:
            for job, upload in zip(new_jobs, uploads, strict=True):
                self.artifacts.save_input(job.id, upload.stored())
            jobs, created = self.store.create_jobs(new_jobs, idempotency_key=idempotency_key, owner=owner)
        except BaseException as exc:
            self._delete_inputs(new_jobs)
            if isinstance(exc, OSError) and exc.errno in STORAGE_FULL_ERRORS:
                raise StorageUnavailable(
                    f"the server cannot store uploads now ({os.strerror(exc.errno)}); nothing was stored, retry later"
                ) from None
            raise
        if not created:  # a concurrent request with the same key won: drop our copies
            self._delete_inputs(new_jobs)
        for callback in self._on_submitted if created else ():
            callback()
        return jobs, created

    def _check_same_request(
        self, key: str, existing: list[JobRecord], names: list[str], uploads: list[Upload], options: GenerateOptions
    ) -> None:
        """A repeat must be the same request: the same images (by content), names and options."""
        same = len(existing) == len(uploads) and all(
            job.options == options.model_dump(mode="json")
            and job.input_name == name
            and self._stored_input_digest(job.id) in (None, hashlib.sha256(upload.stored()).digest())
            for job, name, upload in zip(existing, names, uploads, strict=False)
        )
        if not same:
            raise IdempotencyConflict(
                f"Idempotency-Key {key!r} was already used for a different request (other images or options); "
                "use a new key for a new request"
            )

    def _stored_input_digest(self, job_id: str) -> bytes | None:
        """The SHA-256 of a job's stored input; None once retention or a finished job's cleanup removed it."""
        try:
            return hashlib.sha256(self.artifacts.load_input(job_id)).digest()
        except FileNotFoundError:
            return None

    def _check_image(self, name: str, data: bytes) -> None:
        """Decode the image once to prove it usable; concurrent uploads share one memory budget for it."""
        try:
            header = read_header(data, max_pixels=self.settings.max_image_pixels)
            with self._validation_budget.hold(decoded_bytes(header)):
                inspect_image(data, max_pixels=self.settings.max_image_pixels)
        except InvalidImage as exc:
            raise InvalidImage(f"{name}: {exc}") from None

    def _delete_inputs(self, new_jobs: list[NewJob]) -> None:
        for job in new_jobs:
            try:
                self.artifacts.delete(job.id)
            except OSError:  # the store is failing already; retention sweeps what is left
                logger.warning("could not delete the input of refused job %s", job.id)

    def generator(self, name: str) -> Generator:
        """The named generator, built once (building is cheap; weights load on first use)."""
        return self._generators.get(name)

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
        image = render_preview(trimesh.load_mesh(source), size=256)
        png = io.BytesIO()
        Image.fromarray(image).save(png, format="PNG")
        self.artifacts.save_result(job.id, PREVIEW_NAME, png.getvalue())
        saved = self.artifacts.result_file(job.id, PREVIEW_NAME)
        if saved is None:  # the job's results were deleted while its preview was drawn
            raise JobNotFound(f"job {job.id} has no preview (its results were deleted)")
        return saved

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
