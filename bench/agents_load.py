"""Load test of the agent API: concurrent signed agents against a real server on 127.0.0.1 (bounded).

    .venv/bin/python bench/agents_load.py [--agents 10] [--jobs 10] [--write docs/BENCHMARKS.md]

Each agent (its own key, with a rate limit high enough not to be what is measured) submits `--jobs` jobs, half as
single `generate-3d` requests and half in one `batch` request, then polls each to completion through the SDK.
Reported: jobs lost (accepted but not succeeded), duplicated (a job id returned twice, or succeeded twice in the
job's event log), requests rejected wrongly (any 4xx/5xx other than a 429 over the agent's own limit) and the
latency of those signed requests, submissions and status requests apart; while the jobs run, one more agent asks
for a job's status every 20 ms, so that the status latency has enough samples for its p99. Then every agent sends
signed status requests back to back for 5 s: the throughput of signed requests the machine sustains (each one
verified, nonce stored and rate counted). `--serve-args` passes options to `orfeas serve` (`--workers 2`: the
worker loop in a process of its own).
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.server import ORFEAS, Server  # noqa: E402

from orfeas.client import AgentClient  # noqa: E402
from orfeas.client.agent import ApiError, RateLimitError  # noqa: E402
from report import write_section  # noqa: E402

IMAGES = [REPO / "examples" / name for name in ("chair.png", "robot.png", "flamingo.png")]
OPTIONS = {"faces": 2000, "resolution": 96}
MARKER = "agents-load"
HAMMER_SECONDS = 5.0


class Recorder(httpx.HTTPTransport):
    """An httpx transport that records the latency and status of every request it carries (thread-safe)."""

    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.status_latencies: list[float] = []  # of the GET requests (status, downloads)
        self.refusals: list[int] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        start = time.perf_counter()
        response = super().handle_request(request)
        with self.lock:
            latency = time.perf_counter() - start
            (self.status_latencies if request.method == "GET" else self.latencies).append(latency)
            if response.status_code >= 400:
                self.refusals.append(response.status_code)
        return response


def register(server: Server, name: str) -> tuple[str, str]:
    out = subprocess.run(
        [ORFEAS, "agents", "create", name, "--rate", "100000", "--data-dir", str(server.data_dir)],
        capture_output=True,
        text=True,
        check=True,
        env=server.env,
    ).stdout
    fields = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    return fields["key_id"], fields["secret"]


def run_agent(server: Server, credentials: tuple[str, str], jobs: int) -> tuple[list[str], Recorder]:
    """Submit `jobs` jobs (half single, half one batch) and wait for all; returns the accepted ids and timings."""
    recorder = Recorder()
    ids = []
    with AgentClient(server.url, *credentials, transport=recorder) as client:
        singles = jobs // 2
        for index in range(singles):
            ids.append(client.generate(IMAGES[index % len(IMAGES)], **OPTIONS)["id"])
        batch = [IMAGES[i % len(IMAGES)] for i in range(jobs - singles)]
        ids += [job["id"] for job in client.batch(batch, **OPTIONS)]
        for job_id in ids:
            while True:
                try:
                    client.wait(job_id, timeout=600, poll=1.0)
                    break
                except RateLimitError as exc:
                    time.sleep(exc.retry_after)
    return ids, recorder


def hammer_status(server: Server, credentials: tuple[str, str], job_id: str, seconds: float) -> Recorder:
    """Signed status requests back to back for `seconds`."""
    recorder = Recorder()
    with AgentClient(server.url, *credentials, transport=recorder) as client:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            client.status(job_id)
    return recorder


def probe_status(server: Server, credentials: tuple[str, str], done: threading.Event, every: float = 0.02) -> Recorder:
    """Signed status requests for a job of this agent's own, one every `every` seconds until `done`."""
    recorder = Recorder()
    with AgentClient(server.url, *credentials, transport=recorder) as client:
        job_id = client.generate(IMAGES[0], **OPTIONS)["id"]
        recorder.latencies.clear()  # its submission is not a status request
        while not done.wait(every):
            client.status(job_id)
    return recorder


