"""The studio page in real headless Chromium against a real `orfeas serve`: upload, generate, view, download,
cancel, survive restarts, monitor, and fit a phone screen.

Every step saves a screenshot under test-artifacts/studio/ (CI keeps that folder). With
ORFEAS_UPDATE_README_SCREENSHOT=1 the studio with a model loaded is also copied to docs/images/studio.png.
"""

from __future__ import annotations

import os
import re
import shutil
import time

import httpx
import pytest
import trimesh

from tests.e2e.browser import (
    README_SCREENSHOT,
    background_fraction,
    canvas_pixels,
    changed_fraction,
    screenshot,
)
from tests.e2e.server import Server, wait_for
from tests.pipeline.test_gltf_validator import VALIDATOR, issues, validate_glb
from tests.synthetic import EXAMPLES

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: run `pip install -e '.[dev]'`"
)
expect = playwright_api.expect

CHAIR = EXAMPLES / "chair.png"
FLAMINGO = EXAMPLES / "flamingo.png"
JOB_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A plain server (the fast `inflate` generator) shared by the tests that do not stop it."""
    server = Server(tmp_path_factory.mktemp("studio") / "data").start()
    yield server
    server.stop()


@pytest.fixture
def own_server(tmp_path):
    """Start a server of the test's own with extra settings; stopped at the end of the test."""
    servers: list[Server] = []

    def start(**env: str) -> Server:
        servers.append(Server(tmp_path / f"data{len(servers)}", env=env).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def open_studio(page, url: str) -> None:
    page.goto(url)
    expect(page.locator("#connection")).to_have_text("connected")


def select_images(page, *paths) -> None:
    """Choose images in the file input and wait until each one's cut-out preview has loaded."""
    page.set_input_files("#file-input", [str(path) for path in paths])
    previews = page.locator("#cutout-previews img.cutout")
    expect(previews).to_have_count(len(paths))
    page.wait_for_function(
        "n => [...document.querySelectorAll('#cutout-previews img.cutout')]"
        ".filter(img => img.complete && img.naturalWidth > 0).length === n",
        arg=len(paths),
    )


def choose_formats(page, *formats: str) -> None:
    for fmt in ("glb", "obj", "stl", "ply"):
        page.locator(f"input[name=format][value={fmt}]").set_checked(fmt in formats)


def generate(page, count: int) -> list[str]:
    """Click Generate and return the ids of the `count` jobs it adds to #jobs."""
    before = set(page.eval_on_selector_all(".job[data-job-id]", "jobs => jobs.map(j => j.dataset.jobId)"))
    page.click("#generate")
    page.wait_for_function("n => document.querySelectorAll('.job[data-job-id]').length >= n", arg=len(before) + count)
    ids = page.eval_on_selector_all(".job[data-job-id]", "jobs => jobs.map(j => j.dataset.jobId)")
    added = [job_id for job_id in ids if job_id not in before]
    assert len(added) == count, added
    return added


def job(page, job_id: str):
    return page.locator(f'.job[data-job-id="{job_id}"]')


def progress(page, job_id: str) -> float:
    return page.eval_on_selector(f'.job[data-job-id="{job_id}"] progress.job-progress', "p => p.value")


def wait_succeeded(page, job_id: str, timeout: float = JOB_TIMEOUT_MS) -> None:
    """Wait for the job's row to say succeeded with its progress bar full."""
    expect(job(page, job_id).locator(".job-status")).to_have_text(
        re.compile(r"^\s*(succeeded|failed|canceled)\s*$"), timeout=timeout
    )
    status = job(page, job_id).locator(".job-status").inner_text().strip()
    assert status == "succeeded", job(page, job_id).locator(".job-error").inner_text()
    page.wait_for_function(
        'id => document.querySelector(`.job[data-job-id="${id}"] progress.job-progress`).value >= 100',
        arg=job_id,
    )
    assert page.eval_on_selector(f'.job[data-job-id="{job_id}"] progress.job-progress', "p => p.max") == 100


def wait_changed(page, before, minimum: float = 0.002, timeout: float = 5.0):
    """Poll the viewer's canvas until at least `minimum` of its pixels differ from `before`; return the pixels."""
    deadline = time.monotonic() + timeout
    while True:
        after = canvas_pixels(page)
        if after.shape == before.shape and changed_fraction(before, after) >= minimum:
            return after
        if time.monotonic() > deadline:
            return after
        page.wait_for_timeout(100)


def face_count(page) -> int:
    text = page.locator("#face-count").inner_text()
    digits = re.sub(r"[,\s\u202f\u2009.]", "", text)
    match = re.search(r"\d+", digits)
    assert match, f"#face-count shows no number: {text!r}"
    return int(match.group())


def test_upload_generate_view_and_download(page, server, tmp_path):
    open_studio(page, server.url)
    screenshot(page, "01-studio")

    select_images(page, CHAIR)
    screenshot(page, "02-cutout-preview")

    choose_formats(page, "glb", "obj")
    [job_id] = generate(page, 1)
    row = job(page, job_id)
    expect(row.locator(".job-name")).to_contain_text("chair")
    wait_succeeded(page, job_id)
    expect(row.locator("a.download")).to_have_count(2)
    formats = row.locator("a.download").evaluate_all("links => links.map(a => a.dataset.format)")
    assert sorted(formats) == ["glb", "obj"]
    screenshot(page, "03-job-succeeded")

    row.locator(".view").click()
    page.wait_for_selector("body[data-model-loaded=true]", state="attached")
    page.wait_for_timeout(300)  # let the first frames after loading settle (camera fit, damping)
    shaded = canvas_pixels(page)
    drawn = 1 - background_fraction(shaded)
    assert 0.01 < drawn < 0.95, f"{drawn:.1%} of the canvas differs from the background"
    faces = face_count(page)
    assert faces > 0
    studio_shot = screenshot(page, "04-model-loaded")
    if os.environ.get("ORFEAS_UPDATE_README_SCREENSHOT") == "1":
        shutil.copyfile(studio_shot, README_SCREENSHOT)

    page.click("#wireframe-toggle")
    wireframe = wait_changed(page, shaded)
    assert changed_fraction(shaded, wireframe) >= 0.002, "toggling wireframe did not change the picture"
    screenshot(page, "05-wireframe")

    with page.expect_download() as download:
        row.locator("a.download[data-format=glb]").click()
    path = tmp_path / "chair.glb"
    download.value.save_as(path)
    assert download.value.suggested_filename == "chair.glb"
    scene = trimesh.load(path, force="scene")
    assert len(scene.geometry) >= 1
    assert sum(len(mesh.faces) for mesh in scene.geometry.values()) == faces
    if shutil.which("node") and (VALIDATOR / "node_modules" / "gltf-validator").is_dir():
        report = validate_glb(path)
        assert report["issues"]["numErrors"] == 0, issues(report)


def test_cancel_a_queued_job(page, own_server):
    server = own_server(ORFEAS_TEST_DELAY="3", ORFEAS_MAX_BATCH="1")
    open_studio(page, server.url)
    page.select_option("#opt-backend", "slow")
    select_images(page, CHAIR, FLAMINGO)
    ids = generate(page, 2)

    queued = page.locator(".job", has=page.locator(".job-status", has_text=re.compile(r"^\s*queued\s*$")))
    running = page.locator(".job", has=page.locator(".job-status", has_text=re.compile(r"^\s*running\s*$")))
    expect(running).to_have_count(1)
    expect(queued).to_have_count(1)
    waiting = queued.get_attribute("data-job-id")
    [other] = [job_id for job_id in ids if job_id != waiting]
    job(page, waiting).locator(".cancel").click()
    expect(job(page, waiting).locator(".job-status")).to_have_text("canceled")
    screenshot(page, "06-canceled")

    wait_succeeded(page, other)
    expect(job(page, waiting).locator(".job-status")).to_have_text("canceled")
    assert job(page, waiting).locator(".view").count() == 0
    screenshot(page, "07-canceled-other-succeeded")


def test_history_survives_a_restart(page, own_server):
    server = own_server()
    open_studio(page, server.url)
    select_images(page, CHAIR)
    [job_id] = generate(page, 1)
    wait_succeeded(page, job_id)

    server.stop()
    server.start()
    page.reload()
    open_studio(page, server.url)
    item = page.locator(f'#history .history-item[data-job-id="{job_id}"]')
    expect(item).to_have_count(1)
    thumb = item.locator("img.thumb")
    expect(thumb).to_be_visible()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=thumb.element_handle())
    screenshot(page, "08-history-after-restart")


