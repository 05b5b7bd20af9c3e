"""The agent SDK against httpx.MockTransport: what it signs, what it sends, and how it reads the answers."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from orfeas.client import (
    AgentClient,
    ApiError,
    AuthError,
    ForbiddenError,
    JobFailed,
    MissingCredentials,
    NotFoundError,
    RateLimitError,
    ServerError,
    ServerUnreachable,
)
from orfeas.client.agent import retry_after_seconds
from orfeas.signing import KEY_HEADER, NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from tests.synthetic import EXAMPLES

KEY_ID = "agent-key-1"
SECRET = "s3cret-for-tests"


def signature_is_valid(request: httpx.Request) -> bool:
    """Recompute the signature from what arrived: method, path, raw query and body bytes."""
    expected = sign(
        SECRET,
        request.method,
        request.url.path,
        request.url.query.decode(),
        request.headers[TIMESTAMP_HEADER],
        request.headers[NONCE_HEADER],
        request.content,
    )
    return request.headers[KEY_HEADER] == KEY_ID and request.headers[SIGNATURE_HEADER] == expected


def job_view(job_id: str = "j1", status: str = "queued", progress: int = 0, stage: str | None = None, **extra: Any):
    return {"id": job_id, "status": status, "progress": progress, "stage": stage, "error": None, **extra}


class Recorder:
    """A MockTransport handler that checks each request's signature, records it and answers from a script."""

    def __init__(self, *responses: httpx.Response):
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert signature_is_valid(request), f"bad signature on {request.method} {request.url}"
        self.requests.append(request)
        answer = self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]
        # A fresh copy each time: the last scripted answer repeats, and a response can be read only once.
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder(httpx.Response(202, json={"job": job_view()}))


@pytest.fixture
def client(recorder: Recorder) -> Iterator[AgentClient]:
    with AgentClient("http://orfeas.test", KEY_ID, SECRET, transport=httpx.MockTransport(recorder)) as client:
        yield client


def test_generate_signs_and_sends_the_image_bytes_and_options(client: AgentClient, recorder: Recorder) -> None:
    image = EXAMPLES / "chair.png"
    job = client.generate(image, faces=20_000, formats=["glb", "obj"], texture=False)

    assert job["id"] == "j1"
    request = recorder.requests[0]
    assert (request.method, request.url.path) == ("POST", "/api/agent/generate-3d")
    assert request.headers["content-type"] == "application/json"
    body = json.loads(request.content)
    assert base64.b64decode(body["image"]) == image.read_bytes()
    assert body["filename"] == "chair.png"
    assert body["options"] == {"faces": 20_000, "formats": ["glb", "obj"], "texture": False}


def test_the_signature_check_notices_a_changed_body(client: AgentClient, recorder: Recorder) -> None:
    client.generate(b"\x89PNG\r\n\x1a\nrest")
    request = recorder.requests[0]
    tampered = httpx.Request(request.method, request.url, headers=request.headers, content=request.content + b" ")
    assert signature_is_valid(request)
    assert not signature_is_valid(tampered)


def test_a_query_string_is_signed_as_sent(client: AgentClient, recorder: Recorder) -> None:
    recorder.responses = [httpx.Response(200, json=job_view())]
    client._request("GET", "/api/agent/status/j1?b=two words&a=1")
    assert recorder.requests[0].url.query == b"b=two%20words&a=1"


def test_raw_bytes_are_named_by_their_format_unless_named(client: AgentClient, recorder: Recorder) -> None:
    client.generate(b"\xff\xd8\xff\xe0jpeg")
    client.generate(b"\x89PNG\r\n\x1a\nrest", filename="mine.png")
    names = [json.loads(request.content)["filename"] for request in recorder.requests]
    assert names == ["image.jpg", "mine.png"]
    assert "options" not in json.loads(recorder.requests[0].content)


