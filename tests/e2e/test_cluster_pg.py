"""Cluster mode on a real PostgreSQL: `orfeas serve --no-worker` API processes and `orfeas worker` processes on one
database and one shared data dir. Each test gets its own throwaway database (the `postgres_url` fixture)."""

from __future__ import annotations

import io
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
import sqlalchemy as sa
from PIL import Image
from websockets.sync.client import connect

from tests.conftest import POSTGRES_ADMIN
from tests.e2e.server import Server, WorkerProcess

LEASE_SECONDS = 3.0
HEARTBEAT_SECONDS = 0.5


def cutout_png(size: int = 96) -> bytes:
    """A small cut-out (transparent background), so the pipeline spends no time on background removal."""
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    image.paste((40, 120, 220, 255), (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


IMAGE = cutout_png()


@dataclass
class Cluster:
    """API servers and worker processes sharing `database` and `data_dir`."""

    database: str
    data_dir: Path
    env: dict[str, str]
    apis: list[Server] = field(default_factory=list)
    workers: list[WorkerProcess] = field(default_factory=list)

    def start(self, apis: int, workers: int) -> Cluster:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for index in range(apis):
            server = Server(
                self.data_dir,
                env=self.env,
                args=("--no-worker", "--database", self.database),
                log=self.data_dir / f"api{index}.log",
            )
            # the first one creates the tables; then the others start together
            self.apis.append(server.start() if index == 0 else server)
        for index in range(workers):
            worker = WorkerProcess(self.data_dir, self.database, self.apis[0].env, self.data_dir / f"worker{index}.log")
            self.workers.append(worker.start())
        for server in self.apis[1:]:
            server.start()
        for worker in self.workers:
            worker.wait_started()
        return self

    def stop(self) -> list[int | None]:
        codes = [worker.stop() for worker in self.workers]
        for server in self.apis:
            server.stop()
        return codes

    def worker_logs(self) -> str:
        return "".join(worker.log.read_text() for worker in self.workers)


@contextmanager
def cluster(postgres_url: str, tmp_path: Path, apis: int, workers: int, **env: str) -> Iterator[Cluster]:
    settings = {
        "ORFEAS_LEASE_SECONDS": str(LEASE_SECONDS),
        "ORFEAS_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
        "ORFEAS_MAX_BATCH": "4",
        "ORFEAS_TEST_BATCH_DELAY": "0.6",
        **env,
    }
    running = Cluster(postgres_url, tmp_path / "shared", settings).start(apis, workers)
    try:
        yield running
    finally:
        running.stop()


def submit(client: httpx.Client, count: int, name: str) -> list[str]:
    files = [("image", (f"{name}-{i}.png", IMAGE, "image/png")) for i in range(count)]
    data = {"backend": "sleepy", "faces": "2000", "texture": "false"}
    response = client.post("/api/jobs", files=files, data=data)
    assert response.status_code == 202, response.text
    return [job["id"] for job in response.json()["jobs"]]


def observer(postgres_url: str) -> sa.Engine:
    """The test's own connection, named so that the connection cutter below spares it."""
    return sa.create_engine(
        postgres_url.replace("postgresql://", "postgresql+psycopg://"),
        connect_args={"application_name": "cluster-test"},
        pool_pre_ping=True,
    )


def wait_until_finished(engine: sa.Engine, job_ids: list[str], timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with engine.connect() as conn:
                rows = conn.execute(sa.text("SELECT id, status FROM jobs WHERE id = ANY(:ids)"), {"ids": job_ids})
                statuses = dict(rows.all())
        except sa.exc.OperationalError:
            statuses = {}
        if len(statuses) == len(job_ids) and all(s in ("succeeded", "failed", "canceled") for s in statuses.values()):
            return statuses
        if time.monotonic() > deadline:
            raise AssertionError(f"jobs not finished in {timeout} s: {Counter(statuses.values())}")
        time.sleep(0.2)


def wait_for_claims_by(engine: sa.Engine, workers: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    query = sa.text("SELECT COUNT(DISTINCT worker) FROM job_events WHERE status = 'running'")
    while True:
        with engine.connect() as conn:
            if conn.scalar(query) >= workers:
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {workers} workers claimed a batch in {timeout} s")
        time.sleep(0.1)


def events_by_status(engine: sa.Engine, status: str) -> Counter:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT job_id FROM job_events WHERE status = :status"), {"status": status})
        return Counter(row.job_id for row in rows)


def test_three_workers_two_apis_sixty_jobs_and_a_killed_worker(postgres_url, tmp_path):
    engine = observer(postgres_url)
    with cluster(postgres_url, tmp_path, apis=2, workers=3) as running:
        first, second = running.apis
        with first.client() as a, second.client() as b:
            ids = []
            for request in range(6):  # through both APIs
                ids += submit(a if request % 2 == 0 else b, 10, f"r{request}")
        assert len(set(ids)) == 60

        victim = running.workers[0]
        owner_like = f"%-{victim.pid}-%"
        deadline = time.monotonic() + 60
        held = []
        with engine.connect() as conn:
            while not held and time.monotonic() < deadline:
                query = sa.text("SELECT id FROM jobs WHERE status = 'running' AND lease_owner LIKE :owner")
                held = list(conn.scalars(query, {"owner": owner_like}))
                time.sleep(0.02)
        assert held, "the first worker never held a batch"
        victim.kill()
        killed_at = datetime.now(UTC)
        with engine.connect() as conn:
            query = sa.text("SELECT id FROM jobs WHERE status = 'running' AND lease_owner LIKE :owner")
            orphaned = list(conn.scalars(query, {"owner": owner_like}))
        assert orphaned, "the batch finished between the check and kill -9"

        statuses = wait_until_finished(engine, ids, timeout=120)
        with second.client() as b:  # the API agrees with the database
            assert {b.get(f"/api/jobs/{job_id}").json()["status"] for job_id in ids} == {"succeeded"}
        codes = running.stop()

    assert Counter(statuses.values()) == {"succeeded": 60}
    succeeded = events_by_status(engine, "succeeded")
    assert {job_id: succeeded[job_id] for job_id in ids} == dict.fromkeys(ids, 1)  # exactly once each
    with engine.connect() as conn:
        takeovers = conn.execute(
            sa.text(
                "SELECT job_id, at, detail FROM job_events WHERE status = 'queued' AND detail = 'lease expired'"
                " AND job_id = ANY(:ids)"
            ),
            {"ids": orphaned},
        ).all()
        finishers = dict(
            conn.execute(
                sa.text("SELECT job_id, worker FROM job_events WHERE status = 'succeeded' AND job_id = ANY(:ids)"),
                {"ids": orphaned},
            ).all()
        )
    assert {row.job_id for row in takeovers} == set(orphaned)  # every job the dead worker held came back
    # The lease runs at most LEASE_SECONDS past the last heartbeat before the kill; every live worker's heartbeat
    # thread requeues expired leases each HEARTBEAT_SECONDS, busy or not (plus a second for a loaded machine).
    worst = max((row.at - killed_at).total_seconds() for row in takeovers)
    print(f"takeover {worst:.2f} s after the kill, lease {LEASE_SECONDS} s")
    assert worst < LEASE_SECONDS + HEARTBEAT_SECONDS + 1.0, worst
    assert all(f"-{victim.pid}-" not in finishers[job_id] for job_id in orphaned)
    assert codes[1:] == [0, 0]  # the surviving workers stop cleanly on SIGTERM
    engine.dispose()


def terminate_backends(admin: psycopg.Connection, database: str) -> list[str]:
    """pg_terminate_backend on every ORFEAS connection to `database`; the application names it cut."""
    rows = admin.execute(
        "SELECT application_name, pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = %s AND application_name LIKE 'orfeas-%%'",
        (database,),
    ).fetchall()
    return [name for name, done in rows if done]


class Poller(threading.Thread):
    """Reads job lists and single jobs from every API server, back to back, and keeps each answer."""

    def __init__(self, servers: list[Server], job_id: str):
        super().__init__(daemon=True)
        self.servers = servers
        self.job_id = job_id
        self.answers: list[tuple[float, int, dict | str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        clients = [server.client() for server in self.servers]
        while not self.stop.is_set():
            for client in clients:
                for path in ("/api/jobs?limit=5", f"/api/jobs/{self.job_id}"):
                    try:
                        response = client.get(path, timeout=10)
                        body = response.json() if response.headers.get("content-type") == "application/json" else ""
                        self.answers.append((time.monotonic(), response.status_code, body or response.text))
                    except httpx.HTTPError as exc:
                        self.answers.append((time.monotonic(), -1, repr(exc)))
            time.sleep(0.02)
        for client in clients:
            client.close()


def test_cut_connections_and_an_outage_under_load_lose_no_job(postgres_url, tmp_path):
    database = postgres_url.rsplit("/", 1)[1]
    engine = observer(postgres_url)
    lease = 6.0  # longer than the outage below, so that leases survive it and the heartbeats renew them after
    env = {"ORFEAS_LEASE_SECONDS": str(lease), "ORFEAS_MAX_ATTEMPTS": "5", "ORFEAS_TEST_BATCH_DELAY": "1.0"}
    with (
        cluster(postgres_url, tmp_path, apis=2, workers=2, **env) as running,
        psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin,
    ):
        with running.apis[0].client() as a, running.apis[1].client() as b:
            ids = submit(a, 10, "a") + submit(b, 10, "b") + submit(a, 10, "c") + submit(b, 10, "d")
        poller = Poller(running.apis, ids[0])
        poller.start()
        wait_for_claims_by(engine, workers=2)  # under load: both workers are in the middle of batches

        # 1. connections cut again and again while jobs run
        cut: Counter = Counter()
        end = time.monotonic() + 4.0
        while time.monotonic() < end:
            cut.update(name.rsplit("-", 1)[0] for name in terminate_backends(admin, database))
            time.sleep(0.15)

        # 2. a full outage: the database refuses every new connection for 3 s
        admin.execute(f"ALTER DATABASE {database} WITH ALLOW_CONNECTIONS false")
        try:
            outage_start = time.monotonic()
            while time.monotonic() < outage_start + 3.0:
                cut.update(name.rsplit("-", 1)[0] for name in terminate_backends(admin, database))
                time.sleep(0.1)
        finally:
            admin.execute(f"ALTER DATABASE {database} WITH ALLOW_CONNECTIONS true")
        outage_end = time.monotonic()

        statuses = wait_until_finished(engine, ids, timeout=120)
        time.sleep(max(0.5, outage_end + 4.5 - time.monotonic()))  # the poller sees the API after it recovered
        poller.stop.set()
        poller.join(timeout=30)
        codes = running.stop()
        logs = running.worker_logs()

    assert cut["orfeas-api"] > 0 and cut["orfeas-worker"] > 0, cut
    answers = poller.answers
    assert all(code in (200, 503) for _, code, _ in answers), Counter(code for _, code, _ in answers)
    unavailable = [body for _, code, body in answers if code == 503]
    assert unavailable, "no request saw the outage"
    assert all(body["error"]["type"] == "ServiceUnavailable" for body in unavailable)
    during = [code for at, code, _ in answers if outage_start + 0.5 < at < outage_end - 0.2]
    assert during and set(during) == {503}  # no stale answers while the database is gone
    after = [code for at, code, _ in answers if at > outage_end + 3.0]
    assert after and set(after) == {200}  # and the API recovers by itself

    # the workers saw the outage and backed off (the loop, or a completion kept for one lease time); that they
    # resumed is the 40 successes below
    assert "database unavailable" in logs and "retrying in" in logs
    assert Counter(statuses.values()) == {"succeeded": 40}
    succeeded = events_by_status(engine, "succeeded")
    assert {job_id: succeeded[job_id] for job_id in ids} == dict.fromkeys(ids, 1)
    assert codes == [0, 0]
    engine.dispose()


def test_a_socket_on_one_api_follows_a_job_submitted_on_the_other(postgres_url, tmp_path):
    with cluster(postgres_url, tmp_path, apis=2, workers=1, ORFEAS_TEST_BATCH_DELAY="1.5") as running:
        first, second = running.apis
        with first.client() as a:
            (job_id,) = submit(a, 1, "one")
        events = []
        with connect(f"ws://127.0.0.1:{second.port}/api/jobs/{job_id}/events", open_timeout=10) as socket:
            while True:
                event = json.loads(socket.recv(timeout=60))
                events.append(event)
                if event["type"] != "progress":
                    break
    assert events[-1]["type"] == "end" and events[-1]["status"] == "succeeded"
    stages = [event["stage"] for event in events if event["type"] == "progress" and event["status"] == "running"]
    assert "shape_generation" in stages  # seen on B while the worker was in the generator's 1.5 s call


def test_progress_sockets_hear_postgres_notifications(postgres_url, tmp_path):
    # the poll interval is longer than the test: the canceled event can only come through LISTEN/NOTIFY
    env = {"ORFEAS_DATABASE_URL": postgres_url, "ORFEAS_POLL_SECONDS": "60"}
    server = Server(tmp_path / "data", env=env, args=("--no-worker",)).start()
    try:
        with server.client() as client:
            job = client.post("/api/jobs", files={"image": ("a.png", IMAGE, "image/png")}).json()["jobs"][0]
            url = f"ws://127.0.0.1:{server.port}/api/jobs/{job['id']}/events"
            with connect(url) as first, connect(url) as second:
                assert json.loads(first.recv())["status"] == "queued"
                assert json.loads(second.recv())["status"] == "queued"
                time.sleep(1.0)  # the listener connects
                started = time.monotonic()
                assert client.delete(f"/api/jobs/{job['id']}").status_code == 200
                assert json.loads(first.recv(timeout=10))["status"] == "canceled"
                assert json.loads(second.recv(timeout=10))["status"] == "canceled"
                assert time.monotonic() - started < 10
    finally:
        server.stop()


def test_an_idle_worker_hears_a_job_queued_on_an_api_at_once(postgres_url, tmp_path):
    # the poll interval is longer than the test: only the queue notification can start the job this soon
    with cluster(
        postgres_url, tmp_path, apis=1, workers=1, ORFEAS_POLL_SECONDS="60", ORFEAS_TEST_BATCH_DELAY="0"
    ) as running:
        time.sleep(1.0)  # the worker has made its first queue check and waits
        with running.apis[0].client() as client:
            (job_id,) = submit(client, 1, "one")
            deadline = time.monotonic() + 30
            while (job := client.get(f"/api/jobs/{job_id}").json())["status"] not in ("succeeded", "failed"):
                assert time.monotonic() < deadline, job["status"]
                time.sleep(0.1)
    assert job["status"] == "succeeded"
    waited = datetime.fromisoformat(job["started_at"]) - datetime.fromisoformat(job["created_at"])
    assert waited.total_seconds() < 2.0
