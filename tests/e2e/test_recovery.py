"""Crash safety and out-of-memory handling, with real server processes."""

from __future__ import annotations

import io
import json
import signal
import sqlite3
import subprocess
import time

import pytest
from PIL import Image

from orfeas.service.batch_sizing import BatchSizer, MemoryProbe
from orfeas.store.db import sqlite_url
from tests.cgroups import memory_cgroup
from tests.e2e.server import ORFEAS, TEST_GENERATORS, Server, WorkerProcess, stop_process, wait_for
from tests.synthetic import EXAMPLES

CHAIR = (EXAMPLES / "chair.png").read_bytes()
MIB = 2**20
GENERATORS = json.dumps(
    {
        **json.loads(TEST_GENERATORS),
        "crash": "tests.crash_generators:crash_on_red",
        "declared": "tests.crash_generators:declared_memory",
    }
)


def square(colour: tuple[int, int, int], size: int = 256) -> bytes:
    """A coloured square cut-out on a transparent background (no background removal needed)."""
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    image.paste((*colour, 255), (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def red_square() -> bytes:
    return square((230, 20, 20))


def succeeded_events(data_dir) -> dict[str, int]:
    with sqlite3.connect(data_dir / "orfeas.db") as db:
        rows = db.execute("SELECT job_id, COUNT(*) FROM job_events WHERE status = 'succeeded' GROUP BY job_id")
        return dict(rows.fetchall())


def test_kill_9_mid_batch_loses_no_job_and_runs_none_twice(tmp_path):
    env = {
        "ORFEAS_TEST_DELAY": "0.4",
        "ORFEAS_MAX_BATCH": "4",
        "ORFEAS_LEASE_SECONDS": "3",
        "ORFEAS_HEARTBEAT_SECONDS": "0.5",
    }
    server = Server(tmp_path / "data", env=env).start()
    with server.client() as client:
        ids = []
        for request in range(2):
            files = [("image", (f"chair{request}-{i}.png", CHAIR, "image/png")) for i in range(10)]
            response = client.post("/api/jobs", files=files, data={"backend": "slow", "faces": "2000"})
            ids += [job["id"] for job in response.json()["jobs"]]
        assert len(ids) == 20
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill once some jobs are done and a batch is running
            statuses = [client.get(f"/api/jobs/{i}").json()["status"] for i in ids]
            if statuses.count("succeeded") >= 2 and "running" in statuses:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"never saw a running batch: {statuses}")
    server.kill()

    server.start()
    try:
        with server.client() as client:
            final = wait_for(client, ids, timeout=120)
    finally:
        server.stop()
    assert [job["status"] for job in final] == ["succeeded"] * 20
    assert any(job["attempts"] == 2 for job in final)  # the killed batch ran again
    counts = succeeded_events(server.data_dir)
    assert all(counts.get(job_id) == 1 for job_id in ids), counts


def test_out_of_memory_splits_the_batch_and_fails_only_the_job_that_cannot_fit(tmp_path):
    env = {"ORFEAS_TEST_OOM_LIMIT": "2", "ORFEAS_MAX_BATCH": "8"}
    # the six jobs of one request are committed together, so the worker claims them as one batch of six
    server = Server(tmp_path / "data", env=env).start()
    try:
        with server.client() as client:
            files = [("image", (f"chair{i}.png", CHAIR, "image/png")) for i in range(5)]
            files.insert(2, ("image", ("red.png", red_square(), "image/png")))
            jobs = client.post("/api/jobs", files=files, data={"backend": "oom", "faces": "2000"}).json()["jobs"]
            final = wait_for(client, [job["id"] for job in jobs], timeout=60)
    finally:
        server.stop()
    by_name = {job["input_name"]: job for job in final}
    assert by_name["red.png"]["status"] == "failed"
    assert "out of memory" in by_name["red.png"]["error"]
    others = [job for name, job in by_name.items() if name != "red.png"]
    assert all(job["status"] == "succeeded" for job in others)
    assert all(job["result"]["batch_size"] <= 2 for job in others)
    log = server.log.read_text()
    assert "splitting the batch" in log


def crash_columns(data_dir, job_id: str) -> tuple[int, int, int, int]:
    with sqlite3.connect(data_dir / "orfeas.db") as db:
        query = "SELECT attempts, batch_size, batch_limit, solo_crashes FROM jobs WHERE id = ?"
        return db.execute(query, (job_id,)).fetchone()


def test_a_job_that_kills_every_worker_fails_alone_and_the_jobs_of_its_batches_succeed(tmp_path):
    data = tmp_path / "data"
    env = {
        "ORFEAS_GENERATORS": GENERATORS,
        "ORFEAS_DEVICE": "cpu",  # no torch import at each worker start: the generator is CPU only
        "ORFEAS_MAX_BATCH": "4",
        "ORFEAS_MAX_ATTEMPTS": "2",
        "ORFEAS_LEASE_SECONDS": "3",
        "ORFEAS_HEARTBEAT_SECONDS": "0.5",
    }
    server = Server(data, env=env, args=("--no-worker",)).start()
    worker = WorkerProcess(data, sqlite_url(data), server.env, data / "worker.log")
    blue = square((40, 120, 220))
    deaths = []
    try:
        with server.client() as client:
            files = [("image", (f"blue{i}.png", blue, "image/png")) for i in range(5)]
            files.insert(3, ("image", ("red.png", red_square(), "image/png")))
            form = {"backend": "crash", "faces": "1000", "resolution": "64"}
            first = client.post("/api/jobs", files=files, data=form).json()["jobs"]
            later_files = [("image", (f"late{i}.png", blue, "image/png")) for i in range(3)]
            later = client.post("/api/jobs", files=later_files, data=form).json()["jobs"]
            ids = [job["id"] for job in first + later]
            worker.start()
            deadline = time.monotonic() + 180
            while True:  # a supervisor: restart the worker whenever it dies (systemd Restart=always, Kubernetes)
                views = [client.get(f"/api/jobs/{job_id}").json() for job_id in ids]
                if all(view["status"] in ("succeeded", "failed", "canceled") for view in views):
                    break
                if worker.process.poll() is not None:
                    deaths.append(worker.process.returncode)
                    worker.start()
                assert time.monotonic() < deadline, [view["status"] for view in views]
                time.sleep(0.1)
    finally:
        worker.stop()
        server.stop()

    by_name = {view["input_name"]: view for view in views}
    red = by_name.pop("red.png")
    assert red["status"] == "failed"
    assert red["error"] == "worker stopped responding 2 times while running this job alone"
    assert {name: view["status"] for name, view in by_name.items()} == dict.fromkeys(by_name, "succeeded")
    # The batch of 4 died, then the half holding red (2), then red alone, twice (ORFEAS_MAX_ATTEMPTS).
    assert deaths == [-signal.SIGKILL] * 4
    assert crash_columns(data, red["id"]) == (4, 1, 1, 2)  # attempts, last batch size, batch limit, solo crashes
    assert [by_name[f"blue{i}.png"]["result"]["batch_size"] for i in range(3)] == [2, 2, 1]  # retried in halves


def test_a_worker_in_a_memory_limited_cgroup_sizes_its_batches_from_the_limit(tmp_path):
    limit, per_image = 1536 * MIB, 256 * MIB
    env = {
        "ORFEAS_GENERATORS": GENERATORS,
        "ORFEAS_TEST_IMAGE_BYTES": str(per_image),
        "ORFEAS_DEVICE": "cpu",
        "ORFEAS_MAX_BATCH": "8",
    }
    data = tmp_path / "data"
    host = BatchSizer(MemoryProbe("cpu"), max_batch=8).plan(per_image, queue_length=8)
    if host.size < 8:
        pytest.skip(f"the host itself has too little memory free to show the difference: {host.reason}")
    with memory_cgroup(limit) as cgroup:
        server = Server(data, env=env, args=("--no-worker",)).start()
        worker = None
        try:
            with server.client() as client:
                files = [("image", (f"blue{i}.png", square((40, 120, 220)), "image/png")) for i in range(8)]
                form = {"backend": "declared", "faces": "1000", "resolution": "64"}
                jobs = client.post("/api/jobs", files=files, data=form).json()["jobs"]
                # The worker joins the cgroup before it starts (exec keeps the pid), so all its memory counts there.
                join_then_run = 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"'
                command = [ORFEAS, "worker", "--data-dir", str(data), "--database", sqlite_url(data)]
                with open(data / "worker.log", "ab") as log:
                    worker = subprocess.Popen(
                        ["sh", "-c", join_then_run, "sh", str(cgroup), *command],
                        env=server.env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                final = wait_for(client, [job["id"] for job in jobs], timeout=120)
        finally:
            stop_process(worker)
            server.stop()
    assert [job["status"] for job in final] == ["succeeded"] * 8
    sizes = [job["result"]["batch_size"] for job in final]
    # The host's RAM would take all 8 at once; the limit allows at most 0.85 × 1.5 GiB / 256 MiB = 5, less what the
    # worker itself already uses.
    assert max(sizes) <= 5, sizes
    assert "1.5 GiB total" in (data / "worker.log").read_text()
