"""Signing in to the studio in real headless Chromium against a server with authentication on."""

from __future__ import annotations

import subprocess

import httpx
import pytest

from tests.e2e.browser import screenshot
from tests.e2e.server import ORFEAS, Server
from tests.e2e.test_studio import CHAIR, generate, open_studio, select_images, wait_succeeded

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
expect = playwright_api.expect


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("login") / "data", env={"ORFEAS_AUTH": "on"}).start()
    for name, admin in (("mia", []), ("noa", [])):
        made = subprocess.run(
            [ORFEAS, "users", "create", name, *admin, "--password-stdin", "--data-dir", str(server.data_dir)],
            input=f"{name}-password\n",
            capture_output=True,
            text=True,
            env=server.env,
            timeout=60,
        )
        assert made.returncode == 0, made.stderr
    yield server
    server.stop()


def sign_in(page, server: Server, name: str, password: str) -> None:
    page.goto(server.url + "/")
    expect(page).to_have_url(server.url + "/login")
    page.fill("#login-name", name)
    page.fill("#login-password", password)
    page.click("#login-submit")


def test_sign_in_generate_and_sign_out(page, server):
    sign_in(page, server, "mia", "wrong-password")
    expect(page.locator("#login-error")).to_have_text("wrong user name or password")
    screenshot(page, "login-refused")

    page.fill("#login-password", "mia-password")
    page.click("#login-submit")
    expect(page).to_have_url(server.url + "/")
    open_studio(page, server.url + "/")
    expect(page.locator("#user-name")).to_have_text("mia")
    cookies = {cookie["name"]: cookie for cookie in page.context.cookies()}
    assert cookies["orfeas_session"]["httpOnly"] and cookies["orfeas_session"]["sameSite"] == "Lax"

    select_images(page, CHAIR)  # the cut-out is a POST: it carries the CSRF token
    (job_id,) = generate(page, 1)
    wait_succeeded(page, job_id)
    expect(page.locator(f'#history [data-job-id="{job_id}"]')).to_have_count(1)
    screenshot(page, "login-signed-in")

    page.click("#logout")
    expect(page).to_have_url(server.url + "/login")
    assert "orfeas_session" not in {cookie["name"] for cookie in page.context.cookies()}
    session = cookies["orfeas_session"]["value"]
    assert httpx.get(server.url + "/api/jobs", cookies={"orfeas_session": session}).status_code == 401


def test_another_users_history_stays_empty(page, server):
    with page.expect_response(lambda response: "/api/jobs?limit=" in response.url) as history:
        sign_in(page, server, "noa", "noa-password")
    assert history.value.json()["total"] == 0  # mia's job is not noa's
    expect(page.locator("#user-name")).to_have_text("noa")
    expect(page.locator("#history li")).to_have_count(0)
