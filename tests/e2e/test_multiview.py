"""Multi-view jobs end to end on a tiny random Hunyuan3D-2mv model in the users' layout: the public API, the agent
API through the SDK, the CLI; and every mismatch refused with a JSON 4xx and no job created."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from orfeas.client import AgentClient
from tests.e2e.server import ORFEAS, Server, wait_for
from tests.pipeline.test_hunyuan_variants import UNAVAILABLE
from tests.synthetic import EXAMPLES

pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")
MV = {"model": "hunyuan3d-dit-v2-mv", "steps": 2}
CHAIR = (EXAMPLES / "chair.png").read_bytes()
TEAPOT = (EXAMPLES / "teapot.png").read_bytes()
FAST = {"backend": "hunyuan3d", "resolution": "64", "faces": "2000", "generator_options": json.dumps(MV)}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from orfeas.pipeline.generators.hunyuan_random import save_random_variant

    models = tmp_path_factory.mktemp("hy3dgen")
    save_random_variant(models, "hunyuan3d-dit-v2-mv", seed=3)
    env = {
        "HY3DGEN_MODELS": str(models),
        "HF_HUB_CACHE": str(tmp_path_factory.mktemp("empty-hub")),
        "HF_HUB_OFFLINE": "1",
        "ORFEAS_DEVICE": "cpu",
        "ORFEAS_HUNYUAN_DTYPE": "float32",
        "ORFEAS_HUNYUAN_DECODER": "dense",
        "ORFEAS_AGENT_MASTER_KEY": "66" * 32,
    }
    running = Server(tmp_path_factory.mktemp("multiview"), env=env).start()
    yield running
    running.stop()


def total(server: Server) -> int:
    with server.client() as client:
        return client.get("/api/jobs").json()["total"]


def test_generators_list_the_mv_model_as_usable(server):
    with server.client() as client:
        listing = {g["name"]: g for g in client.get("/api/generators").json()["generators"]}
    variants = {v["model"]: v for v in listing["hunyuan3d"]["variants"]}
    assert variants["hunyuan3d-dit-v2-mv"]["usable"] and variants["hunyuan3d-dit-v2-mv"]["multiview"]
    assert not variants["hunyuan3d-dit-v2-0"]["usable"] and variants["hunyuan3d-dit-v2-0"]["missing"]


def test_a_multi_view_job_through_the_public_api(server):
    files = {"front": ("front.png", CHAIR, "image/png"), "back": ("back.png", TEAPOT, "image/png")}
    with server.client() as client:
        response = client.post("/api/jobs", files=files, data=FAST)
        assert response.status_code == 202, response.text
        (job,) = response.json()["jobs"]
        (final,) = wait_for(client, [job["id"]], timeout=300)
        assert final["status"] == "succeeded", final["error"]
        assert client.get(f"/api/jobs/{job['id']}/result.glb").content[:4] == b"glTF"


def test_a_multi_view_job_through_the_agent_sdk(server, tmp_path):
    made = subprocess.run(
        [ORFEAS, "agents", "create", "mv-agent", "--data-dir", str(server.data_dir)],
        capture_output=True,
        text=True,
        env=server.env,
    )
    key_id = re.search(r"key_id: (\S+)", made.stdout).group(1)
    secret = re.search(r"secret: (\S+)", made.stdout).group(1)
    (tmp_path / "f.png").write_bytes(CHAIR)
    (tmp_path / "l.png").write_bytes(TEAPOT)
    with AgentClient(server.url, key_id, secret) as client:
        job = client.generate(
            views={"front": tmp_path / "f.png", "left": tmp_path / "l.png"},
            backend="hunyuan3d",
            resolution=64,
            faces=2000,
            generator_options=MV,
        )
        done = client.wait(job["id"], timeout=300)
    assert done["status"] == "succeeded"


@pytest.mark.parametrize(
    ("files", "form", "status", "message"),
    [
        ({"front": CHAIR, "back": TEAPOT}, {"backend": "inflate"}, 422, "not views"),
        ({"image": CHAIR}, FAST, 422, "view"),
        ({"front": CHAIR, "top": TEAPOT}, FAST, 422, "top"),
        ({"back": CHAIR}, FAST, 422, "front"),
        ({"front": CHAIR, "back": b"not an image"}, FAST, 400, "back view"),
        ({"front": CHAIR, "image": TEAPOT}, FAST, 422, "either"),
        ({"front": CHAIR}, {**FAST, "generator_options": json.dumps({"model": "hunyuan3d-dit-v2-0"})}, 422, ""),
    ],
    ids=["views to inflate", "image to mv", "unknown view", "no front", "view not an image", "both", "no weights"],
)
def test_mismatches_are_refused_and_create_no_job(server, files, form, status, message):
    before = total(server)
    with server.client() as client:
        upload = {name: (f"{name}.png", data, "image/png") for name, data in files.items()}
        response = client.post("/api/jobs", files=upload, data=form)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]
    assert total(server) == before


def test_the_cli_makes_one_model_from_views(server, tmp_path):
    (tmp_path / "front.png").write_bytes(CHAIR)
    (tmp_path / "back.png").write_bytes(TEAPOT)
    done = subprocess.run(
        [ORFEAS, "generate", "--view", f"front={tmp_path / 'front.png'}", "--view", f"back={tmp_path / 'back.png'}",
         "--backend", "hunyuan3d", "--resolution", "64", "--faces", "2000", "-O", "model=hunyuan3d-dit-v2-mv",
         "-O", "steps=2", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env=server.env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "front.glb").exists()
    bad = subprocess.run(
        [ORFEAS, "generate", "--view", "side=x.png"], capture_output=True, text=True, env=server.env, timeout=120
    )
    assert bad.returncode == 2 and "side" in bad.stderr and "Traceback" not in bad.stderr


def test_the_studio_sends_two_images_as_the_views_of_one_object(server, page, tmp_path):
    from playwright.sync_api import expect

    from tests.e2e.test_studio import generate, open_studio, select_images

    (tmp_path / "front.png").write_bytes(CHAIR)
    (tmp_path / "back.png").write_bytes(TEAPOT)
    open_studio(page, server.url)
    page.select_option("#opt-backend", "hunyuan3d")
    expect(page.locator("#model-field")).to_be_visible()
    page.select_option("#opt-model", "hunyuan3d-dit-v2-mv")
    expect(page.locator("#opt-views")).to_be_checked()
    page.fill("#opt-resolution", "64")
    page.fill("#opt-faces", "2000")
    select_images(page, tmp_path / "front.png", tmp_path / "back.png")
    (job_id,) = generate(page, 1)  # two images, one job
    with server.client() as client:
        (final,) = wait_for(client, [job_id], timeout=300)
    assert final["status"] == "succeeded", final["error"]
    assert final["options"]["generator_options"]["model"] == "hunyuan3d-dit-v2-mv"
