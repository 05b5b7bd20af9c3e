"""/docs and /redoc in headless Chromium with every request off this server refused: the API reference must
render from the files the package installs (no CDN, no fonts from the internet)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.browser import screenshot
from tests.e2e.server import Server

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: run `pip install -e '.[dev]'`"
)
expect = playwright_api.expect


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("docs") / "data").start()
    yield server
    server.stop()


@pytest.fixture
def offline_page(page, server):
    """The test's page with every request to another host aborted; yields (page, list of refused URLs)."""
    own = urlsplit(server.url).netloc
    refused: list[str] = []

    def only_this_server(route):
        if urlsplit(route.request.url).netloc == own:
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    page.context.route("**/*", only_this_server)
    yield page, refused


def failed_responses(page) -> list[str]:
    failures: list[str] = []
    page.on("response", lambda response: response.status >= 400 and failures.append(response.url))
    return failures


def test_swagger_ui_lists_the_operations_offline(offline_page, server):
    page, refused = offline_page
    failures = failed_responses(page)
    page.goto(f"{server.url}/docs")
    operations = page.locator(".opblock .opblock-summary-path")
    expect(operations.first).to_be_visible()
    paths = operations.evaluate_all("nodes => nodes.map(n => n.textContent.replace(/\\u200b/g, ''))")
    assert "/api/jobs" in paths and "/api/agent/generate-3d" in paths, paths
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("ORFEAS")
    screenshot(page, "20-docs-offline")
    assert refused == [] and failures == [], (refused, failures)


def test_redoc_renders_the_reference_offline(offline_page, server):
    page, refused = offline_page
    failures = failed_responses(page)
    page.goto(f"{server.url}/redoc")
    expect(page.locator("h1").first).to_contain_text("ORFEAS")
    menu = page.locator("[role=menuitem], .menu-content label")
    expect(menu.first).to_be_visible()
    expect(page.get_by_text(re.compile(r"/api/jobs")).first).to_be_attached()
    screenshot(page, "21-redoc-offline")
    assert refused == [] and failures == [], (refused, failures)


@pytest.mark.parametrize(
    ("asset", "notice", "licence"),
    [
        ("swagger-ui-bundle.js", "swagger-ui.LICENSE", "Apache License"),
        ("redoc.standalone.js", "redoc.LICENSE", "MIT License"),
    ],
)
def test_docs_assets_are_shipped_with_their_licences(server, asset, notice, licence):
    assert httpx.get(f"{server.url}/static/{asset}").status_code == 200
    response = httpx.get(f"{server.url}/static/{notice}")
    assert response.status_code == 200 and licence in response.text


def test_favicon_ico_is_served(server):
    response = httpx.get(f"{server.url}/favicon.ico", follow_redirects=True)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("image/svg+xml")
