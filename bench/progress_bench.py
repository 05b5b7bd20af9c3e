"""Progress WebSockets: CPU per open socket and change-to-event latency, with 20 and 200 sockets.

    .venv/bin/python bench/progress_bench.py [--write docs/BENCHMARKS.md]

Against `orfeas serve --no-worker` (authentication off) with queued jobs that nothing runs: for each case, opens the
sockets (spread over the given number of jobs), measures the server's CPU time over 10 s of nothing happening, then
cancels every job through the API and measures how long each socket took to see it (from the cancel request to
the socket's event). Database reads do not grow with sockets: on SQLite one query per poll tick reads every
followed job (tests/api/test_progress.py counts them); on PostgreSQL (`--postgres`: a throwaway database on the local
server) the server LISTENs for the jobs table's notifications and reads a job only when it changed, and the table
gives the database's transactions per second over the quiet window (pg_stat_database).

    .venv/bin/python bench/progress_bench.py --postgres
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from report import write_section  # noqa: E402

CHAIR = (REPO / "examples" / "chair.png").read_bytes()
CASES = [(20, 1), (20, 20), (200, 1), (200, 200)]  # (sockets, jobs they follow)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


POSTGRES_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"


def transactions(database: str | None) -> int:
    """Transactions committed or rolled back in `database` so far (0 without one)."""
    if database is None:
        return 0
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", (database,)
        ).fetchone()
    return int(row[0]) if row else 0


async def run_case(
    url: str, server: psutil.Process, sockets: int, jobs: int, database: str | None = None
) -> dict[str, float]:
    from websockets.asyncio.client import connect

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        ids = []
        for _ in range(jobs):
            response = await client.post("/api/jobs", files={"image": ("a.png", CHAIR, "image/png")})
            ids.append(response.json()["jobs"][0]["id"])
        ws_url = url.replace("http://", "ws://")
        opened = [await connect(f"{ws_url}/api/jobs/{ids[i % jobs]}/events") for i in range(sockets)]
        for sock in opened:
            await sock.recv()  # the current state
        # PostgreSQL publishes an idle session's statistics up to 10 s late: let the set-up's writes land first
        await asyncio.sleep(12 if database else 2)
        xacts, before, started = transactions(database), server.cpu_times(), time.monotonic()
        await asyncio.sleep(10)
        after, elapsed = server.cpu_times(), time.monotonic() - started
        xacts = (transactions(database) - xacts - 1) / elapsed  # less our own first reading
        cpu = (after.user + after.system - before.user - before.system) / elapsed
        latencies: list[float] = []

        async def wait_canceled(sock, since: float) -> None:
            while True:
                event = json.loads(await sock.recv())
                if event.get("status") == "canceled":
                    latencies.append(time.monotonic() - since)
                    return

        for index, job_id in enumerate(ids):
            followers = [sock for i, sock in enumerate(opened) if i % jobs == index]
            since = time.monotonic()
            waiting = [asyncio.create_task(wait_canceled(sock, since)) for sock in followers]
            await client.delete(f"/api/jobs/{job_id}")
            await asyncio.gather(*waiting)
        for sock in opened:
            await sock.close()
    latencies.sort()
    return {
        "cpu_per_socket": 100 * cpu / sockets,
        "cpu_total": 100 * cpu,
        "transactions_per_s": xacts,
        "p50_ms": 1000 * statistics.median(latencies),
        "p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", action="store_true", help="a throwaway database on the local PostgreSQL")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, database_for(args.postgres) as database:
        port = free_port()
        env = {**os.environ, "ORFEAS_AUTH": "off", "ORFEAS_MAX_WEBSOCKETS": "1000"}
        env["ORFEAS_MAX_WEBSOCKETS_PER_CLIENT"] = "1000"
        if database is not None:
            env["ORFEAS_DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:5432/{database}"
        orfeas = str(Path(sys.executable).with_name("orfeas"))
        command = [orfeas, "serve", "--no-worker", "--port", str(port), "--data-dir", tmp, "--log-level", "warning"]
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    httpx.get(url + "/healthz", timeout=1)
                    break
                except httpx.HTTPError:
                    assert time.monotonic() < deadline, "server did not start"
                    time.sleep(0.2)
            server = psutil.Process(process.pid)
            asyncio.run(run_case(url, server, 20, 1))  # warm-up: lazy imports, thread pool, pooled connections
            rows = [
                (sockets, jobs, asyncio.run(run_case(url, server, sockets, jobs, database))) for sockets, jobs in CASES
            ]
        finally:
            process.terminate()
            process.wait(timeout=30)
    flag = " --postgres" if args.postgres else ""
    where = "PostgreSQL (LISTEN/NOTIFY)" if args.postgres else "SQLite (one poller per process)"
    lines = [
        f"Command: `.venv/bin/python bench/progress_bench.py{flag}`, {where}, 2-core machine, run "
        f"{time.strftime('%Y-%m-%d')}; server CPU over 10 s with the sockets open and nothing changing, then the "
        "time from each cancel request to the socket's event (after a warm-up case).",
        "",
        "| sockets | jobs followed | server CPU, idle (% of a core) | per socket | event latency p50 | p95 |"
        + (" database transactions/s, idle |" if args.postgres else ""),
        "|---|---|---|---|---|---|" + ("---|" if args.postgres else ""),
    ]
    for sockets, jobs, row in rows:
        lines.append(
            f"| {sockets} | {jobs} | {row['cpu_total']:.1f} % | {row['cpu_per_socket']:.3f} % | "
            f"{row['p50_ms']:.0f} ms | {row['p95_ms']:.0f} ms |"
            + (f" {row['transactions_per_s']:.1f} |" if args.postgres else "")
        )
    text = "\n".join(lines)
    print(text)
    if args.write:
        marker = "progress-bench-postgres" if args.postgres else "progress-bench"
        write_section(args.write, marker, "Progress sockets (bench/progress_bench.py)", text)


@contextlib.contextmanager
def database_for(postgres: bool) -> Iterator[str | None]:
    """A throwaway PostgreSQL database's name, dropped afterwards; None for SQLite."""
    if not postgres:
        yield None
        return
    import psycopg

    name = f"orfeas_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


if __name__ == "__main__":
    main()