def test_batch_sends_every_image_in_order(client: AgentClient, recorder: Recorder) -> None:
    recorder.responses = [httpx.Response(202, json={"jobs": [job_view("a"), job_view("b")]})]
    images = [EXAMPLES / "teapot.png", EXAMPLES / "robot.png"]
    jobs = client.batch(images, faces=5_000)

    assert [job["id"] for job in jobs] == ["a", "b"]
    body = json.loads(recorder.requests[0].content)
    assert recorder.requests[0].url.path == "/api/agent/batch"
    assert [item["filename"] for item in body["images"]] == ["teapot.png", "robot.png"]
    assert [base64.b64decode(item["image"]) for item in body["images"]] == [p.read_bytes() for p in images]
    assert body["options"] == {"faces": 5_000}


def test_a_missing_image_fails_before_any_request(client: AgentClient, recorder: Recorder, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="image not found"):
        client.generate(tmp_path / "nope.png")
    assert recorder.requests == []


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (400, ApiError),
        (401, AuthError),
        (403, ForbiddenError),
        (404, NotFoundError),
        (413, ApiError),
        (422, ApiError),
        (500, ServerError),
        (503, ServerError),
    ],
)
def test_error_statuses_raise_their_exception(client: AgentClient, recorder: Recorder, code: int, kind: type) -> None:
    payload = {"error": {"type": "SomeError", "message": "what went wrong"}}
    recorder.responses = [httpx.Response(code, json=payload)]
    with pytest.raises(ApiError) as caught:
        client.status("j1")
    exc = caught.value
    assert type(exc) is kind
    assert (exc.status_code, exc.error_type, exc.message, exc.payload) == (
        code,
        "SomeError",
        "what went wrong",
        payload,
    )
    assert "what went wrong" in str(exc)


def test_429_carries_when_to_retry(client: AgentClient, recorder: Recorder) -> None:
    headers = {"Retry-After": "7", "RateLimit-Limit": "60", "RateLimit-Remaining": "0", "RateLimit-Reset": "7"}
    payload = {"error": {"type": "RateLimited", "message": "60 requests per minute"}}
    recorder.responses = [httpx.Response(429, json=payload, headers=headers)]
    with pytest.raises(RateLimitError) as caught:
        client.status("j1")
    exc = caught.value
    assert (exc.retry_after, exc.limit, exc.remaining, exc.reset) == (7.0, 60, 0, 7)
    assert str(exc) == "429 RateLimited: 60 requests per minute; retry in 7 s"


def test_a_429_message_that_says_when_is_not_repeated(client: AgentClient, recorder: Recorder) -> None:
    payload = {"error": {"type": "RateLimited", "message": "limit reached; retry after 7 s"}}
    recorder.responses = [httpx.Response(429, json=payload, headers={"Retry-After": "7"})]
    with pytest.raises(RateLimitError, match=r"^429 RateLimited: limit reached; retry after 7 s$"):
        client.status("j1")


def test_retry_after_may_be_an_http_date() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert retry_after_seconds(later, now=now.timestamp()) == 30.0
    assert retry_after_seconds("soon") is None


def test_an_error_without_a_json_body_still_maps_by_status(client: AgentClient, recorder: Recorder) -> None:
    recorder.responses = [httpx.Response(502, text="<html>Bad Gateway</html>")]
    with pytest.raises(ServerError) as caught:
        client.status("j1")
    assert caught.value.error_type == "HTTPError"
    assert "Bad Gateway" in caught.value.message


def test_a_refused_connection_is_server_unreachable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with (
        AgentClient("http://127.0.0.1:9", KEY_ID, SECRET, transport=httpx.MockTransport(refuse)) as client,
        pytest.raises(ServerUnreachable, match=r"cannot reach the ORFEAS server at http://127\.0\.0\.1:9"),
    ):
        client.status("j1")


