"""The agent API: signed requests (see orfeas.signing and docs/AGENT_API.md), each agent seeing only its jobs."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse

from orfeas.api.deps import Services, get_services
from orfeas.api.errors import status_for
from orfeas.api.routes.jobs import checked_id, parse_json_object, result_file_response
from orfeas.api.schemas import AgentJob, JobView, SubmittedJobs, job_json
from orfeas.errors import InvalidImage, InvalidOptions, OrfeasError
from orfeas.options import GenerateOptions
from orfeas.service.agents import rate_limit_headers
from orfeas.service.auth import Principal, agent_principal
from orfeas.service.jobs import Upload
from orfeas.store.agents import AgentRecord
from orfeas.store.jobs import JobNotFound, JobRecord

router = APIRouter(prefix="/api/agent", tags=["agent"])


class AgentRequest:
    """An authenticated agent request: who sent it, its parsed body and its rate-limit headers."""

    def __init__(self, agent: AgentRecord, headers: dict[str, str], body: bytes, request: Request):
        self.agent = agent
        self.principal: Principal = agent_principal(agent.id, agent.name)
        self.headers = headers
        self.body = body
        self.request = request


def authenticated(operation: str):
    """A dependency that verifies the signature for `operation` and audits refusals."""

    async def verify(request: Request, services: Annotated[Services, Depends(get_services)]) -> AgentRequest:
        body = await request.body()
        try:
            agent, admission = await asyncio.to_thread(
                services.authenticator.authenticate,
                request.method,
                signed_path(request),
                request.url.query,
                dict(request.headers),
                body,
                operation,
            )
        except OrfeasError as exc:
            known = getattr(exc, "agent", None)
            await asyncio.to_thread(
                services.agents.audit,
                key_id=request.headers.get("x-orfeas-key", ""),
                operation=operation,
                outcome=status_for(exc),
                agent_id=known.id if known else None,
                detail=str(exc),
            )
            raise
        headers = rate_limit_headers(admission)
        request.state.rate_limit_headers = headers  # error responses to this request carry them too
        return AgentRequest(agent, headers, body, request)

    return verify


def signed_path(request: Request) -> str:
    """The path as the client sent it on the request line, percent-encoding kept (what the signature covers)."""
    raw = request.scope.get("raw_path")
    return raw.decode("latin-1").split("?", 1)[0] if raw else request.url.path


@router.post("/generate-3d", status_code=202, response_model=AgentJob)
async def generate_3d(
    call: Annotated[AgentRequest, Depends(authenticated("generate"))],
    services: Annotated[Services, Depends(get_services)],
) -> JSONResponse:
    """One image (JSON with base64 data, or multipart field `image`) plus options → 202 with the job."""
    uploads, options = await _read_submission(call, services, many=False)
    jobs = await _submit(call, services, "generate", uploads, options)
    return JSONResponse({"job": _agent_view(jobs[0], call.principal)}, status_code=202, headers=call.headers)


@router.post("/batch", status_code=202, response_model=SubmittedJobs)
async def batch(
    call: Annotated[AgentRequest, Depends(authenticated("batch"))],
    services: Annotated[Services, Depends(get_services)],
) -> JSONResponse:
    """Up to `max_agent_batch` images → 202 with one job per image (they go to the batching worker together)."""
    uploads, options = await _read_submission(call, services, many=True)
    jobs = await _submit(call, services, "batch", uploads, options)
    return JSONResponse(
        {"jobs": [_agent_view(job, call.principal) for job in jobs]}, status_code=202, headers=call.headers
    )


@router.get("/status/{job_id}", response_model=JobView)
async def status(
    job_id: str,
    call: Annotated[AgentRequest, Depends(authenticated("status"))],
    services: Annotated[Services, Depends(get_services)],
) -> JSONResponse:
    """Status, progress and result URLs of one of this agent's jobs."""
    job = await asyncio.to_thread(_own_job, services, call, job_id, "status")
    return JSONResponse(_agent_view(job, call.principal), headers=call.headers)


