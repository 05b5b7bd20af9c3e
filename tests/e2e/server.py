"""Start `orfeas serve` as a real subprocess on a free loopback port and talk to it over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.synthetic import REPO

ORFEAS = str(Path(sys.executable).with_name("orfeas"))
TEST_GENERATORS = '{"slow": "tests.fake_generators:slow", "oom": "tests.fake_generators:memory_limited"}'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A running `orfeas serve`; `kill()` is kill -9, `start()` starts it again on the same data dir and port."""

    def __init__(
        self, data_dir: Path, env: dict[str, str] | None = None, port: int | None = None, args: tuple[str, ...] = ()
    ):
        self.data_dir = data_dir
        self.args = args
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "ORFEAS_GENERATORS": TEST_GENERATORS,
            "ORFEAS_POLL_SECONDS": "0.05",
            **(env or {}),
        }
        self.process: subprocess.Popen | None = None
        self.log = data_dir / "server.log"

    def start(self, timeout: float = 30.0) -> Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [
                    ORFEAS,
                    "serve",
                    "--port",
                    str(self.port),
                    "--data-dir",
                    str(self.data_dir),
                    "--log-level",
                    "info",
                    *self.args,
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"server did not start:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """kill -9: no shutdown code runs."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)


def wait_for(client: httpx.Client, job_ids: list[str], timeout: float = 60.0) -> list[dict]:
    """Poll until every job has finished; returns the final views."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = [client.get(f"/api/jobs/{job_id}").json() for job_id in job_ids]
        if all(job["status"] in ("succeeded", "failed", "canceled") for job in jobs):
            return jobs
        if time.monotonic() > deadline:
            raise AssertionError(f"jobs not finished in {timeout} s: {[j['status'] for j in jobs]}")
        time.sleep(0.1)
