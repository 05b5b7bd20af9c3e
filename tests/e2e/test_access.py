"""Access control against a real `orfeas serve` with authentication on: who may see, download and cancel what.

Users and keys are made with the real `orfeas users` / `orfeas keys` / `orfeas agents` commands. Every case here
was open on the code before access control existed (anonymous listing, cross-user downloads, CSRF, foreign Host).
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import websockets.sync.client as ws_client
from websockets.exceptions import InvalidStatus

from orfeas.signing import signed_headers
from tests.e2e.server import ORFEAS, Server, free_port, wait_for
from tests.synthetic import EXAMPLES

MASTER_KEY = "22" * 32
CHAIR = (EXAMPLES / "chair.png").read_bytes()
CHAIR_B64 = base64.b64encode(CHAIR).decode()
PASSWORDS = {"alice": "alice-password", "bob": "bob-password", "carol": "carol-password"}


def orfeas(server: Server, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [ORFEAS, *args, "--data-dir", str(server.data_dir)],
        input=stdin,
        capture_output=True,
        text=True,
        env=server.env,
        timeout=60,
    )


class World:
    """The running server and everyone on it: alice (admin), bob and carol (users), two agents."""

    def __init__(self, server: Server) -> None:
        self.server = server
        for name, password in PASSWORDS.items():
            admin = ["--admin"] if name == "alice" else []
            made = orfeas(server, "users", "create", name, *admin, "--password-stdin", stdin=password + "\n")
            assert made.returncode == 0, made.stderr
        self.keys = {name: self.new_key(name) for name in ("bob", "carol", "alice")}
        self.agents = {name: self.new_agent(name, ops) for name, ops in (("robot", "generate,batch,status,download"),)}
        self.agents["narrow"] = self.new_agent("narrow", "generate,status")

    def new_key(self, user: str) -> str:
        made = orfeas(self.server, "keys", "create", "--user", user)
        assert made.returncode == 0, made.stderr
        return re.search(r"key: (\S+)", made.stdout).group(1)

    def new_agent(self, name: str, ops: str) -> tuple[str, str]:
        made = orfeas(self.server, "agents", "create", name, "--ops", ops)
        assert made.returncode == 0, made.stderr
        return re.search(r"key_id: (\S+)", made.stdout).group(1), re.search(r"secret: (\S+)", made.stdout).group(1)

    def client(self, user: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[user]}"} if user else {}
        return httpx.Client(base_url=self.server.url, headers=headers, timeout=30)

    @contextmanager
    def session(self, user: str) -> Iterator[httpx.Client]:
        """A client signed in through /api/auth/login, as the studio page is (cookies, CSRF header)."""
        with httpx.Client(base_url=self.server.url, timeout=30) as client:
            response = client.post("/api/auth/login", json={"name": user, "password": PASSWORDS[user]})
            assert response.status_code == 200, response.text
            client.headers["X-CSRF-Token"] = response.json()["csrf_token"]
            yield client

    def submit(self, client: httpx.Client, **headers: str) -> httpx.Response:
        files = {"image": ("chair.png", CHAIR, "image/png")}
        return client.post("/api/jobs", files=files, data={"faces": "2000"}, headers=headers)

    def agent_submit(self, agent: str, **headers: str) -> dict:
        key_id, secret = self.agents[agent]
        body = json.dumps({"image": CHAIR_B64, "filename": "chair.png", "options": {"faces": 2000}}).encode()
        path = "/api/agent/generate-3d"
        signed = signed_headers(key_id, secret, "POST", path, "", body)
        response = httpx.post(
            self.server.url + path, content=body, headers={**signed, "Content-Type": "application/json", **headers}
        )
        assert response.status_code == 202, response.text
        return response.json()["job"]

    def total(self) -> int:
        """Every job on the server, as the admin counts them."""
        with self.client("alice") as admin:
            return admin.get("/api/jobs").json()["total"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    env = {"ORFEAS_AUTH": "on", "ORFEAS_AGENT_MASTER_KEY": MASTER_KEY}
    metrics_port = free_port()
    server = Server(tmp_path_factory.mktemp("access"), env=env, args=("--metrics-port", str(metrics_port))).start()
    server.metrics_port = metrics_port
    world = World(server)
    with world.client("bob") as bob:
        world.bob_job = world.submit(bob).json()["jobs"][0]["id"]
        wait_for(world.client("alice"), [world.bob_job])
    world.agent_job = world.agent_submit("robot")["id"]
    wait_for(world.client("alice"), [world.agent_job])
    yield world
    server.stop()


def job_routes(job_id: str) -> list[tuple[str, str]]:
    return [
        ("GET", f"/api/jobs/{job_id}"),
        ("GET", f"/api/jobs/{job_id}/result.glb"),
        ("GET", f"/api/jobs/{job_id}/preview.png"),
        ("DELETE", f"/api/jobs/{job_id}"),
    ]


ANONYMOUS_ROUTES = [
    ("GET", "/api/jobs"),
    ("GET", "/api/generators"),
    ("GET", "/api/performance/summary"),
    ("GET", "/api/performance/recommendations"),
    ("GET", "/api/gpu/status"),
    ("GET", "/metrics"),
    ("GET", "/api/auth/me"),
]


def test_without_credentials_every_route_answers_401_and_the_studio_asks_to_sign_in(world):
    with world.client() as anonymous:
        for method, path in ANONYMOUS_ROUTES + job_routes(world.bob_job) + job_routes(world.agent_job):
            response = anonymous.request(method, path)
            assert response.status_code == 401, (method, path, response.text)
            assert response.json()["error"]["type"] == "Unauthenticated"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        before = world.total()
        assert world.submit(anonymous).status_code == 401
        assert anonymous.post("/api/cutout", files={"image": ("c.png", CHAIR, "image/png")}).status_code == 401
        assert world.total() == before
        page = anonymous.get("/", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/login"
        login = anonymous.get("/login")
        assert login.status_code == 200 and 'id="login-form"' in login.text
        assert anonymous.get("/healthz").status_code == 200 and anonymous.get("/readyz").status_code == 200
    with pytest.raises(InvalidStatus) as refused:
        ws_client.connect(f"ws://127.0.0.1:{world.server.port}/api/jobs/{world.bob_job}/events", open_timeout=10)
    assert refused.value.response.status_code == 403
    # Prometheus reads the same metrics on the separate port `--metrics-port` opens for the monitoring network.
    scraped = httpx.get(f"http://127.0.0.1:{world.server.metrics_port}/metrics", timeout=10)
    assert scraped.status_code == 200 and "orfeas_jobs" in scraped.text


def test_a_user_sees_downloads_and_cancels_only_their_own_jobs(world):
    with world.client("carol") as carol:
        for method, path in job_routes(world.bob_job) + job_routes(world.agent_job):
            response = carol.request(method, path)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["error"]["type"] == "JobNotFound"
        listing = carol.get("/api/jobs").json()
        assert world.bob_job not in {job["id"] for job in listing["jobs"]}
        assert world.agent_job not in {job["id"] for job in listing["jobs"]}
    with world.client("bob") as bob:
        mine = bob.get(f"/api/jobs/{world.bob_job}")
        assert mine.status_code == 200 and mine.json()["status"] == "succeeded"
        assert "owner" not in mine.json() and "idempotency_key" not in mine.json()
        assert bob.get(f"/api/jobs/{world.bob_job}/result.glb").content[:4] == b"glTF"
        assert bob.get(f"/api/jobs/{world.bob_job}/preview.png").content[:4] == b"\x89PNG"
        assert {job["id"] for job in bob.get("/api/jobs").json()["jobs"]} == {world.bob_job}
        assert bob.get(f"/api/jobs/{world.agent_job}").status_code == 404


def test_websockets_follow_only_your_own_jobs(world):
    url = f"ws://127.0.0.1:{world.server.port}/api/jobs/{{}}/events"
    carol = {"Authorization": f"Bearer {world.keys['carol']}"}
    with ws_client.connect(url.format(world.bob_job), additional_headers=carol, open_timeout=10) as socket:
        event = json.loads(socket.recv(timeout=10))
    assert event["type"] == "error" and event["error"]["type"] == "JobNotFound"
    bob = {"Authorization": f"Bearer {world.keys['bob']}"}
    with ws_client.connect(url.format(world.bob_job), additional_headers=bob, open_timeout=10) as socket:
        events = [json.loads(socket.recv(timeout=10)) for _ in range(2)]
    assert events[-1]["type"] == "end" and events[-1]["status"] == "succeeded"


def test_the_admin_sees_every_job_with_its_owner(world):
    with world.client("alice") as alice:
        jobs = {job["id"]: job for job in alice.get("/api/jobs?limit=200").json()["jobs"]}
        assert jobs[world.bob_job]["owner"] == "user:bob"
        assert jobs[world.agent_job]["owner"].startswith("agent:")
        assert alice.get(f"/api/jobs/{world.agent_job}/result.glb").status_code == 200
        assert alice.get("/api/auth/me").json() == {
            "name": "alice",
            "kind": "user",
            "admin": True,
            "auth": "on",
            "csrf_token": None,
        }


def test_agents_see_only_their_own_jobs_on_the_agent_api(world):
    key_id, secret = world.agents["narrow"]
    for job_id in (world.bob_job, world.agent_job):
        path = f"/api/agent/status/{job_id}"
        response = httpx.get(world.server.url + path, headers=signed_headers(key_id, secret, "GET", path))
        assert response.status_code == 404, response.text
    key_id, secret = world.agents["robot"]
    path = f"/api/agent/status/{world.agent_job}"
    own = httpx.get(world.server.url + path, headers=signed_headers(key_id, secret, "GET", path)).json()
    assert own["status"] == "succeeded" and "owner" not in own and "idempotency_key" not in own


def test_bearer_keys_that_are_wrong_malformed_revoked_or_of_a_disabled_user_are_refused(world):
    spare = world.new_key("carol")
    headers = [
        {"Authorization": "Bearer ok_0000000000000000_" + "A" * 43},
        {"Authorization": f"Bearer {spare[:-1]}{'B' if spare[-1] != 'B' else 'C'}"},
        {"Authorization": "Bearer nonsense"},
        {"Authorization": f"Basic {spare}"},
        {"Authorization": "Bearer " + "x" * 10_000},
    ]
    for header in headers:
        response = httpx.get(world.server.url + "/api/jobs", headers=header)
        assert response.status_code == 401, (header, response.text)
    assert httpx.get(world.server.url + "/api/jobs", headers={"Authorization": f"Bearer {spare}"}).status_code == 200
    revoked = orfeas(world.server, "keys", "revoke", spare.split("_")[1])
    assert revoked.returncode == 0, revoked.stderr
    assert httpx.get(world.server.url + "/api/jobs", headers={"Authorization": f"Bearer {spare}"}).status_code == 401

    made = orfeas(world.server, "users", "create", "dave", "--password-stdin", stdin="dave-password\n")
    assert made.returncode == 0, made.stderr
    dave = world.new_key("dave")
    assert httpx.get(world.server.url + "/api/jobs", headers={"Authorization": f"Bearer {dave}"}).status_code == 200
    assert orfeas(world.server, "users", "disable", "dave").returncode == 0
    assert httpx.get(world.server.url + "/api/jobs", headers={"Authorization": f"Bearer {dave}"}).status_code == 401


def test_sign_in_session_cookie_and_sign_out(world):
    with httpx.Client(base_url=world.server.url) as client:
        wrong = client.post("/api/auth/login", json={"name": "bob", "password": "not-his-password"})
        assert wrong.status_code == 401 and "orfeas_session" not in client.cookies
        unknown = client.post("/api/auth/login", json={"name": "nobody", "password": "whatever-it-is"})
        assert unknown.status_code == 401 and unknown.json() == wrong.json()
    with world.session("bob") as bob:
        me = bob.get("/api/auth/me").json()
        assert (me["name"], me["admin"], me["auth"]) == ("bob", False, "on") and me["csrf_token"]
        assert {job["id"] for job in bob.get("/api/jobs").json()["jobs"]} >= {world.bob_job}
        token = bob.cookies["orfeas_session"]
        assert bob.post("/api/auth/logout").status_code == 204
    stale = httpx.get(world.server.url + "/api/jobs", cookies={"orfeas_session": token})
    assert stale.status_code == 401


def test_login_sets_httponly_lax_session_and_readable_strict_csrf_cookies(world):
    response = httpx.post(world.server.url + "/api/auth/login", json={"name": "carol", "password": PASSWORDS["carol"]})
    cookies = {header.split("=", 1)[0]: header.lower() for header in response.headers.get_list("set-cookie")}
    assert "httponly" in cookies["orfeas_session"] and "samesite=lax" in cookies["orfeas_session"]
    assert "httponly" not in cookies["orfeas_csrf"] and "samesite=strict" in cookies["orfeas_csrf"]
    assert "secure" not in cookies["orfeas_session"]  # plain HTTP here; over TLS the cookies are Secure


def test_state_changing_requests_of_a_session_need_its_csrf_token(world):
    with world.session("carol") as carol:
        token = carol.headers.pop("X-CSRF-Token")
        before = world.total()
        missing = world.submit(carol)
        assert missing.status_code == 403 and missing.json()["error"]["type"] == "Forbidden"
        assert world.submit(carol, **{"X-CSRF-Token": "x" * 43}).status_code == 403
        assert world.total() == before
        ok = world.submit(carol, **{"X-CSRF-Token": token})
        assert ok.status_code == 202
        job_id = ok.json()["jobs"][0]["id"]
        assert carol.delete(f"/api/jobs/{job_id}").status_code == 403
        assert carol.delete(f"/api/jobs/{job_id}", headers={"X-CSRF-Token": token}).status_code == 200
        assert carol.post("/api/auth/logout").status_code == 403  # logging someone out is a state change too


def test_requests_from_other_sites_and_for_other_host_names_are_refused(world):
    before = world.total()
    with world.session("carol") as carol:
        for origin in ("http://evil.example", "null", f"http://127.0.0.1:{world.server.port + 1}"):
            response = world.submit(carol, Origin=origin)
            assert response.status_code == 403, origin
            assert response.json()["error"]["type"] == "ForeignOrigin"
        assert world.submit(carol, **{"Sec-Fetch-Site": "cross-site"}).status_code == 403
        assert world.total() == before
        assert world.submit(carol, Origin=world.server.url).status_code == 202  # the studio's own page
        rebinding = carol.get("/api/jobs", headers={"Host": "attacker.example"})
        assert rebinding.status_code == 400 and rebinding.json()["error"]["type"] == "InvalidHost"
        assert carol.get("/api/jobs", headers={"Host": f"localhost:{world.server.port}"}).status_code == 200
    url = f"ws://127.0.0.1:{world.server.port}/api/jobs/{world.bob_job}/events"
    bob = {"Authorization": f"Bearer {world.keys['bob']}", "Origin": "http://evil.example"}
    with pytest.raises(InvalidStatus) as refused:
        ws_client.connect(url, additional_headers=bob, open_timeout=10)
    assert refused.value.response.status_code == 403


def test_generate_3d_takes_one_image_whatever_the_content_type(world):
    key_id, secret = world.agents["narrow"]  # generate and status only, no batch
    boundary = uuid.uuid4().hex
    parts = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{i}.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + CHAIR
        + b"\r\n"
        for i in range(3)
    )
    body = parts + f"--{boundary}--\r\n".encode()
    path = "/api/agent/generate-3d"
    headers = signed_headers(key_id, secret, "POST", path, "", body)
    headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    before = world.total()
    response = httpx.post(world.server.url + path, content=body, headers=headers)
    assert response.status_code == 422, response.text
    assert "takes one" in response.json()["error"]["message"]
    batch = "/api/agent/batch"
    refused = httpx.post(
        world.server.url + batch, content=body, headers={**signed_headers(key_id, secret, "POST", batch, "", body),
                                                           "Content-Type": headers["Content-Type"]},
    )  # fmt: skip
    assert refused.status_code == 403
    assert world.total() == before


def test_idempotency_keys_belong_to_their_owner(world):
    key = f"shared-{uuid.uuid4().hex}"
    with world.client("bob") as bob, world.client("carol") as carol:
        first = world.submit(bob, **{"Idempotency-Key": key}).json()["jobs"][0]["id"]
        other = world.submit(carol, **{"Idempotency-Key": key})
        assert other.status_code == 202 and other.json()["jobs"][0]["id"] != first
        again = world.submit(bob, **{"Idempotency-Key": key})
        assert again.status_code == 200 and again.json()["jobs"][0]["id"] == first
    with world.client("alice") as alice:
        jobs = {job["id"]: job for job in alice.get("/api/jobs?limit=200").json()["jobs"]}
        assert jobs[first]["idempotency_key"] == key  # the admin sees it; nobody else does


def test_the_signature_covers_the_path_as_sent(world):
    """An encoded path is signed as it travels (`%30` stays `%30`); signing its decoded form fails."""
    key_id, secret = world.agents["robot"]
    sent = "/api/agent/status/" + "%30" * 32  # the zeros id, percent-encoded on the wire
    decoded = "/api/agent/status/" + "0" * 32
    as_sent = httpx.get(world.server.url + sent, headers=signed_headers(key_id, secret, "GET", sent))
    assert as_sent.status_code == 404 and "RateLimit-Remaining" in as_sent.headers  # authenticated, no such job
    as_decoded = httpx.get(world.server.url + sent, headers=signed_headers(key_id, secret, "GET", decoded))
    assert as_decoded.status_code == 401 and as_decoded.json()["error"]["message"] == "bad signature"


def test_sign_ins_are_throttled_per_name(world):
    made = orfeas(world.server, "users", "create", "erin", "--password-stdin", stdin="erin-password\n")
    assert made.returncode == 0, made.stderr
    with httpx.Client(base_url=world.server.url) as client:
        codes = [client.post("/api/auth/login", json={"name": "erin", "password": f"guess-{i}"}).status_code
                 for i in range(11)]  # fmt: skip
        assert codes == [401] * 10 + [429]
        right = client.post("/api/auth/login", json={"name": "erin", "password": "erin-password"})
        assert right.status_code == 429 and int(right.headers["Retry-After"]) > 0


def test_auth_off_is_refused_on_a_network_address(tmp_path):
    env = {**Server(tmp_path).env, "ORFEAS_AUTH": "off"}
    started = time.monotonic()
    refused = subprocess.run(
        [ORFEAS, "serve", "--host", "0.0.0.0", "--port", "1", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "ORFEAS_AUTH=off is allowed only on a loopback address" in refused.stderr
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert time.monotonic() - started < 60


def test_agents_create_on_a_shared_database_refuses_to_invent_a_master_key(tmp_path, postgres_url):
    env = {**Server(tmp_path).env}
    env.pop("ORFEAS_AGENT_MASTER_KEY", None)
    command = [ORFEAS, "agents", "create", "bot", "--database", postgres_url, "--data-dir", str(tmp_path)]
    refused = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode == 2 and "ORFEAS_AGENT_MASTER_KEY" in refused.stderr
    assert not (tmp_path / "agent-master.key").exists()
    made = subprocess.run(
        command, capture_output=True, text=True, env={**env, "ORFEAS_AGENT_MASTER_KEY": "33" * 32}, timeout=60
    )
    assert made.returncode == 0, made.stderr
    other_key = subprocess.run(
        [ORFEAS, "agents", "create", "bot2", "--database", postgres_url, "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**env, "ORFEAS_AGENT_MASTER_KEY": "44" * 32},
        timeout=60,
    )
    assert other_key.returncode == 2 and "not the one the database was set up with" in other_key.stderr
