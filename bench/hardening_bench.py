"""Resource bounds under attack, measured side by side on this tree and an older one (loopback only, bounded).

    python bench/hardening_bench.py [--baseline-src /path/to/old/checkout/src] [--write docs/SECURITY.md]

For each source tree it starts `orfeas serve` (ORFEAS_AUTH=off, no worker for the upload case) and measures:
the server's RSS growth while 8 clients each upload four 40-megapixel PNGs at once; /healthz latency while one
client sends an 80 MiB header; GET /api/jobs p99 alone and with 500 progress WebSockets open on one queued job.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.report import write_section  # noqa: E402

CHAIR = (REPO / "examples" / "chair.png").read_bytes()
SECTION = "Measured under attack (bench/hardening_bench.py)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Served:
    def __init__(self, src: Path, data: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {
            **os.environ,
            "PYTHONPATH": f"{src}:{REPO}",
            "ORFEAS_AUTH": "off",
            "ORFEAS_MAX_WEBSOCKETS": "1000",
            "ORFEAS_MAX_WEBSOCKETS_PER_CLIENT": "1000",
            "ORFEAS_GENERATORS": '{"sleepy": "tests.fake_generators:sleepy"}',
            "ORFEAS_TEST_BATCH_DELAY": "600",
            **(env or {}),
        }
        command = [sys.executable, "-c", "from orfeas.cli import app; app()", "serve", "--port", str(self.port)]
        self.process = subprocess.Popen(
            [*command, "--data-dir", str(data), *args],
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("server did not start")
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def upload_growth(src: Path, data: Path) -> float:
    served = Served(src, data, "--no-worker")
    try:
        process = psutil.Process(served.process.pid)
        baseline = peak = process.memory_info().rss
        buffer = io.BytesIO()
        Image.new("RGB", (6000, 6600), (200, 40, 40)).save(buffer, "PNG")
        image = buffer.getvalue()
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, process.memory_info().rss)
                time.sleep(0.02)

        def upload(index: int) -> None:
            files = [("image", (f"{index}-{i}.png", image, "image/png")) for i in range(4)]
            httpx.post(served.url + "/api/jobs", files=files, timeout=600)

        sampler = threading.Thread(target=sample)
        sampler.start()
        uploads = [threading.Thread(target=upload, args=(i,)) for i in range(8)]
        for thread in uploads:
            thread.start()
        for thread in uploads:
            thread.join()
        done.set()
        sampler.join()
        return (peak - baseline) / 2**20
    finally:
        served.stop()


def header_attack(served: Served) -> tuple[float, float]:
    """Median and worst /healthz latency (ms) while one client sends an 80 MiB header."""
    latencies: list[float] = []
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=served.url, timeout=60) as client:
            while not done.is_set():
                started = time.perf_counter()
                client.get("/healthz")
                latencies.append(time.perf_counter() - started)
                time.sleep(0.01)

    prober = threading.Thread(target=probe)
    prober.start()
    while len(latencies) < 20:
        time.sleep(0.01)
    with socket.create_connection(("127.0.0.1", served.port)) as sock:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
            chunk = b"a" * 2**20
            for _ in range(80):
                sock.sendall(chunk)
            sock.sendall(b"\r\n\r\n")
            sock.settimeout(60)
            sock.recv(100)
        except OSError:
            pass
    time.sleep(1.0)
    done.set()
    prober.join()
    return statistics.median(latencies) * 1000, max(latencies) * 1000


def list_p99(url: str, samples: int = 100) -> float:
    with httpx.Client(base_url=url, timeout=60) as client:
        latencies = []
        for _ in range(samples):
            started = time.perf_counter()
            client.get("/api/jobs")
            latencies.append(time.perf_counter() - started)
    return sorted(latencies)[int(samples * 0.99) - 1] * 1000


async def with_sockets(url: str, job_id: str, count: int) -> float:
    from websockets.asyncio.client import connect

    target = url.replace("http://", "ws://") + f"/api/jobs/{job_id}/events"
    sockets = [await connect(target) for _ in range(count)]
    await asyncio.sleep(2)
    p99 = await asyncio.get_running_loop().run_in_executor(None, list_p99, url)
    for sock in sockets:
        await sock.close()
    return p99


def measure(src: Path) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        figures = {"upload_growth_mib": upload_growth(src, Path(tmp) / "uploads")}
        served = Served(src, Path(tmp) / "main")
        try:
            figures["healthz_median_ms"], figures["healthz_worst_ms"] = header_attack(served)
            job = httpx.post(
                served.url + "/api/jobs", files={"image": ("a.png", CHAIR, "image/png")}, data={"backend": "sleepy"}
            ).json()["jobs"][0]["id"]
            figures["list_p99_alone_ms"] = list_p99(served.url)
            figures["list_p99_500_sockets_ms"] = asyncio.run(with_sockets(served.url, job, 500))
        finally:
            served.stop()
    return figures


def table(rows: dict[str, dict[str, float]]) -> str:
    names = list(rows)
    lines = ["| measure | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    labels = {
        "upload_growth_mib": "RSS growth, 8 clients x four 40 MP PNGs at once (MiB)",
        "healthz_median_ms": "/healthz median during an 80 MiB header (ms)",
        "healthz_worst_ms": "/healthz worst during an 80 MiB header (ms)",
        "list_p99_alone_ms": "GET /api/jobs p99, alone (ms)",
        "list_p99_500_sockets_ms": "GET /api/jobs p99, 500 progress sockets open (ms)",
    }
    for key, label in labels.items():
        lines.append(f"| {label} | " + " | ".join(f"{rows[name][key]:.0f}" for name in names) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-src", type=Path, help="src/ folder of an older checkout to compare with")
    parser.add_argument("--write", type=Path, help="replace the measured section of this Markdown file")
    args = parser.parse_args()
    rows = {}
    if args.baseline_src:
        rows["before (baseline)"] = measure(args.baseline_src)
    rows["this tree"] = measure(REPO / "src")
    text = table(rows)
    print(text)
    if args.write:
        command = "python bench/hardening_bench.py" + (" --baseline-src OLD/src" if args.baseline_src else "")
        body = f"`{command}`, one run on this 2-core machine (other work running beside it):\n\n{text}\n"
        write_section(args.write, "hardening-bench", SECTION, body)


if __name__ == "__main__":
    main()
