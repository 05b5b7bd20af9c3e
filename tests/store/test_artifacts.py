"""The job-file storage interface: its directory implementation on a real temporary directory, and the service and
worker running on a second implementation that is not a directory."""

from __future__ import annotations

import inspect
import os
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trimesh

from orfeas.config import Settings
from orfeas.pipeline.options import GenerateOptions
from orfeas.service.auth import LOCAL_USER
from orfeas.service.batch_sizing import BatchSizer, MemoryProbe
from orfeas.service.jobs import JobService, Upload
from orfeas.service.worker import Worker
from orfeas.store.artifacts import ArtifactStorage, LocalArtifactStore
from orfeas.store.db import create_db_engine, sqlite_url
from orfeas.store.jobs import JobStore
from orfeas.store.migrate import init_db
from tests.synthetic import EXAMPLES


@pytest.fixture
def storage(tmp_path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "data")


def job_id() -> str:
    return uuid.uuid4().hex


def test_the_directory_store_implements_every_method_of_the_interface():
    wanted = {name for name in vars(ArtifactStorage) if not name.startswith("_")}
    assert wanted == {
        "save_input",
        "load_input",
        "write_results",
        "save_result",
        "result_file",
        "delete",
        "job_ids_stored_before",
    }
    for name in wanted:
        expected = inspect.signature(getattr(ArtifactStorage, name)).parameters
        assert inspect.signature(getattr(LocalArtifactStore, name)).parameters.keys() == expected.keys(), name


def test_an_input_comes_back_as_saved_and_leaves_no_temporary_file(storage):
    job = job_id()
    storage.save_input(job, b"\x89PNG image")
    assert storage.load_input(job) == b"\x89PNG image"
    assert [p.name for p in (storage.root / "inputs").iterdir()] == [job]


def test_results_appear_together_when_the_block_ends(storage):
    job = job_id()
    with storage.write_results(job) as folder:
        (folder / "model.glb").write_bytes(b"glb")
        (folder / "model.json").write_text("{}")
        (folder / ".model.stl.tmp-1").write_bytes(b"a writer's temporary")
        assert storage.result_file(job, "model.glb") is None  # nothing is visible while the job is writing
    assert storage.result_file(job, "model.glb").read_bytes() == b"glb"
    assert storage.result_file(job, "model.json") is not None
    assert sorted(p.name for p in (storage.root / "results").iterdir()) == [job]  # the staging folder is gone
    assert sorted(p.name for p in (storage.root / "results" / job).iterdir()) == ["model.glb", "model.json"]


def test_a_failed_write_publishes_nothing(storage):
    job = job_id()
    with pytest.raises(RuntimeError), storage.write_results(job) as folder:
        (folder / "model.glb").write_bytes(b"half")
        raise RuntimeError("export failed")
    assert storage.result_file(job, "model.glb") is None
    assert list((storage.root / "results").iterdir()) == []


def test_writing_a_job_again_replaces_its_files_and_keeps_the_others(storage):
    job = job_id()
    with storage.write_results(job) as folder:
        (folder / "model.glb").write_bytes(b"first")
    storage.save_result(job, "preview.png", b"png")
    with storage.write_results(job) as folder:
        (folder / "model.glb").write_bytes(b"second")
    assert storage.result_file(job, "model.glb").read_bytes() == b"second"
    assert storage.result_file(job, "preview.png").read_bytes() == b"png"


@pytest.mark.parametrize("name", ["../inputs/x", ".hidden", "a/b", "", "model.glb\x00"])
def test_unsafe_names_reach_no_file(storage, name):
    job = job_id()
    storage.save_input(job, b"x")
    assert storage.result_file(job, name) is None
    with pytest.raises(ValueError):
        storage.save_result(job, name, b"x")


@pytest.mark.parametrize("bad_id", ["../../etc", "ABC", "0" * 31, "0" * 32 + "/x"])
def test_unsafe_job_ids_are_refused(storage, bad_id):
    with pytest.raises(ValueError):
        storage.save_input(bad_id, b"x")
    with pytest.raises(ValueError):
        storage.delete(bad_id)
    assert storage.result_file(bad_id, "model.glb") is None


def test_delete_removes_input_results_and_interrupted_writes(storage):
    job, other = job_id(), job_id()
    for each in (job, other):
        storage.save_input(each, b"x")
        with storage.write_results(each) as folder:
            (folder / "model.glb").write_bytes(b"glb")
    leftover = storage.root / "results" / f".{job}.deadbeef.tmp"  # a worker killed mid-write
    leftover.mkdir()
    storage.delete(job)
    storage.delete(job)  # again: nothing left to remove is fine
    assert storage.result_file(job, "model.glb") is None and not leftover.exists()
    assert not (storage.root / "inputs" / job).exists()
    assert storage.result_file(other, "model.glb") is not None and storage.load_input(other) == b"x"


