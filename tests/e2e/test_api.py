"""The HTTP API against a real `orfeas serve` subprocess on 127.0.0.1 with a real SQLite database."""

from __future__ import annotations

import io
import json
import time
import zipfile

import pytest
import trimesh
from PIL import Image
from websockets.sync.client import connect

from tests.e2e.server import Server, wait_for
from tests.synthetic import EXAMPLES

CHAIR = (EXAMPLES / "chair.png").read_bytes()
TEAPOT = (EXAMPLES / "teapot.png").read_bytes()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = Server(
        tmp_path_factory.mktemp("api"),
        env={"ORFEAS_MAX_UPLOAD_BYTES": str(3 * 2**20), "ORFEAS_MAX_IMAGE_PIXELS": "2000000"},
    ).start()
    yield running
    running.stop()


@pytest.fixture
def client(server):
    with server.client() as http:
        yield http


def submit(client, *images: bytes, **form) -> dict:
    files = [("image", (f"img{i}.png", data, "image/png")) for i, data in enumerate(images)]
    return client.post("/api/jobs", files=files, data={k: str(v) for k, v in form.items()})


def test_submit_follow_and_download_every_format(client):
    response = submit(client, CHAIR, formats="glb,obj,stl,ply", faces=5000)
    assert response.status_code == 202, response.text
    (job,) = response.json()["jobs"]
    assert job["status"] == "queued"
    (done,) = wait_for(client, [job["id"]])
    assert done["status"] == "succeeded", done["error"]
    assert done["progress"] == 100
    assert set(done["profile"]["stages"]) >= {"image_loading", "shape_generation", "export"}
    assert set(done["result_urls"]) == {"glb", "obj", "stl", "ply"}

    glb = client.get(done["result_urls"]["glb"])
    assert glb.status_code == 200 and glb.headers["content-type"] == "model/gltf-binary"
    mesh = trimesh.load(io.BytesIO(glb.content), file_type="glb", force="mesh")
    assert 0 < len(mesh.faces) <= 5000
    bundle = zipfile.ZipFile(io.BytesIO(client.get(done["result_urls"]["obj"]).content))
    assert {"model.obj", "model.mtl", "model_texture.png"} <= set(bundle.namelist())
    for fmt in ("stl", "ply"):
        assert len(client.get(done["result_urls"][fmt]).content) > 1000
    preview = client.get(done["preview_url"])
    assert Image.open(io.BytesIO(preview.content)).size == (256, 256)


def test_several_images_make_several_jobs(client):
    response = submit(client, CHAIR, TEAPOT, faces=2000)
    jobs = response.json()["jobs"]
    assert len(jobs) == 2 and jobs[0]["id"] != jobs[1]["id"]
    assert [job["input_name"] for job in jobs] == ["img0.png", "img1.png"]
    assert all(job["status"] == "succeeded" for job in wait_for(client, [j["id"] for j in jobs]))


def test_idempotency_key_returns_the_same_jobs(client):
    headers = {"Idempotency-Key": "retry-me-123"}
    files = [("image", ("a.png", CHAIR, "image/png"))]
    first = client.post("/api/jobs", files=files, headers=headers, data={"faces": "2000"})
    second = client.post("/api/jobs", files=files, headers=headers, data={"faces": "2000"})
    assert first.status_code == 202 and second.status_code == 200
    assert [j["id"] for j in first.json()["jobs"]] == [j["id"] for j in second.json()["jobs"]]
    total_before = client.get("/api/jobs").json()["total"]
    client.post("/api/jobs", files=files, headers=headers, data={"faces": "2000"})
    assert client.get("/api/jobs").json()["total"] == total_before


def test_websocket_streams_progress_until_the_end(server, client):
    job = submit(client, TEAPOT, backend="slow", faces=2000).json()["jobs"][0]
    events = []
    with connect(f"ws://127.0.0.1:{server.port}/api/jobs/{job['id']}/events") as socket:
        while True:
            event = json.loads(socket.recv(timeout=30))
            events.append(event)
            if event["type"] == "end":
                break
    progress = [e["progress"] for e in events if e["type"] == "progress"]
    assert progress == sorted(progress)
    assert events[-1]["status"] == "succeeded" and events[-1]["progress"] == 100
    stages = {e["stage"] for e in events if e["type"] == "progress"}
    assert "shape_generation" in stages

    # a client that connects late first gets the current (final) state
    with connect(f"ws://127.0.0.1:{server.port}/api/jobs/{job['id']}/events") as socket:
        first = json.loads(socket.recv(timeout=10))
        assert first["status"] == "succeeded" and first["progress"] == 100


def test_websocket_for_an_unknown_job_says_so(server):
    with connect(f"ws://127.0.0.1:{server.port}/api/jobs/{'0' * 32}/events") as socket:
        message = json.loads(socket.recv(timeout=10))
    assert message["type"] == "error" and message["error"]["type"] == "JobNotFound"


def test_list_is_paginated_newest_first(client):
    page = client.get("/api/jobs", params={"limit": 2}).json()
    assert len(page["jobs"]) == 2 and page["total"] >= 2
    created = [job["created_at"] for job in page["jobs"]]
    assert created == sorted(created, reverse=True)
    second = client.get("/api/jobs", params={"limit": 2, "offset": 2}).json()
    assert not {j["id"] for j in page["jobs"]} & {j["id"] for j in second["jobs"]}


