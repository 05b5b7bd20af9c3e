"""What the API answers with: response models that list every field a client may see (allow-lists).

A column added to a table is not exposed until a field is added here. Fields marked "admin only" are filled only for
an admin; for anyone else they are left out of the JSON.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi.responses import Response
from pydantic import BaseModel, Field

from orfeas.service.auth import Principal
from orfeas.store.jobs import JobRecord

ADMIN_ONLY = {"owner", "idempotency_key"}


class ResultSummary(BaseModel):
    """What a finished job produced."""

    generator: str | None = None
    vertices: int | None = None
    faces: int | None = None
    watertight: bool | None = None
    batch_size: int | None = None
    formats: list[str] = Field(default_factory=list, description="Formats that can be downloaded.")


class JobView(BaseModel):
    """One job as its owner (or an admin) sees it."""

    id: str
    status: str = Field(description="queued, running, succeeded, failed or canceled")
    progress: int = Field(description="0-100")
    stage: str | None
    error: str | None
    input_name: str = Field(description="The uploaded file's name.")
    options: dict[str, Any] = Field(description="The options the job was submitted with.")
    attempts: int = Field(description="How many times a worker has started it.")
    profile: dict[str, Any] | None = Field(description="Per-stage timings, once finished.")
    result: ResultSummary | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result_urls: dict[str, str]
    preview_url: str | None
    events_url: str | None
    owner: str | None = Field(None, description="Admin only: 'user:<name>' or 'agent:<id>'.")
    idempotency_key: str | None = Field(None, description="Admin only.")


class JobList(BaseModel):
    jobs: list[JobView]
    total: int
    limit: int
    offset: int


class SubmittedJobs(BaseModel):
    jobs: list[JobView]


class AgentJob(BaseModel):
    job: JobView


class Generator(BaseModel):
    name: str
    default_resolution: int


class Me(BaseModel):
    """The caller of the request."""

    name: str
    kind: str = Field(description="user or agent")
    admin: bool
    auth: str = Field(description="'on', or 'off' when the server runs for one person on loopback")
    csrf_token: str | None = Field(None, description="Send it as X-CSRF-Token with state-changing requests.")


def job_view(
    job: JobRecord, viewer: Principal, owner_names: dict[str, str] | None = None, *, prefix: str = "/api/jobs"
) -> JobView:
    """A job as `viewer` may see it; download URLs under `prefix` (the agent API has its own)."""
    result = job.result or {}
    formats = list(result.get("files", {}))
    summary = None
    if job.result is not None:
        summary = ResultSummary(**{key: result.get(key) for key in ("generator", "vertices", "faces", "watertight")})
        summary.batch_size = result.get("batch_size")
        summary.formats = formats
    view = JobView(
        id=job.id,
        status=job.status.value,
        progress=job.progress,
        stage=job.stage,
        error=job.error,
        input_name=job.input_name,
        options=job.options,
        attempts=job.attempts,
        profile=job.profile,
        result=summary,
        created_at=job.created_at,
        updated_at=job.updated_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        result_urls={fmt: f"{prefix}/{job.id}/result.{fmt}" for fmt in formats},
        preview_url=f"/api/jobs/{job.id}/preview.png" if job.status == "succeeded" else None,
        events_url=f"/api/jobs/{job.id}/events",
    )
    if viewer.is_admin:
        view.owner = (owner_names or {}).get(job.owner, job.owner)
        view.idempotency_key = job.idempotency_key
    return view


def job_json(
    job: JobRecord, viewer: Principal, owner_names: dict[str, str] | None = None, *, prefix: str = "/api/jobs"
) -> dict[str, Any]:
    """`job_view` as JSON-ready values, without the admin-only fields for anyone else."""
    view = job_view(job, viewer, owner_names, prefix=prefix)
    return view.model_dump(mode="json", exclude=None if viewer.is_admin else ADMIN_ONLY)


def job_response(
    job: JobRecord,
    viewer: Principal,
    owner_names: dict[str, str] | None = None,
    *,
    prefix: str = "/api/jobs",
    headers: dict[str, str] | None = None,
) -> Response:
    """`job_json` serialised straight to JSON bytes by pydantic-core (the hot path of status polling)."""
    view = job_view(job, viewer, owner_names, prefix=prefix)
    body = view.model_dump_json(exclude=None if viewer.is_admin else ADMIN_ONLY)
    return Response(body, media_type="application/json", headers=headers)