def test_a_job_running_when_the_server_dies_finishes_after_it_restarts(page, own_server):
    env = {"ORFEAS_TEST_DELAY": "3", "ORFEAS_LEASE_SECONDS": "2", "ORFEAS_HEARTBEAT_SECONDS": "0.5"}
    server = own_server(**env)
    open_studio(page, server.url)
    page.select_option("#opt-backend", "slow")
    select_images(page, CHAIR)
    [job_id] = generate(page, 1)
    expect(job(page, job_id).locator(".job-status")).to_have_text("running")
    assert progress(page, job_id) < 100

    server.kill()
    expect(page.locator("#connection")).to_have_text(re.compile(r"^\s*reconnecting"))
    screenshot(page, "09-reconnecting")
    server.start()
    expect(page.locator("#connection")).to_have_text("connected", timeout=30_000)
    wait_succeeded(page, job_id)
    screenshot(page, "10-finished-after-restart")
    assert httpx.get(f"{server.url}/api/jobs/{job_id}").json()["attempts"] == 2  # the killed run ran again


def test_monitor_shows_stages_recommendations_and_device(page, server):
    with server.client() as client:
        response = client.post(
            "/api/jobs", files=[("image", ("chair.png", CHAIR.read_bytes(), "image/png"))], data={"faces": "2000"}
        )
        [done] = wait_for(client, [job["id"] for job in response.json()["jobs"]])
        assert done["status"] == "succeeded"
    open_studio(page, server.url)
    page.click("#tab-monitor")
    expect(page.locator("#monitor-view")).to_be_visible()
    expect(page.locator("#studio")).to_be_hidden()
    bars = page.locator("#stage-chart .bar[data-stage]")
    expect(bars.first).to_be_visible()
    stages = bars.evaluate_all("bars => bars.map(b => b.dataset.stage)")
    assert len(stages) >= 2, stages
    expect(page.locator("#recommendations")).not_to_be_empty()
    expect(page.locator("#device")).to_have_text(re.compile(r"\S"))
    expect(page.locator("#queue-depth")).to_have_text(re.compile(r"\d"))
    screenshot(page, "11-monitor")

    page.click("#tab-studio")
    expect(page.locator("#studio")).to_be_visible()
    expect(page.locator("#monitor-view")).to_be_hidden()


def test_fits_a_phone_screen_and_works_from_the_keyboard(page, server):
    page.set_viewport_size({"width": 390, "height": 844})
    open_studio(page, server.url)
    select_images(page, CHAIR)
    for selector in ("#generate", "#viewer"):
        element = page.locator(selector)
        element.scroll_into_view_if_needed()
        expect(element).to_be_visible()
        box = element.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 391, (selector, box)
    width = page.evaluate("document.scrollingElement.scrollWidth")
    assert width <= 390 + 1, f"the page scrolls sideways: {width} px wide"
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, "12-phone")

    page.evaluate("document.activeElement && document.activeElement.blur()")
    for _ in range(60):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement && document.activeElement.id") == "generate":
            break
    else:
        raise AssertionError("Tab never reached #generate")
    screenshot(page, "13-keyboard-focus")
