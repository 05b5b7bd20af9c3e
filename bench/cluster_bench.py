"""Cluster benchmarks on PostgreSQL: worker scaling, claim latency under contention, cross-server progress cost.

    .venv/bin/python bench/cluster_bench.py [--jobs 96] [--repeat 2] [--write docs/BENCHMARKS.md]

Needs PostgreSQL at 127.0.0.1:5432 (trust auth); every part runs on its own throwaway database.

1. Throughput: one `orfeas serve --no-worker` and 1, 2, 3 `orfeas worker` processes; `--jobs` jobs of the test
   generator `sleepy` (tests/fake_generators.py: a fixed wait per batch and almost no CPU, as a GPU-bound worker
   looks to the host) submitted at once; jobs/s from the first job's creation to the last one's completion, best of
   `--repeat` interleaved rounds.
2. Claim latency: `JobStore.claim_batch` (batches of 4) from N threads at once on a full queue, each with its own
   connection; median and p95 per call, and a check that no job was claimed twice.
3. Progress across servers: WebSockets polling the database. Transactions per second per open socket (from
   pg_stat_database), the API process's CPU per socket, and the latency from a progress write to the socket's event.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import psutil
import sqlalchemy as sa
from websockets.sync.client import connect

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import throwaway_database  # noqa: E402
from tests.e2e.server import Server, WorkerProcess  # noqa: E402
from tests.e2e.test_cluster_pg import submit  # noqa: E402

from orfeas.store.db import create_db_engine  # noqa: E402
from orfeas.store.jobs import JobStore, NewJob  # noqa: E402
from orfeas.store.opening import open_database  # noqa: E402
from report import write_section  # noqa: E402

HEADING = "Cluster on PostgreSQL"
MARKER = "cluster-bench"
BATCH_DELAY = 0.5  # the sleepy generator's wait per batch
MAX_BATCH = 4
POLL_SECONDS = 0.2  # the default: a socket reads its job every poll_seconds / 2


def observer(url: str) -> sa.Engine:
    return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))


def throughput(workers: int, jobs: int) -> float:
    """Jobs per second with `workers` worker processes."""
    env = {
        "ORFEAS_MAX_BATCH": str(MAX_BATCH),
        "ORFEAS_TEST_BATCH_DELAY": str(BATCH_DELAY),
        "ORFEAS_TEST_DELAY": "0",
        "ORFEAS_POLL_SECONDS": "0.05",
    }
    with throwaway_database("orfeas_bench_") as url, tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        api = Server(data, env=env, args=("--no-worker", "--database", url)).start()
        processes = [WorkerProcess(data, url, api.env, data / f"worker{i}.log").start() for i in range(workers)]
        try:
            for worker in processes:
                worker.wait_started()
            with api.client() as client:
                warm_up = min(12, MAX_BATCH * workers)  # the workers load the generator before the clock starts
                submit(client, warm_up, "warm-up")
                wait_all(observer(url), expected=warm_up)
                ids = []
                for request in range(0, jobs, 12):
                    ids += submit(client, min(12, jobs - request), f"r{request}")
            engine = observer(url)
            wait_all(engine, expected=warm_up + jobs)
            with engine.connect() as conn:
                first, last = conn.execute(
                    sa.text("SELECT min(created_at), max(finished_at) FROM jobs WHERE id = ANY(:ids)"), {"ids": ids}
                ).one()
            engine.dispose()
        finally:
            for worker in processes:
                worker.stop()
            api.stop()
    return jobs / (last - first).total_seconds()


def wait_all(engine: sa.Engine, expected: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    query = sa.text("SELECT count(*) FROM jobs WHERE status = 'succeeded'")
    while True:
        with engine.connect() as conn:
            if conn.scalar(query) >= expected:
                return
        if time.monotonic() > deadline:
            raise RuntimeError("jobs did not finish")
        time.sleep(0.05)


def claim_latency(claimers: int, jobs: int = 2000) -> dict:
    """Per-call latency of claim_batch with `claimers` threads claiming at once until the queue is empty."""
    with throwaway_database("orfeas_bench_") as url:
        engine = open_database(url, "orfeas-bench")
        store = JobStore(engine)
        for start in range(0, jobs, 500):
            new = [
                NewJob(id=uuid.uuid4().hex, options={}, batch_key="k", input_name="x.png")
                for _ in range(min(500, jobs - start))
            ]
            store.create_jobs(new, owner="user:bench")
        barrier = threading.Barrier(claimers)
        latencies: list[float] = []
        claimed: list[str] = []
        lock = threading.Lock()

        def claim_until_empty(index: int) -> None:
            own = JobStore(create_db_engine(url, f"orfeas-bench-{index}"))
            own.queue_depth()  # connect before the clock starts
            barrier.wait()
            while True:
                start = time.perf_counter()
                batch = own.claim_batch(f"claimer-{index}", MAX_BATCH, 60)
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    claimed.extend(job.id for job in batch)
                if not batch:
                    return

        threads = [threading.Thread(target=claim_until_empty, args=(i,)) for i in range(claimers)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        engine.dispose()
    twice = sum(1 for count in Counter(claimed).values() if count > 1)
    assert len(claimed) == jobs and twice == 0, (len(claimed), twice)
    latencies.sort()
    return {
        "claimers": claimers,
        "median_ms": 1000 * statistics.median(latencies),
        "p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))],
        "jobs_per_s": jobs / wall,
    }


def transactions(engine: sa.Engine, database: str) -> int:
    with engine.connect() as conn:
        return conn.scalar(
            sa.text("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = :name"),
            {"name": database},
        )


def socket_cost(sockets: int = 20, seconds: float = 5.0, probes: int = 20) -> dict:
    """What open progress sockets cost the database and the API, and how late they see a progress write."""
    env = {"ORFEAS_POLL_SECONDS": str(POLL_SECONDS)}
    with throwaway_database("orfeas_bench_") as url, tempfile.TemporaryDirectory() as tmp:
        database = url.rsplit("/", 1)[1]
        api = Server(Path(tmp), env=env, args=("--no-worker", "--database", url)).start()
        engine = observer(url)
        try:
            with api.client() as client:
                ids = []
                for request in range(0, sockets, 10):
                    ids += submit(client, min(10, sockets - request), f"s{request}")  # stay queued: no worker
            process = psutil.Process(api.process.pid)

            def measure() -> tuple[float, float]:
                time.sleep(1.5)  # backends report their statistics at most once a second
                before, cpu_before, start = transactions(engine, database), process.cpu_times(), time.monotonic()
                time.sleep(seconds)
                after, cpu_after, elapsed = (
                    transactions(engine, database),
                    process.cpu_times(),
                    time.monotonic() - start,
                )
                cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
                return (after - before) / elapsed, cpu / elapsed

            idle_tps, idle_cpu = measure()
            with ExitStack() as stack:
                for job_id in ids:
                    socket = stack.enter_context(connect(f"ws://127.0.0.1:{api.port}/api/jobs/{job_id}/events"))
                    socket.recv(timeout=10)  # the first event: the socket runs
                busy_tps, busy_cpu = measure()

            # latency: write a progress row the way a worker does, time its arrival on a socket
            delays = []
            with connect(f"ws://127.0.0.1:{api.port}/api/jobs/{ids[0]}/events") as socket:
                socket.recv(timeout=10)
                for probe in range(probes):
                    stage = f"probe{probe}"
                    with engine.begin() as conn:
                        written = time.perf_counter()
                        conn.execute(
                            sa.text("UPDATE jobs SET status = 'running', progress = :p, stage = :s WHERE id = :id"),
                            {"p": probe % 100, "s": stage, "id": ids[0]},
                        )
                    while json.loads(socket.recv(timeout=10))["stage"] != stage:
                        pass
                    delays.append(time.perf_counter() - written)
                    time.sleep(0.137)  # off the poll period's beat
        finally:
            engine.dispose()
            api.stop()
    delays.sort()
    return {
        "sockets": sockets,
        "tps_per_socket": (busy_tps - idle_tps) / sockets,
        "cpu_per_socket": (busy_cpu - idle_cpu) / sockets,
        "latency_median_ms": 1000 * statistics.median(delays),
        "latency_p95_ms": 1000 * delays[int(0.95 * (len(delays) - 1))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=96)
    parser.add_argument("--repeat", type=int, default=2, help="rounds of 1, 2, 3 workers; the best of each counts")
    parser.add_argument("--write", type=Path, help="update this Markdown file's cluster-bench section")
    args = parser.parse_args()

    # Interleaved rounds, best of each: other load on a shared machine only ever slows a round down.
    runs: dict[int, list[float]] = {1: [], 2: [], 3: []}
    for _ in range(args.repeat):
        for workers, rates in runs.items():
            rates.append(throughput(workers, args.jobs))
            print(f"{workers} worker(s): {rates[-1]:.2f} jobs/s", flush=True)
    rates = {workers: max(values) for workers, values in runs.items()}
    for workers, rate in rates.items():
        print(f"{workers} worker(s): {rate:.2f} jobs/s ({rate / rates[1]:.2f}x)", flush=True)
    claims = [claim_latency(n) for n in (1, 4, 8)]
    for row in claims:
        print(row, flush=True)
    sockets = socket_cost()
    print(sockets, flush=True)

    ideal = 1 / (BATCH_DELAY / MAX_BATCH)
    lines = [
        f"Command: `make bench` (`.venv/bin/python bench/cluster_bench.py --jobs {args.jobs} --repeat {args.repeat}`),"
        " PostgreSQL 15 on the"
        f" same machine, {os.cpu_count()} cores shared by the API, the workers, PostgreSQL and the load, run"
        f" {datetime.now(UTC):%Y-%m-%d}.",
        "",
        f"Worker scaling: {args.jobs} jobs of the test generator `sleepy` ({BATCH_DELAY} s per batch of up to"
        f" {MAX_BATCH}, almost no CPU in the generator: one worker's ceiling is {ideal:.0f} jobs/s), one API process;"
        f" best of {args.repeat} interleaved rounds. The rest of the pipeline (cut-out, clean-up, export, the result"
        " files) still runs on the CPU for every job, so on this machine's cores the workers also compete for CPU.",
        "",
        "| worker processes | jobs/s (best) | vs 1 worker | every round, jobs/s |",
        "|---|---|---|---|",
        *(
            f"| {workers} | {rate:.2f} | {rate / rates[1]:.2f}x | {', '.join(f'{r:.2f}' for r in runs[workers])} |"
            for workers, rate in rates.items()
        ),
        "",
        f"Claim latency: `claim_batch` (up to {MAX_BATCH} jobs, `FOR UPDATE SKIP LOCKED`) from N threads at once, each"
        " with its own connection, until a queue of 2,000 jobs is empty; no job was claimed twice.",
        "",
        "| concurrent claimers | median | p95 | jobs claimed/s |",
        "|---|---|---|---|",
        *(
            f"| {row['claimers']} | {row['median_ms']:.2f} ms | {row['p95_ms']:.2f} ms | {row['jobs_per_s']:.0f} |"
            for row in claims
        ),
        "",
        f"Progress across API servers (WebSockets poll the job row every {POLL_SECONDS / 2:.1f} s, the default):"
        f" {sockets['sockets']} open sockets on one API process.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| database transactions per open socket (a pool pre-ping and a primary-key read per poll) |"
        f" {sockets['tps_per_socket']:.1f} /s |",
        f"| API process CPU per open socket | {100 * sockets['cpu_per_socket']:.2f}% of a core |",
        f"| progress write → event on the socket, median / p95 | {sockets['latency_median_ms']:.0f} ms /"
        f" {sockets['latency_p95_ms']:.0f} ms |",
    ]
    body = "\n".join(lines)
    print(body)
    if args.write:
        write_section(args.write, MARKER, HEADING, body)


if __name__ == "__main__":
    main()
