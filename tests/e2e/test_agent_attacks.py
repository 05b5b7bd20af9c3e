"""The agent API under attack: each refused request gets the right status, creates no job and spends no quota.

A real `orfeas serve` subprocess; agents are registered with the real `orfeas agents` command.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
import uuid

import httpx
import pytest

from orfeas.signing import signed_headers
from tests.e2e.server import ORFEAS, Server, wait_for
from tests.synthetic import EXAMPLES

MASTER_KEY = "11" * 32
CHAIR_B64 = base64.b64encode((EXAMPLES / "chair.png").read_bytes()).decode()
GENERATE = "/api/agent/generate-3d"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = {"ORFEAS_AGENT_MASTER_KEY": MASTER_KEY, "ORFEAS_MAX_UPLOAD_BYTES": str(2 * 2**20)}
    running = Server(tmp_path_factory.mktemp("agents"), env=env).start()
    yield running
    running.stop()


def register(server: Server, name: str, ops: str = "generate,batch,status,download", rate: int = 100) -> tuple:
    """`orfeas agents create` as an operator runs it; returns (key_id, secret)."""
    proc = subprocess.run(
        [ORFEAS, "agents", "create", name, "--ops", ops, "--rate", str(rate), "--data-dir", str(server.data_dir)],
        capture_output=True,
        text=True,
        env=server.env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    key_id = re.search(r"key_id: (\S+)", proc.stdout).group(1)
    secret = re.search(r"secret: (\S+)", proc.stdout).group(1)
    return key_id, secret


def operator(server: Server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [ORFEAS, "agents", *args, "--data-dir", str(server.data_dir)],
        capture_output=True,
        text=True,
        env=server.env,
        timeout=60,
    )


def signed(key_id, secret, method, path, body=b"", query="", **changes) -> dict:
    headers = signed_headers(key_id, secret, method, path, query, body)
    headers.update(changes)
    return headers


def generate_body(**options) -> bytes:
    return json.dumps({"image": CHAIR_B64, "filename": "chair.png", "options": {"faces": 2000, **options}}).encode()


def job_count(client: httpx.Client) -> int:
    return client.get("/api/jobs").json()["total"]


def remaining(client, key_id, secret) -> int:
    """Quota left, read from a harmless signed request (which itself uses one)."""
    path = f"/api/agent/status/{'0' * 32}"
    response = client.get(path, headers=signed(key_id, secret, "GET", path))
    assert response.status_code == 404
    return int(response.headers["RateLimit-Remaining"])


@pytest.fixture
def agent(server):
    return register(server, f"agent-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def client(server):
    with server.client() as http:
        yield http


def test_a_signed_request_is_accepted_and_the_job_is_the_agents(server, client):
    key_id, secret = register(server, "happy-path")
    body = generate_body(formats=["glb", "stl"])
    response = client.post(GENERATE, content=body, headers=signed(key_id, secret, "POST", GENERATE, body))
    assert response.status_code == 202, response.text
    assert int(response.headers["RateLimit-Limit"]) == 100
    assert int(response.headers["RateLimit-Remaining"]) == 99
    job = response.json()["job"]
    wait_for(client, [job["id"]])
    path = f"/api/agent/status/{job['id']}"
    status = client.get(path, headers=signed(key_id, secret, "GET", path)).json()
    assert status["status"] == "succeeded"
    assert set(status["result_urls"]) == {"glb", "stl"}
    url = status["result_urls"]["glb"]
    download = client.get(url, headers=signed(key_id, secret, "GET", url))
    assert download.status_code == 200 and download.content[:4] == b"glTF"
    audit = operator(server, "audit", "happy-path", "--json")
    outcomes = [json.loads(line)["outcome"] for line in audit.stdout.splitlines()]
    assert 202 in outcomes and 200 in outcomes


ATTACKS = {
    "bad signature": lambda k, s, body: (GENERATE, body, signed(k, "not-the-secret", "POST", GENERATE, body)),
    "body tampered after signing": lambda k, s, body: (
        GENERATE,
        body.replace(b'"faces": 2000', b'"faces": 9000'),
        signed(k, s, "POST", GENERATE, body),
    ),
    "path tampered": lambda k, s, body: ("/api/agent/batch", body, signed(k, s, "POST", GENERATE, body)),
    "query tampered": lambda k, s, body: (GENERATE + "?priority=high", body, signed(k, s, "POST", GENERATE, body)),
    "stale timestamp": lambda k, s, body: (
        GENERATE,
        body,
        signed_headers(k, s, "POST", GENERATE, "", body, now=time.time() - 301),
    ),
    "future timestamp": lambda k, s, body: (
        GENERATE,
        body,
        signed_headers(k, s, "POST", GENERATE, "", body, now=time.time() + 301),
    ),
    "unknown key": lambda k, s, body: (GENERATE, body, signed("ak_nobody", s, "POST", GENERATE, body)),
    "missing headers": lambda k, s, body: (GENERATE, body, {}),
    "non-digit timestamp": lambda k, s, body: (
        GENERATE,
        body,
        signed(k, s, "POST", GENERATE, body, **{"X-Orfeas-Timestamp": "yesterday"}),
    ),
    "short nonce": lambda k, s, body: (
        GENERATE,
        body,
        signed(k, s, "POST", GENERATE, body, **{"X-Orfeas-Nonce": "abc"}),
    ),
    "non-hex signature": lambda k, s, body: (
        GENERATE,
        body,
        signed(k, s, "POST", GENERATE, body, **{"X-Orfeas-Signature": "zz" * 32}),
    ),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_forged_or_malformed_requests_get_401_and_change_nothing(client, agent, attack):
    key_id, secret = agent
    before_jobs = job_count(client)
    before_quota = remaining(client, key_id, secret)
    path, body, headers = ATTACKS[attack](key_id, secret, generate_body())
    response = client.post(path, content=body, headers=headers)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["type"] == "AuthenticationFailed"
    assert job_count(client) == before_jobs
    assert remaining(client, key_id, secret) == before_quota - 1  # only the probe itself counted


def test_a_replayed_request_is_refused_and_creates_one_job_only(client, agent):
    key_id, secret = agent
    body = generate_body()
    headers = signed(key_id, secret, "POST", GENERATE, body)
    before = job_count(client)
    assert client.post(GENERATE, content=body, headers=headers).status_code == 202
    replay = client.post(GENERATE, content=body, headers=headers)
    assert replay.status_code == 401 and "nonce" in replay.json()["error"]["message"]
    assert job_count(client) == before + 1


def test_revoked_and_rotated_away_credentials_are_refused(server, client):
    key_id, secret = register(server, "to-rotate")
    assert operator(server, "rotate", "to-rotate").returncode == 0
    body = generate_body()
    response = client.post(GENERATE, content=body, headers=signed(key_id, secret, "POST", GENERATE, body))
    assert response.status_code == 401

    key_id, secret = register(server, "to-revoke")
    assert operator(server, "revoke", "to-revoke").returncode == 0
    response = client.post(GENERATE, content=body, headers=signed(key_id, secret, "POST", GENERATE, body))
    assert response.status_code == 401 and "revoked" in response.json()["error"]["message"]
    listing = operator(server, "list")
    assert "to-revoke" in listing.stdout and "revoked" in listing.stdout
    assert secret not in listing.stdout


def test_an_operation_the_agent_lacks_is_403_and_spends_no_quota(server, client):
    key_id, secret = register(server, "status-only", ops="status")
    before_quota = remaining(client, key_id, secret)
    body = generate_body()
    before = job_count(client)
    response = client.post(GENERATE, content=body, headers=signed(key_id, secret, "POST", GENERATE, body))
    assert response.status_code == 403 and "generate" in response.json()["error"]["message"]
    assert job_count(client) == before
    assert remaining(client, key_id, secret) == before_quota - 1


def test_another_agents_job_is_404(server, client):
    owner = register(server, "owner-agent")
    other = register(server, "nosy-agent")
    body = generate_body()
    job = client.post(GENERATE, content=body, headers=signed(*owner, "POST", GENERATE, body)).json()["job"]
    path = f"/api/agent/status/{job['id']}"
    assert client.get(path, headers=signed(*other, "GET", path)).status_code == 404
    assert client.get(path, headers=signed(*owner, "GET", path)).status_code == 200
    url = f"/api/agent/jobs/{job['id']}/result.glb"
    assert client.get(url, headers=signed(*other, "GET", url)).status_code == 404


def test_the_101st_request_in_a_minute_is_429_with_retry_after(client, agent):
    key_id, secret = agent
    path = f"/api/agent/status/{'0' * 32}"
    statuses = [client.get(path, headers=signed(key_id, secret, "GET", path)).status_code for _ in range(100)]
    assert statuses == [404] * 100
    refused = client.get(path, headers=signed(key_id, secret, "GET", path))
    assert refused.status_code == 429
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["RateLimit-Remaining"] == "0" and refused.headers["RateLimit-Limit"] == "100"
    body = generate_body()
    before = job_count(client)
    assert (
        client.post(GENERATE, content=body, headers=signed(key_id, secret, "POST", GENERATE, body)).status_code == 429
    )
    assert job_count(client) == before


def test_an_oversize_body_is_413(client, agent):
    key_id, secret = agent
    body = json.dumps({"image": "A" * (3 * 2**20), "filename": "big.png"}).encode()
    before = job_count(client)
    response = client.post(GENERATE, content=body, headers=signed(key_id, secret, "POST", GENERATE, body))
    assert response.status_code == 413
    assert job_count(client) == before


def test_batch_submits_several_jobs_through_one_request(client, agent):
    key_id, secret = agent
    body = json.dumps(
        {"images": [{"image": CHAIR_B64, "filename": f"c{i}.png"} for i in range(3)], "options": {"faces": 2000}}
    ).encode()
    response = client.post(
        "/api/agent/batch", content=body, headers=signed(key_id, secret, "POST", "/api/agent/batch", body)
    )
    assert response.status_code == 202, response.text
    jobs = response.json()["jobs"]
    assert [job["input_name"] for job in jobs] == ["c0.png", "c1.png", "c2.png"]
    assert all(job["status"] == "succeeded" for job in wait_for(client, [job["id"] for job in jobs]))


def test_multipart_submission_and_its_bad_options(client, agent):
    key_id, secret = agent
    chair = (EXAMPLES / "chair.png").read_bytes()
    for options, status in (('{"faces": 2000}', 202), ("{not json", 422), ("[1, 2]", 422)):
        request = client.build_request(
            "POST", GENERATE, files=[("image", ("chair.png", chair, "image/png"))], data={"options": options}
        )
        body = request.read()
        request.headers.update(signed(key_id, secret, "POST", GENERATE, body))
        response = client.send(request)
        assert response.status_code == status, response.text
        if status == 422:
            assert "options" in response.json()["error"]["message"]