def succeeded_counts(data_dir: Path) -> dict[str, int]:
    with sqlite3.connect(data_dir / "orfeas.db") as db:
        rows = db.execute("SELECT job_id, COUNT(*) FROM job_events WHERE status = 'succeeded' GROUP BY job_id")
        return dict(rows.fetchall())


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[int(q * (len(sorted_values) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--serve-args", default="", help="Options for `orfeas serve`, e.g. '--workers 2'.")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    serve_args = tuple(args.serve_args.split())
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp) / "data", env={"ORFEAS_MAX_BATCH": "8"}, args=serve_args).start()
        try:
            agents = [register(server, f"load-{i}") for i in range(args.agents)]
            prober_done = threading.Event()
            with ThreadPoolExecutor(1) as probing:
                prober = probing.submit(probe_status, server, register(server, "probe"), prober_done)
                start = time.perf_counter()
                with ThreadPoolExecutor(args.agents) as pool:
                    outcomes = [
                        future.result() for future in [pool.submit(run_agent, server, a, args.jobs) for a in agents]
                    ]
                elapsed = time.perf_counter() - start
                prober_done.set()
                probe = prober.result()
            accepted = [job_id for ids, _ in outcomes for job_id in ids]
            with ThreadPoolExecutor(args.agents) as pool:
                targets = [(agent, ids[0]) for agent, (ids, _) in zip(agents, outcomes, strict=True)]
                hammers = list(pool.map(lambda t: hammer_status(server, t[0], t[1], HAMMER_SECONDS), targets))
            with server.client() as http:
                final = {job_id: http.get(f"/api/jobs/{job_id}").json()["status"] for job_id in accepted}
            counts = succeeded_counts(server.data_dir)
        except ApiError as exc:
            raise SystemExit(f"load test failed: {exc}") from exc
        finally:
            server.stop()
    lost = sum(1 for status in final.values() if status != "succeeded")
    duplicated = (len(accepted) - len(set(accepted))) + sum(1 for job_id in accepted if counts.get(job_id, 0) > 1)
    refusals = [code for _, recorder in outcomes for code in recorder.refusals]
    wrong = [code for code in refusals if code != 429]
    latencies = sorted(t for _, recorder in outcomes for t in recorder.latencies)
    polled = sorted([t for _, recorder in outcomes for t in recorder.status_latencies] + probe.status_latencies)
    hammered = sorted(t for recorder in hammers for t in recorder.status_latencies)
    wrong += [code for recorder in [*hammers, probe] for code in recorder.refusals]
    extra = f" --serve-args '{args.serve_args}'" if serve_args else ""
    body = "\n".join(
        [
            f"Command: `make bench` (`.venv/bin/python bench/agents_load.py --agents {args.agents} "
            f"--jobs {args.jobs}{extra}`), 2-core machine, server (`{' '.join(['orfeas serve', *serve_args])}`) and "
            f"load on the same machine, run {time.strftime('%Y-%m-%d')}; jobs are `inflate` at resolution 96 with "
            "2,000 faces.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| agents × jobs | {args.agents} × {args.jobs} = {len(accepted)} accepted |",
            f"| jobs lost / duplicated | {lost} / {duplicated} |",
            f"| requests rejected wrongly (not 429) | {len(wrong)} |",
            f"| 429 (an agent over its own limit, retried) | {refusals.count(429)} |",
            f"| signed submissions while the jobs ran, latency p50 / p99 | {len(latencies)} requests, "
            f"{1000 * statistics.median(latencies):.1f} ms / {1000 * percentile(latencies, 0.99):.1f} ms |",
            f"| signed status requests while the jobs ran, latency p50 / p99 | {len(polled)} requests, "
            f"{1000 * statistics.median(polled):.1f} ms / {1000 * percentile(polled, 0.99):.1f} ms |",
            f"| sustained signed status requests, {args.agents} agents back to back | "
            f"{len(hammered) / HAMMER_SECONDS:.0f} requests/s, p50 {1000 * statistics.median(hammered):.1f} ms, "
            f"p99 {1000 * percentile(hammered, 0.99):.1f} ms |",
            f"| all {len(accepted)} jobs finished in | {elapsed:.1f} s ({len(accepted) / elapsed:.2f} jobs/s) |",
        ]
    )
    print(body)
    if args.write:
        write_section(args.write, MARKER, "Agent API under load", body)
    if lost or duplicated or wrong:
        raise SystemExit("load test found lost, duplicated or wrongly rejected work")


if __name__ == "__main__":
    main()
