"""Service benchmarks: overhead of the job service over the bare pipeline, scheduler cost, status polling.

    .venv/bin/python bench/service_bench.py [--jobs 12] [--rounds 3] [--write docs/BENCHMARKS.md]

1. Throughput: the same `inflate` jobs (default options, textured GLB) run by calling the pipeline in a loop, then
   through a real `orfeas serve` subprocess (submit all, poll the job list until all are done; the wall time ends
   at the last job's finished_at, not at the poll that saw it), in interleaved rounds; the difference is the
   service's cost (upload, validation, queue, progress updates, result files). Beside the wall time: the CPU
   seconds of the process doing the work (the loop's own, the server's), and the seconds the jobs' profiles give
   to the pipeline's stages, which separate "the pipeline ran slower in the server" from "the
   server did other work".
2. Scheduler overhead per batch: what the worker does around a generator call for a batch of 4 (claim, progress
   updates for every stage, completion), on SQLite, without the generator; median of 200 batches.
3. Status polling: GET /api/jobs/{id} from a second process with 8 concurrent connections for 5 s.
4. Start latency: one job at a time sent to an idle server, from its creation to its start (the server's own
   timestamps); with `--workers 2` the worker is another process, which hears of the job through the database.

The servers run with the settings a user gets (the default `poll_seconds`, not the tests' shorter one).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.server import Server  # noqa: E402

from orfeas import GenerateOptions, generate, save_result  # noqa: E402
from orfeas.config import Settings  # noqa: E402
from orfeas.pipeline.generate import batch_key  # noqa: E402
from orfeas.service.worker import ProgressBuffer  # noqa: E402
from orfeas.store.db import create_db_engine, sqlite_url  # noqa: E402
from orfeas.store.jobs import JobStore, NewJob  # noqa: E402
from orfeas.store.migrate import init_db  # noqa: E402
from report import write_section  # noqa: E402

IMAGE = REPO / "examples" / "chair.png"
UPLOAD = [("image", ("chair.png", IMAGE.read_bytes(), "image/png"))]  # one job's multipart field, as a client sends it
HEADING = "Job service"
MARKER = "service-bench"
FINISHED = {"succeeded", "failed", "canceled"}


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process and its children (API processes, the worker) have used so far."""
    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


@dataclass
class Run:
    """One way of running `count` jobs: wall seconds, CPU seconds of the process doing the work, and the seconds
    the jobs' own profiles account for (the pipeline's stages, export included)."""

    wall: float
    cpu: float
    pipeline: float
    stages: dict[str, float]


def direct_run(count: int) -> Run:
    """The pipeline called in a loop, each result saved as the service saves it (GLB and the report)."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(IMAGE)  # warm-up, as the server's worker is warm after its first job
        cpu, start = time.process_time(), time.perf_counter()
        profiles = []
        for index in range(count):
            result = generate(IMAGE, GenerateOptions())
            save_result(result, Path(tmp), f"m{index}")
            profiles.append(result.profile.stages)
        return Run(time.perf_counter() - start, time.process_time() - cpu, *stage_sums(profiles))


def stage_sums(profiles: list[dict[str, float]]) -> tuple[float, dict[str, float]]:
    stages: dict[str, float] = {}
    for profile in profiles:
        for name, seconds in profile.items():
            stages[name] = stages.get(name, 0.0) + seconds
    return sum(stages.values()), stages


def wait_all(client: httpx.Client, count: int, timeout: float = 600) -> list[dict]:
    """Poll the job list (one request every 0.25 s, as a page would) until the newest `count` jobs have finished."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = client.get("/api/jobs", params={"limit": count}).json()["jobs"]
        if all(job["status"] in FINISHED for job in jobs):
            return jobs
        if time.monotonic() > deadline:
            raise AssertionError(f"jobs not finished in {timeout} s")
        time.sleep(0.25)


def service_run(server: Server, count: int) -> Run:
    """The same jobs submitted to a running `orfeas serve` (all at once, as a batch client would), waited for."""
    assert server.process is not None
    with server.client() as client:
        cpu, start = process_cpu_seconds(server.process.pid), time.time()
        for _ in range(count):
            client.post("/api/jobs", files=UPLOAD).raise_for_status()
        final = wait_all(client, count)
        # until the last job finished by the server's own record (same clock), not until the poll that saw it
        wall = max(datetime.fromisoformat(job["finished_at"]).timestamp() for job in final) - start
        cpu = process_cpu_seconds(server.process.pid) - cpu
    assert len(final) == count and all(job["status"] == "succeeded" for job in final)
    return Run(wall, cpu, *stage_sums([job["profile"]["stages"] for job in final]))


SERVERS = {"`orfeas serve`": (), "`orfeas serve --workers 2`": ("--workers", "2")}
# tests.e2e.server shortens the idle worker's poll; a benchmark measures what a user runs
USER_ENV = {"ORFEAS_POLL_SECONDS": str(Settings.model_fields["poll_seconds"].default)}