def test_cancel_a_queued_job(client):
    # keep the worker busy so the second job is still queued when it is canceled
    busy = submit(client, CHAIR, backend="slow", faces=2000).json()["jobs"][0]
    queued = submit(client, TEAPOT, backend="slow", faces=2000).json()["jobs"][0]
    canceled = client.delete(f"/api/jobs/{queued['id']}")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    wait_for(client, [busy["id"]])
    time.sleep(0.5)
    assert client.get(f"/api/jobs/{queued['id']}").json()["status"] == "canceled"
    assert client.get(f"/api/jobs/{queued['id']}/result.glb").status_code == 404


def bomb_png() -> bytes:
    """A valid PNG whose header claims 3000 x 3000 pixels (over the server's 2 MP cap in this module)."""
    buffer = io.BytesIO()
    Image.new("L", (3000, 3000)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("files", "form", "status", "words"),
    [
        ([("image", ("notes.png", b"just some text", "image/png"))], {}, 400, "notes.png"),
        ([("image", ("cut.png", CHAIR[: len(CHAIR) // 2], "image/png"))], {}, 400, "cut.png"),
        ([("image", ("bomb.png", bomb_png(), "image/png"))], {}, 400, "too large"),
        ([], {}, 400, "no image"),
        ([("image", ("a.png", CHAIR, "image/png"))], {"backend": "nope"}, 422, "nope"),
        ([("image", ("a.png", CHAIR, "image/png"))], {"formats": "fbx"}, 422, "fbx"),
        ([("image", ("a.png", CHAIR, "image/png"))], {"faces": "-5"}, 422, "faces"),
        ([("image", ("a.png", CHAIR, "image/png"))], {"resolution": "lots"}, 422, "resolution"),
        ([("image", ("a.png", CHAIR, "image/png"))], {"generator_options": "{bad"}, 422, "JSON"),
        ([("image", ("a.png", CHAIR, "image/png"))], {"generator_options": '{"depth": -1}'}, 422, "depth"),
    ],
)
def test_bad_requests_get_a_json_error_and_store_nothing(client, files, form, status, words):
    before = client.get("/api/jobs").json()["total"]
    response = client.post("/api/jobs", files=files, data=form)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]["message"]
    assert client.get("/api/jobs").json()["total"] == before
    assert client.get("/healthz").status_code == 200


def test_oversize_body_is_refused_with_413(client):
    big = b"\0" * (4 * 2**20)
    response = client.post("/api/jobs", files=[("image", ("big.png", big, "image/png"))])
    assert response.status_code == 413
    assert "limit" in response.json()["error"]["message"]
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    "job_id", ["0" * 32, "nope", "..%2F..%2Fetc%2Fpasswd", "%2e%2e", "a" * 200, "ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ"]
)
def test_unknown_or_malformed_ids_are_404(client, job_id):
    for path in (f"/api/jobs/{job_id}", f"/api/jobs/{job_id}/result.glb", f"/api/jobs/{job_id}/preview.png"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["type"] in ("JobNotFound", "HTTPError")
    assert client.delete(f"/api/jobs/{job_id}").status_code in (404, 405)


def test_monitoring_endpoints(client):
    wait_for(client, [submit(client, CHAIR, faces=2000).json()["jobs"][0]["id"]])
    summary = client.get("/api/performance/summary").json()
    assert summary["total_pipelines"] >= 1
    assert summary["avg_duration"] > 0 and summary["p95_duration"] >= summary["p50_duration"]
    assert "shape_generation" in summary["stage_breakdown"]
    assert isinstance(summary["bottlenecks"], list)
    advice = client.get("/api/performance/recommendations").json()["recommendations"]
    assert advice and all("message" in item for item in advice)
    status = client.get("/api/gpu/status").json()
    assert status["gpu"] is False and "no GPU" in status["note"]
    assert status["memory"]["total"] > 0 and status["batch_size"] >= 1 and status["batch_reason"]
    metrics = client.get("/metrics").text
    assert 'orfeas_jobs{status="succeeded"}' in metrics
    assert "orfeas_stage_duration_seconds_bucket" in metrics and "orfeas_queue_depth" in metrics
    assert client.get("/readyz").json()["status"] == "ready"
    assert client.get("/docs").status_code == 200


def test_generators_lists_what_this_machine_can_run(client):
    listing = client.get("/api/generators").json()
    names = {g["name"]: g for g in listing["generators"]}
    assert names["inflate"]["default_resolution"] == 192 and listing["default"] == "inflate"


def test_cutout_preview_is_the_background_removed_image(client):
    response = client.post("/api/cutout", files=[("image", ("teapot.png", TEAPOT, "image/png"))])
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    cut = Image.open(io.BytesIO(response.content))
    assert cut.mode == "RGBA" and cut.size == (256, 256)
    alpha = cut.getchannel("A")
    assert alpha.getpixel((0, 0)) == 0 and alpha.getpixel((128, 128)) == 255
    bad = client.post("/api/cutout", files=[("image", ("x.png", b"nope", "image/png"))])
    assert bad.status_code == 400
