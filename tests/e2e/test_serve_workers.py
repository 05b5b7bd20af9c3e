"""`orfeas serve --workers 2`: two API processes on one port and the worker loop in a process of its own."""

from __future__ import annotations

from datetime import datetime

import psutil

from tests.e2e.server import Server, wait_for
from tests.synthetic import EXAMPLES

CHAIR = (EXAMPLES / "chair.png").read_bytes()


def test_two_api_processes_and_a_worker_process_run_jobs_and_stop_together(tmp_path):
    server = Server(tmp_path / "data", args=("--workers", "2")).start()
    try:
        tree = psutil.Process(server.process.pid)
        with server.client() as client:
            ids = []
            for _ in range(3):
                response = client.post(
                    "/api/jobs", files={"image": ("chair.png", CHAIR, "image/png")}, data={"faces": "2000"}
                )
                assert response.status_code == 202
                ids.append(response.json()["jobs"][0]["id"])
            final = wait_for(client, ids, timeout=180)
            assert [job["status"] for job in final] == ["succeeded"] * 3
            assert client.get("/readyz").status_code == 200
        commands = [" ".join(child.cmdline()) for child in tree.children(recursive=True)]
        assert sum("worker" in command and "--data-dir" in command for command in commands) == 1
        assert len(commands) >= 3  # two API processes and the worker (and uvicorn's helpers)
        children = tree.children(recursive=True)
    finally:
        server.stop()
    _gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive


def test_the_worker_process_starts_a_job_queued_by_an_api_process_at_once(tmp_path):
    """The worker process is not the one that accepted the upload: it hears the commit through SQLite (its queue
    watch) rather than at its next poll, which here is longer than the test."""
    server = Server(tmp_path / "data", args=("--workers", "2"), env={"ORFEAS_POLL_SECONDS": "60"}).start()
    try:
        with server.client() as client:
            for _ in range(2):  # the first job also waits for the worker process to start; the second finds it idle
                response = client.post(
                    "/api/jobs", files={"image": ("chair.png", CHAIR, "image/png")}, data={"faces": "2000"}
                )
                assert response.status_code == 202
                (job,) = wait_for(client, [response.json()["jobs"][0]["id"]], timeout=50)
                assert job["status"] == "succeeded"
            waited = datetime.fromisoformat(job["started_at"]) - datetime.fromisoformat(job["created_at"])
            assert waited.total_seconds() < 2.0
    finally:
        server.stop()
