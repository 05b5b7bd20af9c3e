"""The worker in-process, on a real SQLite store: batching, crash takeover, retention, orphan files, progress
coalescing."""

from __future__ import annotations

import os
import threading
import time

import pytest
import sqlalchemy as sa

from orfeas.config import Settings
from orfeas.pipeline.options import GenerateOptions
from orfeas.service.auth import LOCAL_USER
from orfeas.service.batch_sizing import BatchSizer, MemoryProbe
from orfeas.service.jobs import JobService, Upload
from orfeas.service.worker import ORPHAN_GRACE_SECONDS, ProgressBuffer, Worker, is_out_of_memory
from orfeas.store.artifacts import LocalArtifactStore
from orfeas.store.db import create_db_engine, sqlite_url
from orfeas.store.jobs import JobNotFound, JobStore, new_job_id
from orfeas.store.migrate import init_db
from tests.synthetic import EXAMPLES

CHAIR = Upload("chair.png", (EXAMPLES / "chair.png").read_bytes())


@pytest.fixture
def parts(tmp_path):
    settings = Settings(data_dir=tmp_path, retention_hours=0.0)
    engine = create_db_engine(sqlite_url(tmp_path))
    init_db(engine)
    store = JobStore(engine)
    artifacts = LocalArtifactStore(tmp_path)
    service = JobService(store, artifacts, settings)
    worker = Worker(store, artifacts, settings, BatchSizer(MemoryProbe("cpu"), max_batch=8), worker_id="w1")
    return store, artifacts, service, worker


def test_jobs_with_different_generator_settings_are_not_batched_together(parts):
    store, _, service, worker = parts
    (first,), _ = service.submit([CHAIR], GenerateOptions(resolution=64, faces=2000), LOCAL_USER)
    (second,), _ = service.submit([CHAIR], GenerateOptions(resolution=96, faces=2000), LOCAL_USER)
    (third,), _ = service.submit([CHAIR], GenerateOptions(resolution=64, faces=3000, seed=5), LOCAL_USER)
    assert worker.run_once()
    assert {store.get(j.id).status for j in (first, third)} == {"succeeded"}
    assert store.get(second.id).status == "queued"
    assert store.get(first.id).result["batch_size"] == 2
    assert worker.run_once()
    assert store.get(second.id).result["batch_size"] == 1
    assert not worker.run_once()  # empty queue


def test_results_past_retention_are_deleted_with_their_files(parts):
    store, artifacts, service, worker = parts
    (job,), _ = service.submit([CHAIR], GenerateOptions(resolution=64, faces=2000), LOCAL_USER)
    worker.run_once()
    folder = artifacts.result_dir(job.id)
    assert (folder / "model.glb").is_file()
    worker.maintain()  # retention 0 h: everything finished is old
    with pytest.raises(JobNotFound):
        store.get(job.id)
    assert not folder.exists() and not (artifacts.root / "inputs" / job.id).exists()


def test_a_dead_workers_batch_is_taken_over_and_retried_in_halves(parts):
    store, _, service, worker = parts
    jobs, _ = service.submit([CHAIR] * 4, GenerateOptions(resolution=64, faces=2000), LOCAL_USER)
    assert len(store.claim_batch("dead-worker", 8, lease_seconds=0.01)) == 4  # claimed, then the worker died
    time.sleep(0.05)
    worker.maintain()  # the takeover: nobody is charged, each job may join batches of 2 at most
    assert {(store.get(j.id).status, store.get(j.id).batch_limit) for j in jobs} == {("queued", 2)}
    assert worker.run_once() and worker.run_once() and not worker.run_once()
    for job in map(store.get, [j.id for j in jobs]):
        assert (job.status, job.result["batch_size"], job.attempts, job.solo_crashes) == ("succeeded", 2, 2, 0)


def make_old(path, seconds: float = 2 * ORPHAN_GRACE_SECONDS) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_maintenance_deletes_old_files_without_a_job_row_and_keeps_the_rest(tmp_path):
    settings = Settings(data_dir=tmp_path)  # default retention: nothing finished is old
    engine = create_db_engine(sqlite_url(tmp_path))
    init_db(engine)
    store, artifacts = JobStore(engine), LocalArtifactStore(tmp_path)
    service = JobService(store, artifacts, settings)
    worker = Worker(store, artifacts, settings, BatchSizer(MemoryProbe("cpu"), max_batch=8), worker_id="w1")
    (done,), _ = service.submit([CHAIR], GenerateOptions(resolution=64, faces=2000), LOCAL_USER)
    worker.run_once()
    (waiting,), _ = service.submit([CHAIR], GenerateOptions(resolution=64, faces=2000), LOCAL_USER)
    inputs, results = artifacts.root / "inputs", artifacts.root / "results"
    lost_input, lost_results, in_flight = new_job_id(), new_job_id(), new_job_id()
    artifacts.save_input(lost_input, CHAIR.data)  # a refused or crashed submission: an input and no row
    with artifacts.write_results(lost_results) as folder:  # retention cut short between the row and the files
        (folder / "model.glb").write_bytes(b"glb")
    artifacts.save_input(in_flight, CHAIR.data)  # saved just now, its row not yet inserted
    partial = inputs / f".{new_job_id()}.0badcafe.tmp"  # an input write cut short by a crash
    partial.write_bytes(b"half")
    stranger = inputs / "README"
    stranger.write_text("not a job file")
    for path in (inputs / lost_input, results / lost_results, partial, stranger, inputs / done.id):
        make_old(path)
    make_old(results / done.id)
    make_old(inputs / waiting.id)

    worker.maintain()

    assert not (inputs / lost_input).exists() and not (results / lost_results).exists() and not partial.exists()
    assert (inputs / in_flight).exists() and stranger.exists()
    assert (inputs / waiting.id).exists() and (inputs / done.id).exists()
    assert artifacts.result_file(done.id, "model.glb") is not None
    assert store.get(done.id).status == "succeeded" and store.get(waiting.id).status == "queued"