def throughput(servers: dict[str, Server], count: int, rounds: int) -> dict[str, list[Run]]:
    """`rounds` of the loop and of each server, interleaved so all see the same machine, on warm servers."""
    for server in servers.values():
        service_run(server, 1)  # warm-up: the worker builds its generator on the first job
    runs: dict[str, list[Run]] = {"loop": [], **{name: [] for name in servers}}
    for _ in range(rounds):
        runs["loop"].append(direct_run(count))
        for name, server in servers.items():
            runs[name].append(service_run(server, count))
    return runs


def start_latency_ms(server: Server, jobs: int = 10) -> float:
    """Median milliseconds from a job's creation to its start, for jobs sent one at a time to the idle server."""
    waits = []
    with server.client() as client:
        for _ in range(jobs):
            client.post("/api/jobs", files=UPLOAD).raise_for_status()
            (job,) = wait_all(client, 1)
            started = datetime.fromisoformat(job["started_at"]) - datetime.fromisoformat(job["created_at"])
            waits.append(started.total_seconds() * 1000)
            time.sleep(0.3)  # idle again, and at a different point of any poll cycle
    return statistics.median(waits)


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


def median_of(runs: list[Run], value: Callable[[Run], float]) -> float:
    return statistics.median(value(run) for run in runs)


def overhead(direct: list[Run], served: list[Run], value: Callable[[Run], float]) -> float:
    """Median over rounds of the served run's `value` over the loop's in the same round."""
    return statistics.median(value(s) / value(d) - 1 for d, s in zip(direct, served, strict=True))


def row(label: str, runs: dict[str, list[Run]], value: Callable[[Run], float]) -> str:
    direct = runs["loop"]
    cells = [f"{median_of(direct, value):.2f}"]
    for name, served in runs.items():
        if name != "loop":
            cells.append(f"{median_of(served, value):.2f} ({overhead(direct, served, value):+.0%})")
    return f"| {label} | {' | '.join(cells)} |"


def render(
    count: int,
    rounds: int,
    runs: dict[str, list[Run]],
    scheduler_ms: tuple[float, float],
    poll: dict,
    start_ms: dict[str, float],
) -> str:
    names = [name for name in runs if name != "loop"]
    rounds_text = "; ".join(
        f"{name}: " + ", ".join(f"{s.wall / d.wall - 1:+.0%}" for d, s in zip(runs["loop"], runs[name], strict=True))
        for name in names
    )
    stage_names = list(runs["loop"][0].stages)
    return "\n".join(
        [
            f"Command: `make bench` (`.venv/bin/python bench/service_bench.py --jobs {count} --rounds {rounds}`), "
            f"2-core machine, run {time.strftime('%Y-%m-%d')}; medians of {rounds} interleaved rounds (the loop, then "
            "each server, warm), each server's figure with its median overhead over the loop in the same round.",
            "",
            f"| {count} inflate jobs | pipeline called in a loop | {' | '.join(names)} |",
            "|---|" + "---:|" * (1 + len(names)),
            row("wall seconds", runs, lambda run: run.wall),
            row("CPU seconds (the loop's process; the server's processes)", runs, lambda run: run.cpu),
            row("seconds in the pipeline's own stages (the jobs' profiles)", runs, lambda run: run.pipeline),
            *(
                row(f"of which {stage}", runs, lambda run, stage=stage: run.stages.get(stage, 0.0))
                for stage in stage_names
            ),
            "",
            f"Wall-time overhead of each round: {rounds_text}.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| scheduler overhead per batch of 4 (claim + completion), median | {scheduler_ms[0]:.2f} ms |",
            f"| one progress flush of a running batch of 4 (at most one per 0.1 s), median "
            f"| {scheduler_ms[1]:.2f} ms |",
            f"| status polling (`orfeas serve`), 8 connections from a second process | {poll['rps']:.0f} requests/s, "
            f"p50 {poll['p50_ms']:.1f} ms, p99 {poll['p99_ms']:.1f} ms |",
            *(
                f"| a job sent to an idle {name}: creation to start, median of 10 | {ms:.1f} ms |"
                for name, ms in start_ms.items()
            ),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    scheduler_ms = scheduler_overhead_ms()
    with tempfile.TemporaryDirectory() as tmp:
        servers = {
            name: Server(Path(tmp) / f"data{i}", args=extra, env=USER_ENV)
            for i, (name, extra) in enumerate(SERVERS.items())
        }
        try:
            for server in servers.values():
                server.start()
            runs = throughput(servers, args.jobs, args.rounds)
            poll = polling(servers["`orfeas serve`"])
            start_ms = {name: start_latency_ms(server) for name, server in servers.items()}
        finally:
            for server in servers.values():
                if server.process is not None:
                    server.stop()
    report = render(args.jobs, args.rounds, runs, scheduler_ms, poll, start_ms)
    print(report)
    if args.write:
        write_section(args.write, MARKER, HEADING, report)


if __name__ == "__main__":
    main()
