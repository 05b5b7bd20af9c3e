"""Request throughput against the ceiling this machine allows: ours as a ratio of a bare FastAPI + SQLite endpoint.

    .venv/bin/python bench/throughput_bench.py [--seconds 5] [--repeats 3] [--targets ceiling,agent]
        [--baseline OLD_TREE] [--write docs/BENCHMARKS.md]

Needs `wrk` (Debian's package) as the load generator, a second process on loopback. In one run, alternating and
repeated, it measures GET /api/jobs/{id} on:
- the ceiling: bench/bare_app.py (one primary-key read from the same SQLite WAL file, the same JSON), under uvicorn
  with httptools and uvloop; and the same app with an `async def` endpoint reading on the event loop (stricter);
- `orfeas serve --no-worker` (authentication off, as `make run`), and with an API key (authentication on);
- the signed agent status route, with requests signed ahead of time (a unique nonce each) and replayed by wrk, so
  the load generator costs the same for every target.
Medians of the repeats are reported; the ratio to the ceiling is what the targets in docs/BENCHMARKS.md speak of.
`--targets` measures only some of them (the ceilings always). `--baseline` adds the signed status route (and,
with the `orfeas` target, the unsigned one) of another tree (an older commit, e.g.
`git archive <commit> src | tar -x -C OLD_TREE`), served from its own data directory by its own code and measured
in the same turns, so a change is compared side by side on the same machine load.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from orfeas.signing import signed_headers  # noqa: E402
from report import write_section  # noqa: E402

CHAIR = (REPO / "examples" / "chair.png").read_bytes()
MARKER = "throughput-bench"
HEADING = "Request throughput against the ceiling (bench/throughput_bench.py)"
CONNECTIONS = 8
TARGETS = ("orfeas", "orfeas_2", "orfeas_key", "agent")
REPLAY_LUA = """
local requests = {}
init = function(args)
  for line in io.lines(args[1]) do
    local path, key, ts, nonce, sig = line:match("(%S+) (%S+) (%S+) (%S+) (%S+)")
    requests[#requests + 1] = wrk.format("GET", path, {
      ["X-Orfeas-Key"] = key, ["X-Orfeas-Timestamp"] = ts, ["X-Orfeas-Nonce"] = nonce, ["X-Orfeas-Signature"] = sig})
  end
  counter = 0
