"""JobService on a real SQLite store and a real artifact folder: what a submission stores, refuses and leaves."""

from __future__ import annotations

import errno
import io
import json

import pytest
from PIL import Image

from orfeas.config import Settings
from orfeas.errors import IdempotencyConflict, InvalidImage, InvalidOptions, StorageUnavailable
from orfeas.pipeline.generate import generate, save_result
from orfeas.pipeline.options import GenerateOptions
from orfeas.pipeline.stages import Stage
from orfeas.service.auth import LOCAL_USER, Principal
from orfeas.service.jobs import STAGE_PROGRESS, JobService, Upload, read_input
from orfeas.store import JobStore, create_db_engine, init_db
from orfeas.store.artifacts import LocalArtifactStore
from orfeas.store.db import sqlite_url
from orfeas.store.jobs import JobNotFound
from tests.synthetic import EXAMPLES

CHAIR = (EXAMPLES / "chair.png").read_bytes()
TEAPOT = (EXAMPLES / "teapot.png").read_bytes()
BOB = Principal("user", "bob", "bob")
CAROL = Principal("user", "carol", "carol")


@pytest.fixture
def service(tmp_path) -> JobService:
    engine = create_db_engine(sqlite_url(tmp_path))
    init_db(engine)
    settings = Settings(data_dir=tmp_path)
    return JobService(JobStore(engine), LocalArtifactStore(tmp_path), settings)


def stored_inputs(service: JobService) -> set[str]:
    return {p.name for p in (service.artifacts.root / "inputs").iterdir() if not p.name.startswith(".")}


def test_a_submission_stores_one_job_per_image_with_its_input(service):
    jobs, created = service.submit([Upload("a.png", CHAIR), Upload("b.png", TEAPOT)], GenerateOptions(), BOB)
    assert created and [job.input_name for job in jobs] == ["a.png", "b.png"]
    assert {job.owner for job in jobs} == {"user:bob"}
    assert stored_inputs(service) == {job.id for job in jobs}
    assert read_input(service.artifacts.load_input(jobs[0].id)) == CHAIR


def test_one_bad_image_refuses_the_request_and_stores_nothing(service):
    with pytest.raises(InvalidImage, match=r"b\.png"):
        service.submit([Upload("a.png", CHAIR), Upload("b.png", b"not an image")], GenerateOptions(), BOB)
    assert stored_inputs(service) == set()


def test_idempotency_keys_are_per_owner_and_per_request(service):
    first, _ = service.submit([Upload("a.png", CHAIR)], GenerateOptions(), BOB, "key-1")
    again, created = service.submit([Upload("a.png", CHAIR)], GenerateOptions(), BOB, "key-1")
    assert not created and [j.id for j in again] == [j.id for j in first]
    with pytest.raises(IdempotencyConflict, match="key-1"):
        service.submit([Upload("a.png", TEAPOT)], GenerateOptions(), BOB, "key-1")
    carols, created = service.submit([Upload("a.png", CHAIR)], GenerateOptions(), CAROL, "key-1")
    assert created and carols[0].id != first[0].id


def test_others_jobs_look_missing_and_admins_see_all(service):
    (job,), _ = service.submit([Upload("a.png", CHAIR)], GenerateOptions(), BOB)
    with pytest.raises(JobNotFound):
        service.get(job.id, CAROL)
    with pytest.raises(JobNotFound):
        service.cancel(job.id, CAROL)
    assert service.get(job.id, LOCAL_USER).id == job.id
    assert service.list(CAROL, limit=10) == ([], 0)
    assert service.list(LOCAL_USER, limit=10)[1] == 1


def test_views_are_stored_as_one_input_and_refused_by_a_single_view_generator(service):
    views = {"back": TEAPOT, "front": CHAIR}
    with pytest.raises(InvalidOptions, match="not views"):
        service.submit([Upload("front.png", views=views)], GenerateOptions(), BOB)
    assert stored_inputs(service) == set()
    assert read_input(Upload("x", views=views).stored()) == {"front": CHAIR, "back": TEAPOT}


def test_a_full_disk_is_storage_unavailable_and_leaves_nothing(service, monkeypatch):
    def full(job_id, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(service.artifacts, "save_input", full)
    with pytest.raises(StorageUnavailable, match="No space left"):
        service.submit([Upload("a.png", CHAIR)], GenerateOptions(), BOB)
    assert service.list(LOCAL_USER, limit=10)[1] == 0


def test_names_are_cleaned_and_images_over_the_pixel_budget_refused(service):
    (job,), _ = service.submit([Upload("../x\x00y.png", CHAIR)], GenerateOptions(), BOB)
    assert job.input_name == "xy.png"
    big = io.BytesIO()
    Image.new("RGB", (3000, 3000)).save(big, "PNG")
    service.settings = Settings(data_dir=service.settings.data_dir, max_image_pixels=1_000_000)
    with pytest.raises(InvalidImage, match="too large"):
        service.submit([Upload("big.png", big.getvalue())], GenerateOptions(), BOB)


def test_every_stage_the_pipeline_reports_has_its_progress_and_every_timed_stage_is_a_stage(tmp_path):
    reported: list[Stage] = []
    result = generate(CHAIR, GenerateOptions(resolution=64), on_stage=lambda _index, stage: reported.append(stage))
    save_result(result, tmp_path, "chair")
    reported.append(Stage.EXPORT)  # the worker's own stage, after the pipeline's
    assert all(isinstance(stage, Stage) for stage in reported)
    assert set(STAGE_PROGRESS) == set(reported)  # no progress for a stage that is never reported
    progress = [STAGE_PROGRESS[stage] for stage in reported]
    assert progress == sorted(progress) and progress[-1] < 100
    stored = json.loads((tmp_path / "chair.json").read_text())["profile"]["stages"]
    assert set(stored) == set(Stage) and all(Stage(name) in result.profile.stages for name in stored)
    assert Stage.BACKGROUND_REMOVAL in stored and Stage.BACKGROUND_REMOVAL not in STAGE_PROGRESS