def test_wait_reports_each_change_and_returns_the_final_job(client: AgentClient, recorder: Recorder) -> None:
    views = [
        job_view(status="queued"),
        job_view(status="running", progress=10, stage="background"),
        job_view(status="running", progress=10, stage="background"),
        job_view(status="running", progress=60, stage="extract"),
        job_view(status="succeeded", progress=100, stage="done", result_urls={"glb": "/x.glb"}),
    ]
    recorder.responses = [httpx.Response(200, json=view) for view in views]
    seen: list[dict[str, Any]] = []

    job = client.wait("j1", on_progress=seen.append, poll=0)

    assert job["status"] == "succeeded"
    assert [(view["progress"], view["stage"]) for view in seen] == [
        (0, None),
        (10, "background"),
        (60, "extract"),
        (100, "done"),
    ]
    assert len(recorder.requests) == 5
    assert {request.url.path for request in recorder.requests} == {"/api/agent/status/j1"}


@pytest.mark.parametrize("status", ["failed", "canceled"])
def test_wait_raises_job_failed_with_the_job(client: AgentClient, recorder: Recorder, status: str) -> None:
    final = job_view(status=status, progress=40, error="no object found in the image")
    recorder.responses = [httpx.Response(200, json=job_view(status="running")), httpx.Response(200, json=final)]
    with pytest.raises(JobFailed, match="no object found") as caught:
        client.wait("j1", poll=0)
    assert caught.value.job == final


def test_wait_times_out_on_a_job_that_keeps_running(client: AgentClient, recorder: Recorder) -> None:
    recorder.responses = [httpx.Response(200, json=job_view(status="running"))]
    with pytest.raises(TimeoutError, match="still running"):
        client.wait("j1", timeout=0, poll=0)


def test_wait_rides_out_a_rate_limit(client: AgentClient, recorder: Recorder) -> None:
    limited = httpx.Response(
        429, json={"error": {"type": "RateLimited", "message": "slow down"}}, headers={"Retry-After": "0"}
    )
    recorder.responses = [limited, httpx.Response(200, json=job_view(status="succeeded", progress=100))]
    assert client.wait("j1", poll=0)["status"] == "succeeded"


@pytest.mark.parametrize(("fmt", "name"), [("glb", "j1.glb"), ("obj", "j1.obj.zip")])
def test_download_writes_the_bytes(
    client: AgentClient, recorder: Recorder, tmp_path: Path, fmt: str, name: str
) -> None:
    payload = bytes(range(256)) * 1000
    recorder.responses = [httpx.Response(200, content=payload)]

    to_file = client.download("j1", fmt, tmp_path / "model.bin")
    into_folder = client.download("j1", fmt, tmp_path)

    assert to_file == tmp_path / "model.bin"
    assert into_folder == tmp_path / name
    assert to_file.read_bytes() == into_folder.read_bytes() == payload
    assert recorder.requests[0].url.path == f"/api/agent/jobs/j1/result.{fmt}"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.bin", name])


def test_a_refused_download_leaves_no_file(client: AgentClient, recorder: Recorder, tmp_path: Path) -> None:
    recorder.responses = [httpx.Response(404, json={"error": {"type": "JobNotFound", "message": "no result yet"}})]
    with pytest.raises(NotFoundError):
        client.download("j1", "glb", tmp_path / "model.glb")
    assert list(tmp_path.iterdir()) == []


def test_from_env_names_what_is_missing() -> None:
    with pytest.raises(MissingCredentials, match="ORFEAS_AGENT_SECRET"):
        AgentClient.from_env({"ORFEAS_AGENT_KEY": "k"})
    with AgentClient.from_env({"ORFEAS_AGENT_KEY": "k", "ORFEAS_AGENT_SECRET": "s"}) as client:
        assert (client.base_url, client.key_id) == ("http://127.0.0.1:8000", "k")


def test_an_obj_download_named_dot_obj_is_written_as_a_zip(tmp_path):
    from orfeas.client.agent import AgentClient

    def handler(request):
        return httpx.Response(200, content=b"PK\x03\x04zip")

    client = AgentClient("http://server", "ak_x", "s", transport=httpx.MockTransport(handler))
    written = client.download("j1", "obj", tmp_path / "x.obj")
    assert written == tmp_path / "x.obj.zip" and written.read_bytes().startswith(b"PK")
    assert not (tmp_path / "x.obj").exists()
