"""`orfeas worker` as its own process beside an API-only server, and clear start-up errors."""

from __future__ import annotations

import subprocess
import time

import httpx
import pytest

from tests.e2e.server import ORFEAS, Server, free_port, wait_for
from tests.synthetic import EXAMPLES


def test_an_api_only_server_and_a_separate_worker_process_share_the_jobs(tmp_path):
    data = tmp_path / "shared"
    server = Server(data, args=("--no-worker",)).start()
    metrics_port = free_port()
    worker = subprocess.Popen(
        [ORFEAS, "worker", "--data-dir", str(data), "--metrics-port", str(metrics_port), "--metrics-host", "127.0.0.1"],
        env=server.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        with server.client() as client:
            files = [("image", ("chair.png", (EXAMPLES / "chair.png").read_bytes(), "image/png"))]
            job = client.post("/api/jobs", files=files, data={"faces": "2000"}).json()["jobs"][0]
            (done,) = wait_for(client, [job["id"]], timeout=60)
        assert done["status"] == "succeeded"
        # The worker's own /metrics holds what only it sees: the batch it ran and the stage timings of the job.
        scrape = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        assert "orfeas_batch_size_count 1.0" in scrape
        assert 'orfeas_stage_duration_seconds_count{stage="shape_generation"} 1.0' in scrape
        assert 'orfeas_jobs_finished_total{status="succeeded"} 1.0' in scrape
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        server.stop()
    assert worker.returncode == 0  # SIGTERM: the worker finishes cleanly


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--database", "postgresql://orfeas:wrong@127.0.0.1:1/nothing"], "cannot open the database"),
        (["--database", "not a url"], "not a database URL"),
    ],
)
def test_bad_database_configuration_fails_with_one_line(tmp_path, args, words):
    for command in (["worker", "--data-dir", str(tmp_path)], ["serve", "--data-dir", str(tmp_path), "--port", "1"]):
        start = time.monotonic()
        proc = subprocess.run([ORFEAS, *command, *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, (command, proc.stderr)
        assert words in proc.stderr and "Traceback" not in proc.stderr
        assert "wrong" not in proc.stderr  # the password is not echoed
        assert len(proc.stderr.strip().splitlines()) <= 2
        assert time.monotonic() - start < 30


def test_a_missing_shared_directory_fails_with_one_line(tmp_path):
    missing = tmp_path / "not-mounted"
    proc = subprocess.run([ORFEAS, "worker", "--data-dir", str(missing)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_a_metrics_port_in_use_fails_with_one_line(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [ORFEAS, "worker", "--data-dir", str(tmp_path), "--metrics-port", str(port), "--metrics-host", "127.0.0.1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 2
    assert "cannot serve metrics" in proc.stderr and "Traceback" not in proc.stderr


def test_credentials_the_database_refuses_fail_with_one_line(tmp_path, postgres_reachable):
    # The local server trusts every password, so an unknown role stands in for refused credentials: PostgreSQL
    # answers with the same FATAL authentication-stage error.
    url = "postgresql://orfeas_no_such_role:not-the-password@127.0.0.1:5432/postgres"
    for command in (["worker", "--data-dir", str(tmp_path)], ["serve", "--data-dir", str(tmp_path), "--port", "1"]):
        proc = subprocess.run([ORFEAS, *command, "--database", url], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, (command, proc.stderr)
        assert "cannot open the database" in proc.stderr and "orfeas_no_such_role" in proc.stderr
        assert "not-the-password" not in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) <= 2
