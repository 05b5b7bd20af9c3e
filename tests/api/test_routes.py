"""Routes in process with FastAPI's TestClient (the real app, a real SQLite file, no worker): who gets in, what a
response holds, and that the OpenAPI schema documents the responses."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from orfeas.api.app import create_app
from orfeas.config import Settings
from orfeas.service.auth import AccountService
from orfeas.store import create_db_engine
from orfeas.store.db import sqlite_url
from orfeas.store.users import UserStore
from tests.synthetic import EXAMPLES

CHAIR = (EXAMPLES / "chair.png").read_bytes()


@pytest.fixture
def app_and_keys(tmp_path):
    settings = Settings(data_dir=tmp_path, auth="on", agent_master_key="77" * 32)
    app = create_app(settings, run_worker=False)
    accounts = AccountService(UserStore(create_db_engine(sqlite_url(tmp_path))), 1)
    keys = {}
    for name, admin in (("alice", True), ("bob", False)):
        accounts.create_user(name, None, admin)
        keys[name] = accounts.create_key(name, "test")[1]
    return app, keys


def test_every_api_route_wants_credentials(app_and_keys):
    app, _ = app_and_keys
    with TestClient(app, base_url="http://localhost") as client:
        for path in ("/api/jobs", "/api/generators", "/api/performance/summary", "/api/gpu/status", "/metrics"):
            response = client.get(path)
            assert response.status_code == 401 and response.json()["error"]["type"] == "Unauthenticated", path
        assert client.get("/healthz").status_code == 200


def test_a_users_job_view_hides_owner_and_key_an_admins_shows_them(app_and_keys):
    app, keys = app_and_keys
    with TestClient(app, base_url="http://localhost") as client:
        bob = {"Authorization": f"Bearer {keys['bob']}"}
        submitted = client.post(
            "/api/jobs",
            files={"image": ("chair.png", CHAIR, "image/png")},
            headers={**bob, "Idempotency-Key": "k1"},
        )
        assert submitted.status_code == 202
        job_id = submitted.json()["jobs"][0]["id"]
        mine = client.get(f"/api/jobs/{job_id}", headers=bob).json()
        assert "owner" not in mine and "idempotency_key" not in mine
        admin = client.get(f"/api/jobs/{job_id}", headers={"Authorization": f"Bearer {keys['alice']}"}).json()
        assert admin["owner"] == "user:bob" and admin["idempotency_key"] == "k1"
        (listed,) = client.get("/api/jobs", headers=bob).json()["jobs"]
        assert listed == {key: value for key, value in admin.items() if key not in ("owner", "idempotency_key")}
        admin_list = client.get("/api/jobs", headers={"Authorization": f"Bearer {keys['alice']}"}).json()
        assert admin_list["jobs"][0] == admin and (admin_list["total"], admin_list["limit"]) == (1, 20)


def test_the_openapi_schema_documents_the_job_responses(app_and_keys):
    app, _ = app_and_keys
    with TestClient(app, base_url="http://localhost") as client:
        schema = client.get("/openapi.json").json()
    job = schema["paths"]["/api/jobs/{job_id}"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert job["$ref"].endswith("/JobView")
    generators = schema["paths"]["/api/generators"]["get"]["responses"]["200"]["content"]["application/json"]
    assert generators["schema"]["$ref"].endswith("/StudioGenerators")


def test_the_docs_page_sends_the_sessions_csrf_token_with_try_it_out(app_and_keys):
    app, _ = app_and_keys
    with TestClient(app, base_url="http://localhost") as client:
        page = client.get("/docs")
        script = client.get("/static/docs-csrf.js")
    assert page.status_code == 200 and '<script src="/static/docs-csrf.js"></script>' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert script.status_code == 200 and "X-CSRF-Token" in script.text and "orfeas_csrf" in script.text
