"""The job-file storage interface and its directory implementation, on a real temporary directory."""

from __future__ import annotations

import inspect
import uuid

import pytest

from orfeas.store.artifacts import ArtifactStorage, LocalArtifactStore


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
        "has_result",
        "result_file",
        "delete",
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
        assert not storage.has_result(job, "model.glb")  # nothing is visible while the job is writing
    assert storage.result_file(job, "model.glb").read_bytes() == b"glb"
    assert storage.has_result(job, "model.json")
    assert sorted(p.name for p in (storage.root / "results").iterdir()) == [job]  # the staging folder is gone
    assert sorted(p.name for p in (storage.root / "results" / job).iterdir()) == ["model.glb", "model.json"]


def test_a_failed_write_publishes_nothing(storage):
    job = job_id()
    with pytest.raises(RuntimeError), storage.write_results(job) as folder:
        (folder / "model.glb").write_bytes(b"half")
        raise RuntimeError("export failed")
    assert not storage.has_result(job, "model.glb")
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
    assert storage.result_file(job, name) is None and not storage.has_result(job, name)
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
    assert not storage.has_result(job, "model.glb") and not leftover.exists()
    assert not (storage.root / "inputs" / job).exists()
    assert storage.has_result(other, "model.glb") and storage.load_input(other) == b"x"
