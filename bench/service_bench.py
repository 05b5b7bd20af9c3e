"""Service benchmarks: overhead of the job service over the bare pipeline, scheduler cost, status polling.

    .venv/bin/python bench/service_bench.py [--jobs 12] [--write docs/BENCHMARKS.md]

1. Throughput: the same `inflate` jobs (default options, textured GLB) run by calling the pipeline in a loop, then
   through a real `orfeas serve` subprocess (submit all, wait for the last); the difference is the service's cost
   (upload, validation, queue, progress updates, preview rendering, result files).
2. Scheduler overhead per batch: what the worker does around a generator call for a batch of 4 (claim, progress
   updates for every stage, completion), on SQLite, without the generator; median of 200 batches.
3. Status polling: GET /api/jobs/{id} from a second process with 8 concurrent connections for 5 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.server import Server, wait_for  # noqa: E402

from orfeas import GenerateOptions, generate, save_result  # noqa: E402
from orfeas.pipeline.generate import batch_key  # noqa: E402
from orfeas.service.worker import ProgressBuffer  # noqa: E402
from orfeas.store.db import create_db_engine, sqlite_url  # noqa: E402
from orfeas.store.jobs import JobStore, NewJob  # noqa: E402
from orfeas.store.migrate import init_db  # noqa: E402
from report import write_section  # noqa: E402

IMAGE = REPO / "examples" / "chair.png"
HEADING = "Job service"
MARKER = "service-bench"


def direct_seconds(count: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        generate(IMAGE)  # warm-up, as the server's worker is warm after its first job
        start = time.perf_counter()
        for index in range(count):
            save_result(generate(IMAGE, GenerateOptions()), Path(tmp), f"m{index}")
        return time.perf_counter() - start


def service_seconds(server: Server, count: int) -> float:
    with server.client() as client:
        files = [("image", ("chair.png", IMAGE.read_bytes(), "image/png"))]
        wait_for(client, [client.post("/api/jobs", files=files).json()["jobs"][0]["id"]])  # warm-up
        start = time.perf_counter()
        ids = []
        for _ in range(count):
            ids += [job["id"] for job in client.post("/api/jobs", files=files).json()["jobs"]]
        final = wait_for(client, ids, timeout=600)
        elapsed = time.perf_counter() - start
        assert all(job["status"] == "succeeded" for job in final)
        return elapsed


def scheduler_overhead_ms(batches: int = 200, batch: int = 4) -> tuple[float, float]:
    """Median milliseconds, for one batch of `batch` jobs, of the scheduling around the generator call (the claim,
    which also marks the jobs started, and the one transaction that completes them) and of one progress flush
    (the worker writes at most one every 0.1 s while a batch runs)."""
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_db_engine(sqlite_url(Path(tmp)))
        init_db(engine)
        store = JobStore(engine)
        key = batch_key(GenerateOptions())
        options = GenerateOptions().model_dump(mode="json")
        for _ in range(batches):
            store.create_jobs(
                [NewJob(uuid.uuid4().hex, options, key, "x.png") for _ in range(batch)], owner="user:bench"
            )
        scheduling, flushes = [], []
        for _ in range(batches):
            start = time.perf_counter()
            jobs = store.claim_batch("bench", batch, 30)
            outcomes = [(job.id, {"files": {}}, {"stages": {}, "total": 0}) for job in jobs]
            store.complete_many("bench", outcomes)
            scheduling.append((time.perf_counter() - start) * 1000)
        # one more batch, left running, for the progress flushes
        store.create_jobs([NewJob(uuid.uuid4().hex, options, key, "x.png") for _ in range(batch)], owner="user:bench")
        jobs = store.claim_batch("bench", batch, 30)
        for _ in range(batches):
            progress = ProgressBuffer(store, "bench")
            for job in jobs:
                progress.pending[job.id] = (50, "mesh_cleanup")
            start = time.perf_counter()
            progress.flush()
            flushes.append((time.perf_counter() - start) * 1000)
        return statistics.median(scheduling), statistics.median(flushes)


POLL_LOAD = """
import asyncio, json, sys, time, httpx
url, seconds, concurrency = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
latencies = []
async def one(client, deadline):
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        response = await client.get(url)
        response.raise_for_status()
        latencies.append(time.perf_counter() - start)
async def main():
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:
        deadline = time.perf_counter() + seconds
        await asyncio.gather(*(one(client, deadline) for _ in range(concurrency)))
asyncio.run(main())
latencies.sort()
p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
print(json.dumps({"requests": len(latencies), "seconds": seconds, "p50_ms": 1000 * p50, "p99_ms": 1000 * p99}))
"""


def polling(server: Server, seconds: float = 5.0, concurrency: int = 8) -> dict:
    with server.client() as client:
        job_id = client.get("/api/jobs", params={"limit": 1}).json()["jobs"][0]["id"]
    url = f"{server.url}/api/jobs/{job_id}"
    out = subprocess.run(
        [sys.executable, "-c", POLL_LOAD, url, str(seconds), str(concurrency)],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout)
    result["rps"] = result["requests"] / result["seconds"]
    return result


def render(count: int, direct: float, service: float, scheduler_ms: tuple[float, float], poll: dict) -> str:
    overhead = (service - direct) / direct
    return "\n".join(
        [
            f"Command: `make bench` (`.venv/bin/python bench/service_bench.py --jobs {count}`), 2-core machine, "
            f"run {time.strftime('%Y-%m-%d')}.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| {count} inflate jobs, pipeline called in a loop | {direct:.2f} s ({count / direct:.2f} jobs/s) |",
            f"| {count} inflate jobs through `orfeas serve` | {service:.2f} s ({count / service:.2f} jobs/s) |",
            f"| service overhead | {overhead:+.0%} |",
            f"| scheduler overhead per batch of 4 (claim + completion), median | {scheduler_ms[0]:.2f} ms |",
            f"| one progress flush of a running batch of 4 (at most one per 0.1 s), median "
            f"| {scheduler_ms[1]:.2f} ms |",
            f"| status polling, 8 connections from a second process | {poll['rps']:.0f} requests/s, "
            f"p50 {poll['p50_ms']:.1f} ms, p99 {poll['p99_ms']:.1f} ms |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    direct = direct_seconds(args.jobs)
    scheduler_ms = scheduler_overhead_ms()
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp) / "data").start()
        try:
            service = service_seconds(server, args.jobs)
            poll = polling(server)
        finally:
            server.stop()
    report = render(args.jobs, direct, service, scheduler_ms, poll)
    print(report)
    if args.write:
        write_section(args.write, MARKER, HEADING, report)


if __name__ == "__main__":
    main()
