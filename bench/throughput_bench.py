"""Request throughput against the ceiling this machine allows: ours as a ratio of a bare FastAPI + SQLite endpoint.

    .venv/bin/python bench/throughput_bench.py [--seconds 5] [--repeats 3] [--write docs/BENCHMARKS.md]

Needs `wrk` (Debian's package) as the load generator, a second process on loopback. In one run, alternating and
repeated, it measures GET /api/jobs/{id} on:
- the ceiling: bench/bare_app.py (one primary-key read from the same SQLite WAL file, the same JSON), under uvicorn
  with httptools and uvloop;
- `orfeas serve --no-worker` (authentication off, as `make run`), and with an API key (authentication on);
- the signed agent status route, with requests signed ahead of time (a unique nonce each) and replayed by wrk, so
  the load generator costs the same for every target.
Medians of the repeats are reported; the ratio to the ceiling is what the targets in docs/BENCHMARKS.md speak of.
"""

from __future__ import annotations

import argparse
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


def orfeas_env(data: Path, auth: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "ORFEAS_AUTH": auth,
        "ORFEAS_AGENT_MASTER_KEY": "44" * 32,
        "ORFEAS_DATA_DIR": str(data),
    }


def cli(env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        [str(Path(sys.executable).with_name("orfeas")), *args], env=env, capture_output=True, text=True, check=True
    ).stdout


def measure(seconds: float, repeats: int) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {
        "ceiling": [],
        "orfeas": [],
        "orfeas_2": [],
        "orfeas_key": [],
        "agent": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        env = orfeas_env(data, "on")
        orfeas = str(Path(sys.executable).with_name("orfeas"))
        cli(env, "users", "create", "bench", "--admin", "--no-password")
        key = re.search(r"key: (\S+)", cli(env, "keys", "create", "--user", "bench")).group(1)
        agent = cli(env, "agents", "create", "bench-agent", "--rate", "10000000")
        key_id = re.search(r"key_id: (\S+)", agent).group(1)
        secret = re.search(r"secret: (\S+)", agent).group(1)

        port_on, port_off, port_bare, port_two = free_port(), free_port(), free_port(), free_port()
        serve = [orfeas, "serve", "--no-worker", "--data-dir", str(data), "--log-level", "warning"]
        servers = [
            start([*serve, "--port", str(port_on)], env, f"http://127.0.0.1:{port_on}/healthz"),
        ]
        try:
            job = httpx.post(
                f"http://127.0.0.1:{port_on}/api/agent/generate-3d",
                content=(body := b'{"image": "' + __import__("base64").b64encode(CHAIR) + b'"}'),
                headers={
                    **signed_headers(key_id, secret, "POST", "/api/agent/generate-3d", "", body),
                    "Content-Type": "application/json",
                },
            ).json()["job"]["id"]
            servers.append(
                start(
                    [*serve, "--port", str(port_off)],
                    orfeas_env(data, "off"),
                    f"http://127.0.0.1:{port_off}/healthz",
                )
            )
            servers.append(
                start(
                    [*serve, "--port", str(port_two), "--workers", "2"],
                    orfeas_env(data, "off"),
                    f"http://127.0.0.1:{port_two}/healthz",
                )
            )
            bare_env = {**os.environ, "BARE_DATABASE": str(data / "orfeas.db"), "PYTHONPATH": str(REPO / "bench")}
            bare = [sys.executable, "-m", "uvicorn", "bare_app:app", "--port", str(port_bare), "--log-level", "warning"]
            bare += ["--http", "httptools", "--loop", "uvloop"]
            servers.append(start(bare, bare_env, f"http://127.0.0.1:{port_bare}/api/jobs/{job}"))

            script = Path(tmp) / "replay.lua"
            script.write_text(REPLAY_LUA)
            lua_key = Path(tmp) / "key.lua"
            lua_key.write_text(f'wrk.headers["Authorization"] = "Bearer {key}"\n')
            path = f"/api/jobs/{job}"
            for port in (port_bare, port_off, port_two, port_on):  # threads, pooled connections, lazy imports
                wrk(f"http://127.0.0.1:{port}{path}", 2, lua_key)
            time.sleep(3)
            for _ in range(repeats):
                results["ceiling"].append(wrk(f"http://127.0.0.1:{port_bare}{path}", seconds))
                results["orfeas"].append(wrk(f"http://127.0.0.1:{port_off}{path}", seconds))
                results["orfeas_2"].append(wrk(f"http://127.0.0.1:{port_two}{path}", seconds))
                results["orfeas_key"].append(wrk(f"http://127.0.0.1:{port_on}{path}", seconds, lua_key))
                requests = Path(tmp) / "signed.txt"
                signed_requests(f"/api/agent/status/{job}", key_id, secret, int(seconds * 4000), requests)
                results["agent"].append(
                    wrk(f"http://127.0.0.1:{port_on}/api/agent/status/{job}", seconds, script, str(requests))
                )
        finally:
            for process in servers:
                process.terminate()
                process.wait(timeout=30)
    return results


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def render(results: dict[str, list[dict[str, float]]], seconds: float, repeats: int) -> str:
    ceiling_rps, ceiling_p99 = median(results["ceiling"], "rps"), median(results["ceiling"], "p99_ms")
    labels = {
        "ceiling": "bare FastAPI + SQLite (the ceiling)",
        "orfeas": "`orfeas serve`, GET /api/jobs/{id}, authentication off",
        "orfeas_2": "`orfeas serve --workers 2`, the same",
        "orfeas_key": "`orfeas serve`, GET /api/jobs/{id}, API key",
        "agent": "`orfeas serve`, signed GET /api/agent/status/{id}",
    }
    lines = [
        f"Command: `.venv/bin/python bench/throughput_bench.py --seconds {seconds:g} --repeats {repeats}` "
        f"(wrk, 1 thread, {CONNECTIONS} connections, loopback), 2-core machine, run {time.strftime('%Y-%m-%d')}; "
        "medians of the repeats, taken in turn.",
        "",
        "| target | requests/s | p99 | share of the ceiling's requests/s | p99 / ceiling's | non-2xx |",
        "|---|---|---|---|---|---|",
    ]
    for name, label in labels.items():
        rps, p99 = median(results[name], "rps"), median(results[name], "p99_ms")
        errors = sum(run["errors"] for run in results[name])
        lines.append(
            f"| {label} | {rps:.0f} | {p99:.1f} ms | {rps / ceiling_rps:.0%} | {p99 / ceiling_p99:.1f}x | {errors} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    text = render(measure(args.seconds, args.repeats), args.seconds, args.repeats)
    print(text)
    if args.write:
        write_section(args.write, MARKER, HEADING, text)


if __name__ == "__main__":
    main()
