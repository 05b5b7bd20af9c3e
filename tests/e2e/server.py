"""Start `orfeas serve` as a real subprocess on a free loopback port and talk to it over HTTP."""

from __future__ import annotations

import json
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
TEST_GENERATORS = json.dumps(
    {
        "slow": "tests.fake_generators:slow",
        "oom": "tests.fake_generators:memory_limited",
        "sleepy": "tests.fake_generators:sleepy",
    }
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A running `orfeas serve`; `kill()` is kill -9, `start()` starts it again on the same data dir and port."""

    def __init__(
        self,
        data_dir: Path,
        env: dict[str, str] | None = None,
        port: int | None = None,
        args: tuple[str, ...] = (),
        log: Path | None = None,
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
            "ORFEAS_AUTH": "off",
            **(env or {}),
        }
        self.process: subprocess.Popen | None = None
        self.log = log or data_dir / "server.log"

    def start(self, timeout: float = 90.0) -> Server:
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
        kill_process(self.process)

    def stop(self) -> None:
        stop_process(self.process)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)


class WorkerProcess:
    """A running `orfeas worker` on a shared data dir and database; `kill()` is kill -9."""

    def __init__(self, data_dir: Path, database: str, env: dict[str, str], log: Path):
        self.data_dir = data_dir
        self.database = database
        self.env = env
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [ORFEAS, "worker", "--data-dir", str(self.data_dir), "--database", self.database],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def wait_started(self, timeout: float = 60.0) -> WorkerProcess:
        """Block until the worker logged that its loop runs (imports and database check done)."""
        deadline = time.monotonic() + timeout
        while "worker started" not in self.log.read_text():
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """kill -9: no shutdown code runs, its leases stay until they expire."""
        kill_process(self.process)

    def stop(self) -> int | None:
        """SIGTERM, then kill -9 after 20 s; the exit status."""
        stop_process(self.process)
        return self.process.returncode if self.process else None


def kill_process(process: subprocess.Popen | None) -> None:
    """kill -9 a process that still runs, and reap it."""
    if process and process.poll() is None:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)


def stop_process(process: subprocess.Popen | None, grace: float = 20.0) -> None:
    """SIGTERM, then kill -9 after `grace` seconds."""
    if process and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            kill_process(process)


def start_prometheus(binary: str, config: Path, tmp_path: Path) -> tuple[subprocess.Popen, int]:
    """A real Prometheus server on a free loopback port with its data under tmp_path; (process, port)."""
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return process, port


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