def test_a_database_error_deletes_no_file(tmp_path):
    settings = Settings(data_dir=tmp_path)
    engine = create_db_engine(sqlite_url(tmp_path))
    init_db(engine)
    artifacts = LocalArtifactStore(tmp_path)
    worker = Worker(JobStore(engine), artifacts, settings, BatchSizer(MemoryProbe("cpu")), worker_id="w1")
    orphan = new_job_id()
    artifacts.save_input(orphan, CHAIR.data)
    make_old(artifacts.root / "inputs" / orphan)
    engine.dispose()
    (tmp_path / "orfeas.db").unlink()
    (tmp_path / "orfeas.db").mkdir()  # the database cannot be opened: every query fails
    with pytest.raises(sa.exc.OperationalError):
        worker.sweep_orphans()
    assert (artifacts.root / "inputs" / orphan).exists()


def test_progress_buffer_writes_the_latest_stage_per_job_in_one_go(parts):
    store, _, service, _ = parts
    jobs, _ = service.submit([CHAIR, CHAIR], GenerateOptions(resolution=64), LOCAL_USER)
    claimed = store.claim_batch("w1", 2, 30)
    buffer = ProgressBuffer(store, "w1", interval=60)
    buffer.last_flush = time.monotonic()  # the timer's write is a minute away: only flush() writes
    for stage in ("image_loading", "background_removal", "shape_generation"):
        for job in claimed:
            buffer.record(job.id, stage)
    assert store.get(jobs[0].id).stage == "starting"
    assert buffer.flush() == {j.id for j in claimed}
    assert {store.get(j.id).stage for j in jobs} == {"shape_generation"}
    store.cancel(jobs[1].id)
    buffer.record(jobs[0].id, "mesh_extraction")
    buffer.record(jobs[1].id, "mesh_extraction")
    assert buffer.flush() == {jobs[0].id}  # the canceled job is no longer ours


def test_a_stage_recorded_too_soon_is_still_written_when_the_interval_is_up(parts):
    store, _, service, _ = parts
    (job,), _ = service.submit([CHAIR], GenerateOptions(resolution=64), LOCAL_USER)
    store.claim_batch("w1", 1, 30)
    buffer = ProgressBuffer(store, "w1", interval=0.2)
    buffer.record(job.id, "image_loading")  # written at once
    buffer.record(job.id, "shape_generation")  # too soon: the timer writes it
    assert store.get(job.id).stage == "image_loading"
    time.sleep(0.5)  # a long generator call, with nothing else recorded
    assert store.get(job.id).stage == "shape_generation"


@pytest.mark.parametrize(
    ("error", "expected"),
    [(MemoryError(), True), (type("OutOfMemoryError", (RuntimeError,), {})(), True), (ValueError(), False)],
)
def test_out_of_memory_is_recognised_by_type_or_framework_name(error, expected):
    assert is_out_of_memory(error) is expected


def test_an_idle_worker_starts_a_submitted_job_at_once(tmp_path):
    """The idle worker waits `poll_seconds` between queue checks (here far longer than the test); a submission
    through the job service wakes it, and so does stopping it."""
    settings = Settings(data_dir=tmp_path, poll_seconds=60.0)
    engine = create_db_engine(sqlite_url(tmp_path))
    init_db(engine)
    store, artifacts = JobStore(engine), LocalArtifactStore(tmp_path)
    service = JobService(store, artifacts, settings)
    worker = Worker(store, artifacts, settings, BatchSizer(MemoryProbe("cpu"), max_batch=8), worker_id="w1")
    service.on_submitted(worker.wake)
    stop = threading.Event()
    loop = threading.Thread(target=worker.run, args=(stop,))
    loop.start()
    try:
        time.sleep(0.5)  # idle by now
        (job,), _ = service.submit([CHAIR], GenerateOptions(resolution=64, faces=2000), LOCAL_USER)
        deadline = time.monotonic() + 30
        while store.get(job.id).status != "succeeded" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.get(job.id).status == "succeeded"
    finally:
        stop.set()
        worker.wake()
        loop.join(timeout=10)
    assert not loop.is_alive()
