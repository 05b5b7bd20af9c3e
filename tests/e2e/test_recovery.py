"""Crash safety and out-of-memory handling, with real server processes."""

from __future__ import annotations

import io
import sqlite3
import time

from PIL import Image

from tests.e2e.server import Server, wait_for
from tests.synthetic import EXAMPLES

CHAIR = (EXAMPLES / "chair.png").read_bytes()


def red_square() -> bytes:
    image = Image.new("RGBA", (256, 256), (0, 0, 0, 0))
    image.paste((230, 20, 20, 255), (64, 64, 192, 192))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


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