@router.get("/jobs/{job_id}/result.{fmt}")
async def download(
    job_id: str,
    fmt: str,
    call: Annotated[AgentRequest, Depends(authenticated("download"))],
    services: Annotated[Services, Depends(get_services)],
) -> FileResponse:
    job = await asyncio.to_thread(_own_job, services, call, job_id, "download")
    response = result_file_response(services, job, fmt)
    response.headers.update(call.headers)
    return response


def _own_job(services: Services, call: AgentRequest, job_id: str, operation: str) -> JobRecord:
    """The job if this agent owns it; another agent's job is indistinguishable from a missing one (404)."""
    try:
        job = services.jobs.get(checked_id(job_id), call.principal)
    except JobNotFound as exc:
        services.agents.audit(
            agent_id=call.agent.id, key_id=call.agent.key_id, operation=operation, outcome=404, detail=str(exc)
        )
        raise
    services.agents.audit(
        agent_id=call.agent.id, key_id=call.agent.key_id, operation=operation, job_id=job.id, outcome=200
    )
    return job


async def _submit(
    call: AgentRequest, services: Services, operation: str, uploads: list[Upload], options: GenerateOptions
) -> list[JobRecord]:
    agent = call.agent
    idempotency_key = call.request.headers.get("idempotency-key")
    try:
        jobs, _created = await asyncio.to_thread(
            services.jobs.submit, uploads, options, call.principal, idempotency_key
        )
    except OrfeasError as exc:
        await asyncio.to_thread(
            services.agents.audit,
            agent_id=agent.id,
            key_id=agent.key_id,
            operation=operation,
            outcome=status_for(exc),
            detail=str(exc),
        )
        raise
    for job in jobs:
        await asyncio.to_thread(
            services.agents.audit,
            agent_id=agent.id,
            key_id=agent.key_id,
            operation=operation,
            job_id=job.id,
            outcome=202,
        )
    return jobs


async def _read_submission(call: AgentRequest, services: Services, many: bool) -> tuple[list[Upload], GenerateOptions]:
    """Images and options from a JSON body (base64 images) or a multipart form (files in `image`)."""
    content_type = call.request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await call.request.form()
        files = form.getlist("image")
        uploads = [Upload(name=f.filename or "image", data=await f.read()) for f in files if hasattr(f, "read")]
        options_field = form.get("options")
        raw_options = parse_json_object(options_field if isinstance(options_field, str) else "{}", "options")
    else:
        try:
            payload = json.loads(call.body or b"{}")
        except json.JSONDecodeError as exc:
            raise InvalidOptions(f"body is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise InvalidOptions("body must be a JSON object")
        items = payload.get("images", []) if many else [payload] if "image" in payload else []
        uploads = [_decode_image(item, index) for index, item in enumerate(items)]
        raw_options = payload.get("options") or {}
    if not uploads:
        raise InvalidImage("no image in the request" + (" (send 'images': [...])" if many else " (send 'image')"))
    if not many and len(uploads) > 1:
        raise InvalidOptions(f"{len(uploads)} images sent to generate-3d, which takes one; use the batch operation")
    if many and len(uploads) > services.settings.max_agent_batch:
        raise InvalidOptions(f"{len(uploads)} images in one batch; the limit is {services.settings.max_agent_batch}")
    if not isinstance(raw_options, dict):
        raise InvalidOptions("options must be a JSON object")
    return uploads, GenerateOptions.build(**raw_options)


def _decode_image(item: Any, index: int) -> Upload:
    if not isinstance(item, dict) or not isinstance(item.get("image"), str):
        raise InvalidImage(f"image {index}: expected {{'image': '<base64>', 'filename': ...}}")
    try:
        data = base64.b64decode(item["image"], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage(f"image {index}: not valid base64") from None
    return Upload(name=str(item.get("filename") or f"image{index}"), data=data)


def _agent_view(job: JobRecord, principal: Principal) -> dict[str, Any]:
    view = job_json(job, principal, prefix="/api/agent/jobs")
    view["preview_url"] = None  # the agent API has no preview or progress socket
    view["events_url"] = None
    return view
