"""A real Prometheus server (Debian's `prometheus` package) scrapes /metrics and answers queries on our counters."""

from __future__ import annotations

import shutil
import time

import httpx
import pytest

from tests.e2e.server import Server, start_prometheus, wait_for
from tests.synthetic import EXAMPLES

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="no prometheus binary: install it with `apt-get install prometheus`"
)


def query(url: str, expression: str) -> list[dict]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": expression}, timeout=5)
    response.raise_for_status()
    return response.json()["data"]["result"]


def test_prometheus_scrapes_job_counters(tmp_path):
    server = Server(tmp_path / "data").start()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: orfeas\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{server.port}']\n"
    )
    prometheus, port = start_prometheus(PROMETHEUS, config, tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        with server.client() as client:
            files = [("image", ("chair.png", (EXAMPLES / "chair.png").read_bytes(), "image/png"))]
            job = client.post("/api/jobs", files=files, data={"faces": "2000"}).json()["jobs"][0]
            wait_for(client, [job["id"]])
        deadline = time.monotonic() + 60
        succeeded = []
        while time.monotonic() < deadline:
            try:
                succeeded = query(url, 'orfeas_jobs{status="succeeded"}')
            except httpx.HTTPError:
                succeeded = []
            if succeeded and float(succeeded[0]["value"][1]) >= 1:
                break
            time.sleep(0.5)
        assert succeeded and float(succeeded[0]["value"][1]) >= 1, succeeded
        assert query(url, "orfeas_queue_depth")
        assert query(url, "orfeas_stage_duration_seconds_count")
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
        server.stop()
