"""The OpenAPI schema documents every response: each JSON success names a model with its fields, each file download
its media types, each error the one error body; and the SDK reads the names those models declare."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from orfeas.api.app import create_app
from orfeas.api.schemas import AgentJob, JobView, SubmittedJobs
from orfeas.client import agent as sdk
from orfeas.config import Settings
from orfeas.store.schema import FINISHED_STATUSES, JobStatus

REF = "#/components/schemas/"


@pytest.fixture(scope="module")
def openapi(tmp_path_factory) -> dict[str, Any]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), auth="on", agent_master_key="77" * 32)
    with TestClient(create_app(settings, run_worker=False), base_url="http://localhost") as client:
        return client.get("/openapi.json").json()


def operations(openapi: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{method.upper()} {path}", operation)
        for path, item in openapi["paths"].items()
        for method, operation in item.items()
    ]


def resolve(openapi: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = openapi["components"]["schemas"][schema["$ref"].removeprefix(REF)]
    return schema


def untyped(openapi: dict[str, Any], schema: dict[str, Any], where: str, seen: set[str]) -> list[str]:
    """Places under `schema` that accept anything (an empty schema), following references once each."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix(REF)
        if name in seen:
            return []
        seen.add(name)
        return untyped(openapi, resolve(openapi, schema), name, seen)
    if not schema:
        return [where]
    found = []
    for key, value in schema.get("properties", {}).items():
        found += untyped(openapi, value, f"{where}.{key}", seen)
    for branch in schema.get("anyOf", []) + schema.get("allOf", []):
        found += untyped(openapi, branch, where, seen)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            found += untyped(openapi, schema[key], f"{where}[]", seen)
    return found


def test_every_json_success_names_a_model_with_typed_fields(openapi):
    checked = 0
    for name, operation in operations(openapi):
        successes = {code: response for code, response in operation["responses"].items() if code.startswith("2")}
        assert successes, f"{name} documents no success response"
        for code, response in successes.items():
            content = response.get("content", {})
            if code == "204":
                assert not content, name
                continue
            assert content, f"{name} {code} documents no content"
            for media_type, body in content.items():
                schema = body.get("schema", {})
                if media_type != "application/json":
                    assert schema == {"type": "string", "format": "binary"}, f"{name} {code} {media_type}"
                    continue
                assert "$ref" in schema, f"{name} {code}: {schema} is not a named model"
                model = resolve(openapi, schema)
                assert model.get("type") == "object" and model.get("properties"), f"{name} {code}: no fields"
                assert model.get("additionalProperties") is not True, f"{name} {code}: any extra field"
                assert not untyped(openapi, schema, name, set()), f"{name} {code}: untyped fields"
                checked += 1
    assert checked >= 15  # jobs, agent, monitoring, health, studio and auth routes


def test_every_error_is_documented_as_the_one_error_body(openapi):
    for name, operation in operations(openapi):
        for code in ("4XX", "5XX"):
            schema = operation["responses"][code]["content"]["application/json"]["schema"]
            assert schema["$ref"] == f"{REF}ErrorBody", name
        assert "422" not in operation["responses"], f"{name}: FastAPI's validation error is not what we send"
    error = resolve(openapi, {"$ref": f"{REF}ErrorDetail"})
    assert {"type", "message"} <= set(error["required"])


def test_the_job_status_is_the_stores_enum(openapi):
    status = resolve(openapi, resolve(openapi, {"$ref": f"{REF}JobView"})["properties"]["status"])
    assert status["enum"] == [status.value for status in JobStatus]


def test_the_sdk_reads_the_names_the_server_sends():
    assert {status.value for status in FINISHED_STATUSES} == sdk.FINAL_STATUSES
    assert {"id", "status", "progress", "stage", "error", "result_urls"} <= set(JobView.model_fields)
    assert "job" in AgentJob.model_fields and "jobs" in SubmittedJobs.model_fields
