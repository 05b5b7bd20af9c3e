"""The first hour's API and log behaviour against a real `orfeas serve`: idempotency conflicts, repeats, missing
formats, unknown fields, the log line of a failed job, and no "serving on" line when the port is taken."""

from __future__ import annotations

import base64
import json
import logging
import re
import subprocess

import httpx
import pytest

from orfeas.logs import JsonFormatter, KeyValueFormatter
from orfeas.signing import signed_headers
from tests.e2e.server import ORFEAS, Server, wait_for
from tests.synthetic import EXAMPLES

CHAIR = (EXAMPLES / "chair.png").read_bytes()
TEAPOT = (EXAMPLES / "teapot.png").read_bytes()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = Server(tmp_path_factory.mktemp("first-hour"), env={"ORFEAS_AGENT_MASTER_KEY": "55" * 32}).start()
    yield running
    running.stop()


def submit(client: httpx.Client, image: bytes = CHAIR, key: str | None = None, **form: str) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return client.post("/api/jobs", files={"image": ("chair.png", image, "image/png")}, data=form, headers=headers)


def test_an_idempotency_key_reused_for_another_request_is_422_naming_it(server):
    with server.client() as client:
        first = submit(client, key="same-key", faces="2000")
        assert first.status_code == 202
        assert submit(client, key="same-key", faces="2000").status_code == 200
        other_options = submit(client, key="same-key", faces="3000")
        assert other_options.status_code == 422 and "same-key" in other_options.json()["error"]["message"]
        other_image = submit(client, image=TEAPOT, key="same-key", faces="2000")
        assert other_image.status_code == 422


def test_a_repeat_answers_200_on_both_apis(server):
    made = subprocess.run(
        [ORFEAS, "agents", "create", "repeater", "--data-dir", str(server.data_dir)],
        capture_output=True,
        text=True,
        env=server.env,
    )
    key_id = re.search(r"key_id: (\S+)", made.stdout).group(1)
    secret = re.search(r"secret: (\S+)", made.stdout).group(1)
    body = json.dumps({"image": base64.b64encode(CHAIR).decode(), "options": {"faces": 2000}}).encode()
    statuses = []
    for _ in range(2):
        headers = signed_headers(key_id, secret, "POST", "/api/agent/generate-3d", "", body)
        headers |= {"Content-Type": "application/json", "Idempotency-Key": "agent-repeat"}
        statuses.append(httpx.post(server.url + "/api/agent/generate-3d", content=body, headers=headers).status_code)
    assert statuses == [202, 200]


def test_a_format_the_job_did_not_produce_has_its_own_error_type(server):
    with server.client() as client:
        job = submit(client, faces="2000", formats="glb").json()["jobs"][0]
        wait_for(client, [job["id"]])
        response = client.get(f"/api/jobs/{job['id']}/result.stl")
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "FormatNotAvailable"
        assert "glb" in response.json()["error"]["message"]


def test_unknown_form_fields_are_422(server):
    with server.client() as client:
        response = submit(client, face="2000")  # a typo of faces
        assert response.status_code == 422
        assert "face" in response.json()["error"]["message"]


def test_log_lines_carry_every_extra_field():
    record = logging.makeLogRecord(
        {"name": "orfeas.service.worker", "levelname": "WARNING", "levelno": 30, "msg": "job failed"}
    )
    record.job = "3f2c"
    record.reason = "image is too large"
    text = KeyValueFormatter().format(record)
    assert text.endswith('job failed job=3f2c reason="image is too large"')
    entry = json.loads(JsonFormatter().format(record))
    assert entry["job"] == "3f2c" and entry["reason"] == "image is too large" and entry["message"] == "job failed"


def test_a_taken_port_prints_no_serving_line(server, tmp_path):
    second = subprocess.run(
        [ORFEAS, "serve", "--port", str(server.port), "--data-dir", str(tmp_path / "other")],
        capture_output=True,
        text=True,
        env=server.env,
        timeout=120,
    )
    assert second.returncode == 2
    assert "serving on" not in second.stderr
    assert "could not listen" in second.stderr


def test_canceling_a_running_job_frees_the_worker_within_two_seconds(tmp_path):
    import time

    server = Server(tmp_path / "data", env={"ORFEAS_TEST_BATCH_DELAY": "120"}).start()
    try:
        with server.client() as client:
            files = {"image": ("chair.png", CHAIR, "image/png")}
            long_job = client.post("/api/jobs", files=files, data={"backend": "sleepy"}).json()["jobs"][0]["id"]
            deadline = time.monotonic() + 60
            while client.get(f"/api/jobs/{long_job}").json()["status"] != "running":
                assert time.monotonic() < deadline
                time.sleep(0.05)
            time.sleep(0.5)  # well inside the generator's 120 s
            canceled = time.monotonic()
            assert client.delete(f"/api/jobs/{long_job}").json()["status"] == "canceled"
            next_job = client.post("/api/jobs", files=files, data={"faces": "2000"}).json()["jobs"][0]["id"]
            while client.get(f"/api/jobs/{next_job}").json()["status"] == "queued":
                assert time.monotonic() - canceled < 10, "the worker is still busy with the canceled batch"
                time.sleep(0.05)
            freed = time.monotonic() - canceled
            print(f"\nworker free {freed:.2f} s after the cancel")
            assert freed < 2.0
            wait_for(client, [next_job])
    finally:
        server.stop()


def test_a_failed_jobs_log_line_names_the_job_and_the_reason(tmp_path):
    import io

    from PIL import Image, ImageDraw

    red = Image.new("RGBA", (128, 128), (0, 0, 0, 0))
    ImageDraw.Draw(red).ellipse((20, 20, 108, 108), fill=(230, 20, 20, 255))  # the oom generator's "too big" image
    buffer = io.BytesIO()
    red.save(buffer, "PNG")
    server = Server(tmp_path / "data").start()
    try:
        with server.client() as client:
            files = {"image": ("red.png", buffer.getvalue(), "image/png")}
            job_id = client.post("/api/jobs", files=files, data={"backend": "oom"}).json()["jobs"][0]["id"]
            (final,) = wait_for(client, [job_id])
        assert final["status"] == "failed"
    finally:
        server.stop()
    line = next(line for line in server.log.read_text().splitlines() if "job failed" in line)
    assert f"job={job_id}" in line and "reason=" in line and "out of memory" in line