end
request = function()
  counter = counter + 1
  return requests[(counter - 1) % #requests + 1]
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not start")


def start(command: list[str], env: dict[str, str], health: str) -> subprocess.Popen:
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_healthy(health, process)
    return process


def wrk(url: str, seconds: float, script: Path | None = None, argument: str = "") -> dict[str, float]:
    command = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{round(seconds)}s", "--latency", url]
    if script:
        command += ["-s", str(script), url, argument]
        command.remove(url)
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p99_ms": float(p99.group(1)) * scale, "errors": int(errors.group(1)) if errors else 0}


def signed_requests(path: str, key_id: str, secret: str, count: int, file: Path) -> None:
    lines = []
    for _ in range(count):
        headers = signed_headers(key_id, secret, "GET", path, "", b"")
        lines.append(
            " ".join(
                [
                    path,
                    headers["X-Orfeas-Key"],
                    headers["X-Orfeas-Timestamp"],
                    headers["X-Orfeas-Nonce"],
                    headers["X-Orfeas-Signature"],
                ]
            )
        )
    file.write_text("\n".join(lines) + "\n")


def orfeas_env(data: Path, auth: str, source: Path = REPO) -> dict[str, str]:
    """The environment of `orfeas` commands and servers on `data`, importing orfeas from `source`'s tree."""
    path = str(source) if source == REPO else str(source / "src")
    return {
        **os.environ,
        "PYTHONPATH": path,
        "ORFEAS_AUTH": auth,
        "ORFEAS_AGENT_MASTER_KEY": "44" * 32,
        "ORFEAS_DATA_DIR": str(data),
    }


def cli(env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        [str(Path(sys.executable).with_name("orfeas")), *args], env=env, capture_output=True, text=True, check=True
    ).stdout


def create_agent(env: dict[str, str], name: str) -> tuple[str, str]:
    """A new agent with a rate no run reaches; its key id and secret."""
    agent = cli(env, "agents", "create", name, "--rate", "10000000")
    return re.search(r"key_id: (\S+)", agent).group(1), re.search(r"secret: (\S+)", agent).group(1)


def submit_job(port: int, key_id: str, secret: str) -> str:
    """The id of a job the agent submits (it stays queued: the servers run no worker)."""
    body = b'{"image": "' + base64.b64encode(CHAIR) + b'"}'
    response = httpx.post(
        f"http://127.0.0.1:{port}/api/agent/generate-3d",
        content=body,
        headers={
            **signed_headers(key_id, secret, "POST", "/api/agent/generate-3d", "", body),
            "Content-Type": "application/json",
        },
    )
    return response.json()["job"]["id"]


def signed_status(port: int, job: str, key_id: str, secret: str, seconds: float, tmp: Path) -> dict[str, float]:
    """wrk replaying freshly signed status requests (a unique nonce each) for `seconds`."""
    requests = tmp / "signed.txt"
    signed_requests(f"/api/agent/status/{job}", key_id, secret, int(seconds * 4000), requests)
    script = tmp / "replay.lua"
    script.write_text(REPLAY_LUA)
    return wrk(f"http://127.0.0.1:{port}/api/agent/status/{job}", seconds, script, str(requests))


def measure(
    seconds: float, repeats: int, targets: tuple[str, ...] = TARGETS, baseline: Path | None = None
) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {name: [] for name in ("ceiling", "ceiling_async", *targets)}
    if baseline is not None:
        results["agent_baseline"] = []
        if "orfeas" in targets:
            results["orfeas_baseline"] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        env = orfeas_env(data, "on")
        orfeas = str(Path(sys.executable).with_name("orfeas"))
        cli(env, "users", "create", "bench", "--admin", "--no-password")
        key = re.search(r"key: (\S+)", cli(env, "keys", "create", "--user", "bench")).group(1)
        key_id, secret = create_agent(env, "bench-agent")

        port_on, port_off, port_bare, port_two = free_port(), free_port(), free_port(), free_port()
        serve = [orfeas, "serve", "--no-worker", "--log-level", "warning"]
        servers = [
            start(
                [*serve, "--data-dir", str(data), "--port", str(port_on)], env, f"http://127.0.0.1:{port_on}/healthz"
            ),
        ]
        try:
            job = submit_job(port_on, key_id, secret)
            if "orfeas" in targets:
                servers.append(
                    start(
                        [*serve, "--data-dir", str(data), "--port", str(port_off)],
                        orfeas_env(data, "off"),
                        f"http://127.0.0.1:{port_off}/healthz",
                    )
                )
            if "orfeas_2" in targets:
                servers.append(
                    start(
                        [*serve, "--data-dir", str(data), "--port", str(port_two), "--workers", "2"],
                        orfeas_env(data, "off"),
                        f"http://127.0.0.1:{port_two}/healthz",
                    )
                )
            if baseline is not None:
                old_data = Path(tmp) / "baseline"
                old_env = orfeas_env(old_data, "on", baseline)
                old_key_id, old_secret = create_agent(old_env, "bench-agent")
                port_old = free_port()
                old_serve = [*serve, "--data-dir", str(old_data), "--port", str(port_old)]
                servers.append(start(old_serve, old_env, f"http://127.0.0.1:{port_old}/healthz"))
                old_job = submit_job(port_old, old_key_id, old_secret)
                if "orfeas" in targets:
                    port_old_off = free_port()
                    old_off = [*serve, "--data-dir", str(old_data), "--port", str(port_old_off)]
                    old_off_env = orfeas_env(old_data, "off", baseline)
                    servers.append(start(old_off, old_off_env, f"http://127.0.0.1:{port_old_off}/healthz"))
                    wrk(f"http://127.0.0.1:{port_old_off}/api/jobs/{old_job}", 2)
            bare_env = {**os.environ, "BARE_DATABASE": str(data / "orfeas.db"), "PYTHONPATH": str(REPO / "bench")}
            port_bare_async = free_port()
            for port, flavour in ((port_bare, "0"), (port_bare_async, "1")):
                bare = [sys.executable, "-m", "uvicorn", "bare_app:app", "--port", str(port), "--log-level", "warning"]
                bare += ["--http", "httptools", "--loop", "uvloop"]
                servers.append(
                    start(bare, {**bare_env, "BARE_ASYNC": flavour}, f"http://127.0.0.1:{port}/api/jobs/{job}")
                )

            lua_key = Path(tmp) / "key.lua"
            lua_key.write_text(f'wrk.headers["Authorization"] = "Bearer {key}"\n')
            path = f"/api/jobs/{job}"
            ports = {
                "ceiling": port_bare,
                "ceiling_async": port_bare_async,
                "orfeas": port_off,
                "orfeas_2": port_two,
                "orfeas_key": port_on,
            }
            for name, port in ports.items():  # threads, pooled connections, lazy imports
                if name in results:
                    wrk(f"http://127.0.0.1:{port}{path}", 2, lua_key)
            if baseline is not None:
                signed_status(port_old, old_job, old_key_id, old_secret, 2, Path(tmp))
            if "agent" in targets:
                signed_status(port_on, job, key_id, secret, 2, Path(tmp))
            time.sleep(3)
            for _ in range(repeats):
                results["ceiling"].append(wrk(f"http://127.0.0.1:{port_bare}{path}", seconds))
                results["ceiling_async"].append(wrk(f"http://127.0.0.1:{port_bare_async}{path}", seconds))
                if "orfeas_baseline" in results:
                    results["orfeas_baseline"].append(
                        wrk(f"http://127.0.0.1:{port_old_off}/api/jobs/{old_job}", seconds)
                    )
                if "orfeas" in targets:
                    results["orfeas"].append(wrk(f"http://127.0.0.1:{port_off}{path}", seconds))
                if "orfeas_2" in targets:
                    results["orfeas_2"].append(wrk(f"http://127.0.0.1:{port_two}{path}", seconds))
                if "orfeas_key" in targets:
                    results["orfeas_key"].append(wrk(f"http://127.0.0.1:{port_on}{path}", seconds, lua_key))
                if baseline is not None:
                    results["agent_baseline"].append(
                        signed_status(port_old, old_job, old_key_id, old_secret, seconds, Path(tmp))
                    )
                if "agent" in targets:
                    results["agent"].append(signed_status(port_on, job, key_id, secret, seconds, Path(tmp)))
        finally:
            for process in servers:
                process.terminate()
                process.wait(timeout=30)
    return results


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def render(
    results: dict[str, list[dict[str, float]]], seconds: float, repeats: int, command: str, baseline: str = ""
) -> str:
    ceiling_rps, ceiling_p99 = median(results["ceiling"], "rps"), median(results["ceiling"], "p99_ms")
    strict_rps = median(results["ceiling_async"], "rps")
    labels = {
        "ceiling": "bare FastAPI + SQLite (the ceiling)",
        "ceiling_async": "the same, `async def` endpoint reading on the event loop (the stricter ceiling)",
        "orfeas_baseline": f"`orfeas serve` of {baseline or 'the baseline tree'}, GET /api/jobs/{{id}}, auth off",
        "orfeas": "`orfeas serve`, GET /api/jobs/{id}, authentication off",
        "orfeas_2": "`orfeas serve --workers 2`, the same",
        "orfeas_key": "`orfeas serve`, GET /api/jobs/{id}, API key",
        "agent_baseline": f"`orfeas serve` of {baseline or 'the baseline tree'}, signed GET /api/agent/status/{{id}}",
        "agent": "`orfeas serve`, signed GET /api/agent/status/{id}",
    }
    lines = [
        f"Command: `{command}` (wrk, 1 thread, {CONNECTIONS} connections, loopback), 2-core machine, run "
        f"{time.strftime('%Y-%m-%d')}; medians of the repeats, taken in turn.",
        "",
        "| target | requests/s | p99 | share of the ceiling's requests/s | p99 / ceiling's | share of the stricter "
        "ceiling's | non-2xx |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, label in labels.items():
        if name not in results:
            continue
        rps, p99 = median(results[name], "rps"), median(results[name], "p99_ms")
        errors = sum(run["errors"] for run in results[name])
        lines.append(
            f"| {label} | {rps:.0f} | {p99:.1f} ms | {rps / ceiling_rps:.0%} | {p99 / ceiling_p99:.1f}x "
            f"| {rps / strict_rps:.0%} | {errors} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"a comma-separated subset of {TARGETS}")
    parser.add_argument("--baseline", type=Path, help="another tree whose signed status route to measure alongside")
    parser.add_argument("--baseline-label", default="", help="what to call the baseline tree in the table")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    targets = tuple(name for name in args.targets.split(",") if name and name != "ceiling")
    if unknown := set(targets).difference(TARGETS):
        raise SystemExit(f"unknown targets {sorted(unknown)}; choose from {TARGETS}")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    command = " ".join(["bench/throughput_bench.py", *sys.argv[1:]]).replace(f" --write {args.write}", "")
    results = measure(args.seconds, args.repeats, targets, args.baseline)
    text = render(results, args.seconds, args.repeats, f".venv/bin/python {command}", args.baseline_label)
    print(text)
    if args.write:
        write_section(args.write, MARKER, HEADING, text)


if __name__ == "__main__":
    main()
