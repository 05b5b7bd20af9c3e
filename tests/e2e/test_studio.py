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


def failed_responses(page) -> list[str]:
    """URLs the page gets an HTTP error for from now on (favicon.ico included)."""
    failures: list[str] = []

    def note(response) -> None:
        if response.status >= 400:
            failures.append(f"{response.status} {response.url}")

    page.on("response", note)
    return failures


def test_upload_generate_view_and_download(page, server, tmp_path):
    failures = failed_responses(page)
    open_studio(page, server.url)
    screenshot(page, "01-studio")

    select_images(page, CHAIR)
    screenshot(page, "02-cutout-preview")

    choose_formats(page, "glb", "obj")
    [job_id] = generate(page, 1)
    row = job(page, job_id)
    expect(row).to_be_in_viewport()  # the new job is on screen at 1280x900, not below the fold
    expect(row.locator(".job-name")).to_contain_text("chair")
    # the selection is cleared once sent: a second click cannot send the same image again
    expect(page.locator("#cutout-previews .cutout-preview")).to_have_count(0)
    expect(page.locator("#generate")).to_be_disabled()
    wait_succeeded(page, job_id)
    expect(row.locator("a.download")).to_have_count(2)
    formats = row.locator("a.download").evaluate_all("links => links.map(a => a.dataset.format)")
    assert sorted(formats) == ["glb", "obj"]
    # the finished model opens in the viewer by itself
    page.wait_for_selector(f'body[data-model-job="{job_id}"][data-model-loaded=true]', state="attached")
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

    # the viewer takes the keyboard: arrow keys turn the model, + and - zoom
    page.focus("#viewer")
    assert page.evaluate("document.activeElement.id") == "viewer"
    before, scroll = canvas_pixels(page), page.evaluate("window.scrollY")
    page.keyboard.press("ArrowLeft")
    turned = wait_changed(page, before)
    assert changed_fraction(before, turned) >= 0.002, "ArrowLeft did not turn the model"
    page.keyboard.press("+")
    zoomed = wait_changed(page, turned)
    assert background_fraction(zoomed) < background_fraction(turned), "+ did not bring the model closer"
    page.keyboard.press("-")
    page.keyboard.press("-")
    assert background_fraction(wait_changed(page, zoomed)) > background_fraction(zoomed), "- did not zoom out"
    assert page.evaluate("window.scrollY") == scroll, "the keys scrolled the page instead of turning the model"
    screenshot(page, "05b-turned-with-keys")

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
    assert failures == [], failures


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
    # words for people: plurals, stage names without underscores, no command-line flags on a web page
    total = httpx.get(f"{server.url}/api/performance/summary").json()["total_pipelines"]
    noun = "finished job" if total == 1 else "finished jobs"
    expect(page.locator("#pipeline-summary")).to_contain_text(f"{total} {noun}; average")
    labels = page.locator("#stage-chart text").evaluate_all("nodes => nodes.map(n => n.textContent)")
    assert "Shape generation" in labels, labels
    advice = [page.locator(selector).inner_text() for selector in ("#bottlenecks", "#recommendations")]
    words = " ".join([*labels, *advice])
    assert "_" not in words and "--" not in words, words
    expect(page.locator("#device")).to_contain_text("CPU busy")
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
    reached = []
    for _ in range(60):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("document.activeElement && document.activeElement.id"))
        if reached[-1] == "generate":
            break
    else:
        raise AssertionError(f"Tab never reached #generate: {reached}")
    assert "tab-monitor" not in reached, "both tabs are in the Tab order; arrow keys move between them"
    screenshot(page, "13-keyboard-focus")
    for _ in range(60):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement && document.activeElement.id") == "viewer":
            break
    else:
        raise AssertionError("Tab never reached the viewer")

    # the tab list: arrow keys move the selection and the focus, Home and End jump
    page.focus("#tab-studio")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#tab-monitor")).to_be_focused()
    expect(page.locator("#tab-monitor")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#monitor-view")).to_be_visible()
    page.keyboard.press("ArrowRight")  # wraps round
    expect(page.locator("#tab-studio")).to_be_focused()
    expect(page.locator("#studio")).to_be_visible()
    page.keyboard.press("End")
    expect(page.locator("#tab-monitor")).to_have_attribute("aria-selected", "true")
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#tab-studio")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#monitor-view")).to_be_hidden()

    # on the phone, View brings the viewer (below the jobs) on screen with the model in it
    [job_id] = generate(page, 1)
    expect(job(page, job_id)).to_be_in_viewport()
    wait_succeeded(page, job_id)
    page.wait_for_selector(f'body[data-model-job="{job_id}"][data-model-loaded=true]', state="attached")
    job(page, job_id).locator(".view").click()
    expect(page.locator("#viewer")).to_be_in_viewport(ratio=0.9)
    page.wait_for_selector("body[data-model-loaded=true]", state="attached")
    screenshot(page, "14-phone-view")


def test_refused_files_are_listed_with_their_reason_and_the_good_ones_still_go(page, server, tmp_path):
    from PIL import Image

    gif, bmp, text = tmp_path / "flamingo.gif", tmp_path / "chair.bmp", tmp_path / "notes.png"
    Image.open(FLAMINGO).convert("RGB").save(gif)
    Image.open(CHAIR).convert("RGB").save(bmp)
    text.write_text("these are notes, not an image")
    open_studio(page, server.url)
    expect(page.locator("#drop-hint")).to_contain_text("GIF")
    page.set_input_files("#file-input", [str(CHAIR), str(bmp), str(gif), str(text)])

    previews = page.locator("#cutout-previews .cutout-preview")
    expect(previews).to_have_count(4)
    preview = {name: page.locator(f'.cutout-preview[data-name="{name}"]') for name in ("chair.png", "chair.bmp")}
    preview |= {name: page.locator(f'.cutout-preview[data-name="{name}"]') for name in ("flamingo.gif", "notes.png")}
    expect(preview["chair.bmp"]).to_have_attribute("data-status", "rejected")
    expect(preview["chair.bmp"].locator(".cutout-error")).to_contain_text("BMP is not supported")
    expect(preview["notes.png"]).to_have_attribute("data-status", "rejected")  # refused by the server's check
    expect(preview["notes.png"].locator(".cutout-error")).to_have_text(re.compile(r"Not sent: \S"))
    for name in ("chair.png", "flamingo.gif"):
        expect(preview[name]).to_have_attribute("data-status", "ready")
    expect(page.locator("#generate")).to_have_text("Generate 2 models")
    screenshot(page, "15-refused-files")

    preview["chair.bmp"].get_by_role("button", name="Remove chair.bmp").click()
    expect(previews).to_have_count(3)
    ids = generate(page, 2)
    names = sorted(job(page, job_id).locator(".job-name").inner_text() for job_id in ids)
    assert names == ["chair.png", "flamingo.gif"]
    expect(page.locator("#form-error")).to_be_hidden()
    # what was sent leaves the selection; the refused file stays with its reason until removed
    expect(previews).to_have_count(1)
    expect(preview["notes.png"]).to_have_attribute("data-status", "rejected")
    expect(page.locator("#generate")).to_be_disabled()
    for job_id in ids:
        wait_succeeded(page, job_id)


def test_the_form_takes_its_limits_and_generators_from_the_server(page, own_server, tmp_path):
    from orfeas.pipeline.options import GenerateOptions

    server = own_server(ORFEAS_HUNYUAN_MODEL_PATH=str(tmp_path / "no-weights-here"))
    listing = httpx.get(f"{server.url}/api/generators").json()
    open_studio(page, server.url)
    faces, resolution = page.locator("#opt-faces"), page.locator("#opt-resolution")
    expect(faces).to_have_attribute("min", str(listing["limits"]["faces"]["minimum"]))
    assert listing["limits"]["faces"]["minimum"] == GenerateOptions.model_fields["faces"].metadata[0].ge
    expect(faces).to_have_attribute("max", str(listing["limits"]["faces"]["maximum"]))
    expect(resolution).to_have_attribute("min", str(listing["limits"]["resolution"]["minimum"]))
    expect(resolution).to_have_attribute("max", str(listing["limits"]["resolution"]["maximum"]))
    expect(faces).to_have_value(str(listing["limits"]["faces"]["default"]))

    select_images(page, CHAIR)
    faces.fill("500")
    page.click("#generate")
    expect(page.locator("#form-error")).to_have_text("Faces: at least 1,000")
    expect(faces).to_have_attribute("aria-invalid", "true")
    assert page.locator(".job").count() == 0  # refused before sending
    faces.fill("2000")
    expect(page.locator("#form-error")).to_be_hidden()  # a stale error goes as soon as the field changes
    resolution.fill("16")
    page.click("#generate")
    expect(page.locator("#form-error")).to_have_text("Resolution: at least 32")
    resolution.fill("2048")
    page.click("#generate")
    expect(page.locator("#form-error")).to_have_text("Resolution: at most 1,024")
    assert page.locator(".job").count() == 0
    screenshot(page, "16-form-limits")

    hunyuan = [g for g in listing["generators"] if g["name"] == "hunyuan3d"]
    if not hunyuan:
        pytest.skip("the hunyuan extra is not installed: hunyuan3d is not offered at all")
    assert hunyuan[0]["available"] is False and "no-weights-here" in hunyuan[0]["reason"]
    option = page.locator('#opt-backend option[value="hunyuan3d"]')
    expect(option).to_be_disabled()
    expect(option).to_contain_text("weights missing")
    hint = page.locator("#backend-hint")
    expect(hint.locator("summary")).to_contain_text("hunyuan3d is not ready on this server: weights missing")
    hint.locator("summary").click()
    expect(hint.locator("li")).to_contain_text("no-weights-here")
    screenshot(page, "16b-generator-without-weights")


def blank_image(path):
    """One colour edge to edge: nothing to cut out, so its job fails."""
    from PIL import Image

    Image.new("RGB", (96, 96), (230, 20, 20)).save(path)
    return path


def test_history_follows_every_client_pages_past_30_and_says_why_jobs_ended(page, own_server, tmp_path):
    server = own_server(ORFEAS_TEST_DELAY="2", ORFEAS_MAX_BATCH="1")
    chair = ("image", ("chair.png", CHAIR.read_bytes(), "image/png"))
    with server.client() as client:
        # a job sent by another client, still running when the page is reloaded
        [first] = client.post("/api/jobs", files=[chair], data={"backend": "slow", "faces": "2000"}).json()["jobs"]
        open_studio(page, server.url)
        tile = page.locator(f'#history .history-item[data-job-id="{first["id"]}"]')
        expect(tile).to_have_attribute("data-status", re.compile("queued|running"))
        page.reload()
        open_studio(page, server.url)
        expect(tile).to_have_attribute("data-status", "succeeded", timeout=JOB_TIMEOUT_MS)
        expect(tile.locator("img.thumb")).to_be_visible()

        # a running job canceled mid-generation, 32 queued ones canceled, and one that fails
        [running] = client.post("/api/jobs", files=[chair], data={"backend": "slow"}).json()["jobs"]
        wait_for_job(client, running["id"], status="running", stage="shape_generation")
        queued = []
        for _ in range(2):
            sent = client.post("/api/jobs", files=[chair] * 16, data={"backend": "slow"}).json()["jobs"]
            queued += [job["id"] for job in sent]
        client.delete(f"/api/jobs/{running['id']}")
        for job_id in queued[:-1]:
            client.delete(f"/api/jobs/{job_id}")
        blank = ("image", ("blank.png", blank_image(tmp_path / "blank.png").read_bytes(), "image/png"))
        [failing] = client.post("/api/jobs", files=[blank]).json()["jobs"]
        client.delete(f"/api/jobs/{queued[-1]}")  # so that the failing job runs next
        [failing] = wait_for(client, [failing["id"]])
        assert failing["status"] == "failed" and failing["error"]

    items = page.locator("#history .history-item")
    expect(items).to_have_count(30, timeout=15_000)
    failed = page.locator(f'#history .history-item[data-job-id="{failing["id"]}"]')
    expect(failed).to_have_attribute("data-status", "failed")
    expect(failed.locator(".history-reason")).to_have_text(failing["error"])
    expect(failed.locator(".thumb.placeholder")).to_be_visible()
    expect(page.locator(f'#history .history-item[data-job-id="{queued[-2]}"] .history-reason')).to_have_text(
        "canceled while queued"
    )
    screenshot(page, "17-history-reasons")

    more = page.locator("#history-more")
    expect(more).to_have_text("Show 5 more (5 older jobs)")
    more.click()
    expect(items).to_have_count(35)
    expect(more).to_be_hidden()
    expect(tile).to_be_visible()  # the oldest job, on the second page
    canceled = page.locator(f'#history .history-item[data-job-id="{running["id"]}"]')
    expect(canceled).to_have_attribute("data-status", "canceled")
    expect(canceled.locator(".history-reason")).to_have_text("canceled during shape generation")
    assert "%" not in canceled.inner_text() and "shape_generation" not in canceled.inner_text()
    screenshot(page, "18-history-second-page")


def wait_for_job(client, job_id: str, timeout: float = 30.0, **fields) -> dict:
    """Poll the job until each of `fields` has the given value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = client.get(f"/api/jobs/{job_id}").json()
        if all(current[key] == value for key, value in fields.items()):
            return current
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never had {fields}: {current}")