def age(path: Path, seconds: float) -> None:
    """Set a file's or folder's modification time `seconds` into the past."""
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_jobs_stored_before_a_cutoff_are_those_with_no_newer_file(storage):
    old_input, old_results, fresh, partial, mixed = (job_id() for _ in range(5))
    for each in (old_input, fresh, mixed):
        storage.save_input(each, b"x")
    for each in (old_results, mixed):
        with storage.write_results(each) as folder:
            (folder / "model.glb").write_bytes(b"glb")
    left = storage.root / "inputs" / f".{partial}.0badcafe.tmp"  # save_input killed mid-write
    left.write_bytes(b"half")
    staging = storage.root / "results" / f".{old_results}.deadbeef.tmp"  # write_results killed mid-write
    staging.mkdir()
    (storage.root / "inputs" / "notes.txt").write_text("not a job's")
    for path in (
        storage.root / "inputs" / old_input,
        storage.result_dir(old_results),
        staging,
        left,
        storage.root / "inputs" / "notes.txt",
        storage.root / "inputs" / mixed,  # an old input, but results written just now
    ):
        age(path, 7200)

    cutoff = datetime.now(UTC) - timedelta(hours=1)
    assert storage.job_ids_stored_before(cutoff) == sorted([old_input, old_results, partial])
    assert storage.job_ids_stored_before(datetime.now(UTC) - timedelta(hours=3)) == []
    with pytest.raises(ValueError):
        storage.job_ids_stored_before(datetime.now())
    storage.delete(partial)
    storage.delete(old_results)
    assert not left.exists() and not staging.exists()
    assert storage.job_ids_stored_before(cutoff) == [old_input]


class MemoryArtifactStore:
    """A second ArtifactStorage, shaped like an object store: files live in a dict under their keys, and
    `result_file` materializes one into a local cache, as an S3 implementation would download it."""

    def __init__(self, cache: Path) -> None:
        self.objects: dict[str, bytes] = {}
        self.modified: dict[str, datetime] = {}  # an object store's LastModified
        self.cache = cache

    def _put(self, key: str, data: bytes) -> None:
        self.objects[key] = data
        self.modified[key] = datetime.now(UTC)

    def save_input(self, job_id: str, data: bytes) -> None:
        self._put(f"inputs/{job_id}", data)

    def load_input(self, job_id: str) -> bytes:
        return self.objects[f"inputs/{job_id}"]

    @contextmanager
    def write_results(self, job_id: str) -> Iterator[Path]:
        with tempfile.TemporaryDirectory() as staging:
            yield Path(staging)
            for path in Path(staging).iterdir():
                if not path.name.startswith("."):
                    self._put(f"results/{job_id}/{path.name}", path.read_bytes())

    def save_result(self, job_id: str, name: str, data: bytes) -> None:
        self._put(f"results/{job_id}/{name}", data)

    def result_file(self, job_id: str, name: str) -> Path | None:
        data = self.objects.get(f"results/{job_id}/{name}")
        if data is None:
            return None
        path = self.cache / job_id / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def delete(self, job_id: str) -> None:
        for key in [k for k in self.objects if k == f"inputs/{job_id}" or k.startswith(f"results/{job_id}/")]:
            del self.objects[key], self.modified[key]

    def job_ids_stored_before(self, cutoff: datetime) -> list[str]:
        newest: dict[str, datetime] = {}
        for key, modified in self.modified.items():
            job = key.split("/")[1]
            newest[job] = max(newest.get(job, modified), modified)
        return sorted(job for job, modified in newest.items() if modified < cutoff)


def test_the_service_and_the_worker_need_nothing_but_the_interface(tmp_path):
    """Submit, generate, preview and retention against a storage that is not a directory."""
    settings = Settings(data_dir=tmp_path, retention_hours=0.0)
    engine = create_db_engine(sqlite_url(tmp_path))
    init_db(engine)
    store = JobStore(engine)
    storage = MemoryArtifactStore(tmp_path / "cache")
    service = JobService(store, storage, settings)
    worker = Worker(store, storage, settings, BatchSizer(MemoryProbe("cpu"), max_batch=2), worker_id="w1")
    chair = Upload("chair.png", (EXAMPLES / "chair.png").read_bytes())
    (job,), _ = service.submit([chair], GenerateOptions(resolution=64, faces=2000, formats=("glb", "obj")), LOCAL_USER)
    assert storage.objects[f"inputs/{job.id}"] == chair.data
    assert worker.run_once()
    done = store.get(job.id)
    assert done.status == "succeeded" and done.result["files"] == {"glb": "model.glb", "obj": "model.obj.zip"}
    assert trimesh.load(storage.result_file(job.id, "model.glb"), force="mesh").faces.shape[0] > 0
    assert zipfile.ZipFile(storage.result_file(job.id, "model.obj.zip")).namelist()[0].startswith("model")
    assert service.preview_path(done).read_bytes().startswith(b"\x89PNG")
    assert f"results/{job.id}/preview.png" in storage.objects
    orphan = uuid.uuid4().hex
    storage.save_input(orphan, b"a submission that died before inserting its job")
    assert worker.sweep_orphans(grace_seconds=3600) == []  # too recent: it may be a submission in flight
    assert worker.sweep_orphans(grace_seconds=0) == [orphan]
    worker.maintain()  # retention 0 h: the job and every one of its objects go
    assert not storage.objects
    engine.dispose()
