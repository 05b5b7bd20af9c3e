"""What the API answers with: response models that list every field a client may see (allow-lists).

A column added to a table is not exposed until a field is added here. Fields marked "admin only" are filled only for
an admin; for anyone else they are left out of the JSON.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi.responses import Response
from pydantic import BaseModel, Field

from orfeas.service.auth import Principal
from orfeas.store.jobs import JobRecord
from orfeas.store.schema import JobStatus

ADMIN_ONLY = {"owner", "idempotency_key"}


class Problem(BaseModel):
    field: str = Field(description="The request field, dotted for nested ones.")
    message: str


class ErrorDetail(BaseModel):
    type: str = Field(description="The error's name, such as JobNotFound, InvalidOptions or RateLimited.")
    message: str
    problems: list[Problem] | None = Field(None, description="InvalidRequest only: one entry per bad field.")


class ErrorBody(BaseModel):
    """Every error response (api/errors.py)."""

    error: ErrorDetail


ERRORS: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorBody, "description": "The request was refused; `error` says why."},
    "5XX": {"model": ErrorBody, "description": "The server failed or is unavailable (503, 507: retry later)."},
}


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
    status: JobStatus
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
    preview_url: str | None = Field(description="A rendering of the finished model (not on the agent API).")
    events_url: str | None = Field(description="The progress WebSocket (not on the agent API).")
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


class Me(BaseModel):
    """The caller of the request."""

    name: str
    kind: str = Field(description="user or agent")
    admin: bool
    auth: str = Field(description="'on', or 'off' when the server runs for one person on loopback")
    csrf_token: str | None = Field(None, description="Send it as X-CSRF-Token with state-changing requests.")


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    """Whether this process can serve; the problem fields appear only when there is that problem (503)."""

    status: Literal["ready", "not ready"]
    stale_workers: int | None = Field(None, description="Workers of this process that have not looped recently.")
    low_disk_space: bool | None = Field(None, description="Less than ORFEAS_MIN_FREE_DISK_BYTES free.")


class StageStats(BaseModel):
    avg_seconds: float = Field(description="Per job; a job that skipped the stage counts 0 s.")
    share: float = Field(description="Its part of all pipeline time, 0-1.")
    p95_seconds: float | None


class Bottleneck(BaseModel):
    stage: str
    label: str = Field(description="The stage name as people read it.")
    share: float
    severity: Literal["high", "medium"]


class PerformanceSummary(BaseModel):
    """Timings of the most recent finished jobs, from their stored profiles."""

    total_pipelines: int = Field(description="How many finished jobs the numbers cover.")
    avg_duration: float | None = Field(description="Seconds; None before the first finished job.")
    p50_duration: float | None
    p95_duration: float | None
    stage_breakdown: dict[str, StageStats]
    slowest_stage: str | None
    bottlenecks: list[Bottleneck] = Field(description="Stages worth a change of settings, largest share first.")


class Advice(BaseModel):
    message: str = Field(description="Worded for the studio's form fields.")
    cli: str = Field(description="Worded for the `orfeas generate` options.")
    reason: str = Field(description="The numbers it comes from.")
    severity: Literal["high", "medium", "low", "info"]


class Recommendations(BaseModel):
    recommendations: list[Advice] = Field(description="Most severe first.")


class DeviceMemory(BaseModel):
    total: int = Field(description="Bytes.")
    used: int
    free: int
    used_fraction: float


class UtilizationTrend(BaseModel):
    """The device's recent utilization, from the sampler's readings."""

    samples: int
    window_seconds: float
    mean_utilization: float | None = Field(description="0-1; None when the device does not report it.")
    last_utilization: float | None
    direction: Literal["rising", "falling", "steady"]
    slope_per_minute: float
    memory_used_mean: int | None = Field(description="Bytes.")


class DeviceStatus(BaseModel):
    """The device jobs run on and the batch size the worker would choose now."""

    gpu: bool
    device: str = Field(description="cpu or cuda:N")
    name: str
    memory: DeviceMemory
    utilization: float | None = Field(description="0-1; None when unknown.")
    trend: UtilizationTrend
    batch_size: int | None
    batch_reason: str | None = Field(description="How the batch size was worked out.")
    note: str | None
    recommendations: list[Advice]


def file_responses(description: str, *media_types: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of a route answering 200 with a file (binary content, no JSON schema)."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {200: {"description": description, "content": {media_type: binary for media_type in media_types}}}


def job_view(
    job: JobRecord,
    viewer: Principal,
    owner_names: dict[str, str] | None = None,
    *,
    prefix: str = "/api/jobs",
    page_links: bool = True,
) -> JobView:
    """A job as `viewer` may see it; download URLs under `prefix`, and with `page_links` the preview and progress
    socket URLs (the agent API has its own downloads and neither of the others)."""
    result = job.result or {}
    formats = list(result.get("files", {}))
    summary = None
    if job.result is not None:
        summary = ResultSummary(**{key: result.get(key) for key in ("generator", "vertices", "faces", "watertight")})
        summary.batch_size = result.get("batch_size")
        summary.formats = formats
    view = JobView(
        id=job.id,
        status=job.status,
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
        preview_url=f"/api/jobs/{job.id}/preview.png" if page_links and job.status == JobStatus.SUCCEEDED else None,
        events_url=f"/api/jobs/{job.id}/events" if page_links else None,
    )
    if viewer.is_admin:
        view.owner = (owner_names or {}).get(job.owner, job.owner)
        view.idempotency_key = job.idempotency_key
    return view


def job_json(
    job: JobRecord,
    viewer: Principal,
    owner_names: dict[str, str] | None = None,
    *,
    prefix: str = "/api/jobs",
    page_links: bool = True,
) -> dict[str, Any]:
    """`job_view` as JSON-ready values, without the admin-only fields for anyone else."""
    view = job_view(job, viewer, owner_names, prefix=prefix, page_links=page_links)
    return view.model_dump(mode="json", exclude=None if viewer.is_admin else ADMIN_ONLY)


def job_response(
    job: JobRecord,
    viewer: Principal,
    owner_names: dict[str, str] | None = None,
    *,
    prefix: str = "/api/jobs",
    page_links: bool = True,
    headers: dict[str, str] | None = None,
) -> Response:
    """`job_json` serialised straight to JSON bytes by pydantic-core (the hot path of status polling)."""
    view = job_view(job, viewer, owner_names, prefix=prefix, page_links=page_links)
    body = view.model_dump_json(exclude=None if viewer.is_admin else ADMIN_ONLY)
    return Response(body, media_type="application/json", headers=headers)


def job_list_response(
    jobs: list[JobRecord], viewer: Principal, owner_names: dict[str, str], *, total: int, limit: int, offset: int
) -> Response:
    """A page of jobs (`JobList`) serialised straight to JSON bytes by pydantic-core, as `job_response` does one."""
    page = JobList(jobs=[job_view(job, viewer, owner_names) for job in jobs], total=total, limit=limit, offset=offset)
    body = page.model_dump_json(exclude=None if viewer.is_admin else {"jobs": {"__all__": ADMIN_ONLY}})
    return Response(body, media_type="application/json")
