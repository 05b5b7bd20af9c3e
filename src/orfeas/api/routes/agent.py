"""The agent API: signed requests (see orfeas.signing and docs/AGENT_API.md), each agent seeing only its jobs."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.datastructures import UploadFile as StarletteUpload

from orfeas.api.deps import Services, get_services, quick_read
from orfeas.api.errors import status_for
from orfeas.api.routes.jobs import (
    REPEAT,
    RESULT_FILE,
    checked_id,
    parse_json_object,
    result_file_response,
    views_upload,
)
from orfeas.api.schemas import ERRORS, AgentJob, JobView, SubmittedJobs, job_json, job_response
from orfeas.errors import InvalidImage, InvalidOptions, OrfeasError
from orfeas.limits import parse_json
from orfeas.pipeline.options import GenerateOptions
from orfeas.service.agents import (
    Admission,
    AgentRequestRefused,
    SignedRequest,
    TooManyFailures,
    rate_limit_headers,
)
from orfeas.service.auth import Principal, agent_principal
from orfeas.service.jobs import Upload
from orfeas.store.agents import AgentRecord
from orfeas.store.db import is_database_outage
from orfeas.store.jobs import JobRecord
from orfeas.store.schema import JOB_ID_PATTERN

router = APIRouter(prefix="/api/agent", tags=["agent"], responses=ERRORS)
DOWNLOADS = "/api/agent/jobs"  # the agent API's own result URLs; it has no preview or progress socket
logger = logging.getLogger(__name__)


class AgentRequest:
    """An authenticated agent request: who sent it, its parsed body, its rate-limit headers and, once the route has
    run, what to audit (the jobs it touched)."""

    def __init__(self, agent: AgentRecord, headers: dict[str, str], body: bytes, request: Request):
        self.agent = agent
        self.principal: Principal = agent_principal(agent.id, agent.name)
        self.headers = headers
        self.body = body
        self.request = request
        self.job_ids: list[str] = []
        self.status: int | None = None  # set by a route whose success status varies (a repeat is 200)


def authenticated(operation: str, success: int = 200) -> Callable[[Request, Services], AsyncIterator[AgentRequest]]:
    """A dependency that verifies the signature for `operation` and audits the request (see `signed_call`)."""

    async def verify(
        request: Request, services: Annotated[Services, Depends(get_services)]
    ) -> AsyncIterator[AgentRequest]:
        async with signed_call(request, services, operation, success) as call:
            yield call

    return verify


@asynccontextmanager
async def signed_call(
    request: Request, services: Services, operation: str, success: int = 200
) -> AsyncIterator[AgentRequest]:
    """Verify the signature for `operation` and write exactly one audit row per request: the refusal, or once the
    block has answered, its real status (`success` or the error's). The status route uses it in its body rather
    than as a dependency, whose machinery cost that hot route more than the verification."""
    address = request.client.host if request.client else ""
    body = await request.body()
    try:
        agent, admission = await _authenticate(services, request, body, operation)
    except AgentRequestRefused as exc:
        refusal = services.refusals.refused(address, exc.key_id or "")
        services.audit.record_refusal(exc, operation, status_for(exc), refusal)
        if refusal.throttled:
            raise TooManyFailures(refusal.retry_after) from None
        raise
    headers = rate_limit_headers(admission)
    request.state.rate_limit_headers = headers  # error responses to this request carry them too
    call = AgentRequest(agent, headers, body, request)
    outcome, detail = success, None
    try:
        yield call
        outcome = call.status or success  # a repeat of an earlier submission is 200
    except OrfeasError as exc:
        outcome, detail = status_for(exc), str(exc)
        raise
    except Exception as exc:
        outcome, detail = (503 if is_database_outage(exc) else 500), type(exc).__name__
        raise
    finally:
        services.audit.record_admitted(call.agent, operation, outcome, call.job_ids, detail)


async def _authenticate(
    services: Services, request: Request, body: bytes, operation: str
) -> tuple[AgentRecord, Admission]:
    """`AgentAuthenticator.authenticate` without a thread per request: the checks as a quick read, the admission
    through the queue that gives concurrent requests one transaction."""
    authenticator = services.authenticator
    signed = SignedRequest(request.method, signed_path(request), request.url.query, request.headers, body)
    for fresh in (False, True):
        agent, nonce = await quick_read(services, authenticator.verify, signed, operation, fresh)
        admission = await authenticator.admissions.admit(authenticator.pending(agent, nonce))
        if admission.reason != "stale" or fresh:
            break
    return agent, authenticator.accept(agent, nonce, admission)


def signed_path(request: Request) -> str:
    """The path as the client sent it on the request line, percent-encoding kept (what the signature covers)."""
    raw = request.scope.get("raw_path")
    return raw.decode("latin-1").split("?", 1)[0] if raw else request.url.path


@router.post("/generate-3d", status_code=202, response_model=AgentJob, responses={200: {"model": AgentJob, **REPEAT}})
async def generate_3d(
    call: Annotated[AgentRequest, Depends(authenticated("generate", success=202))],
    services: Annotated[Services, Depends(get_services)],
) -> JSONResponse:
    """One image (JSON with base64 data, or multipart field `image`) plus options → 202 with the job."""
    uploads, options = await _read_submission(call, services, many=False)
    jobs, status_code = await _submit(call, services, uploads, options)
    body = {"job": _agent_view(jobs[0], call.principal)}
    return JSONResponse(body, status_code=status_code, headers=call.headers)


@router.post(
    "/batch", status_code=202, response_model=SubmittedJobs, responses={200: {"model": SubmittedJobs, **REPEAT}}
)
async def batch(
    call: Annotated[AgentRequest, Depends(authenticated("batch", success=202))],
    services: Annotated[Services, Depends(get_services)],
) -> JSONResponse:
    """Up to `max_agent_batch` images → 202 with one job per image (they go to the batching worker together)."""
    uploads, options = await _read_submission(call, services, many=True)
    jobs, status_code = await _submit(call, services, uploads, options)
    body = {"jobs": [_agent_view(job, call.principal) for job in jobs]}
    return JSONResponse(body, status_code=status_code, headers=call.headers)


@router.get("/status/{job_id}", response_model=JobView)
async def status(job_id: str, request: Request, services: Annotated[Services, Depends(get_services)]) -> Response:
    """Status, progress and result URLs of one of this agent's jobs."""
    async with signed_call(request, services, "status") as call:
        job = await quick_read(services, _own_job, services, call, job_id)
        return job_response(job, call.principal, prefix=DOWNLOADS, page_links=False, headers=call.headers)


@router.get("/jobs/{job_id}/result.{fmt}", response_class=FileResponse, responses=RESULT_FILE)
async def download(
    job_id: str,
    fmt: str,
    call: Annotated[AgentRequest, Depends(authenticated("download"))],
    services: Annotated[Services, Depends(get_services)],
) -> FileResponse:
    job = await asyncio.to_thread(_own_job, services, call, job_id)
    response = result_file_response(services, job, fmt)
    response.headers.update(call.headers)
    return response


def _own_job(services: Services, call: AgentRequest, job_id: str) -> JobRecord:
    """The job if this agent owns it; another agent's job is indistinguishable from a missing one (404)."""
    if JOB_ID_PATTERN.fullmatch(job_id):
        call.job_ids.append(job_id)
    return services.job_service.get(checked_id(job_id), call.principal)


async def _submit(
    call: AgentRequest, services: Services, uploads: list[Upload], options: GenerateOptions
) -> tuple[list[JobRecord], int]:
    """The jobs and the status to answer with (and to audit): 202, or 200 for a repeat of an earlier request."""
    idempotency_key = call.request.headers.get("idempotency-key")
    jobs, created = await asyncio.to_thread(
        services.job_service.submit, uploads, options, call.principal, idempotency_key
    )
    call.job_ids = [job.id for job in jobs]
    call.status = 202 if created else 200  # as on /api/jobs
    return jobs, call.status


async def _read_submission(call: AgentRequest, services: Services, many: bool) -> tuple[list[Upload], GenerateOptions]:
    """Images and options from a JSON body (base64 images) or a multipart form (files in `image`)."""
    content_type = call.request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await call.request.form()
        files = form.getlist("image")
        uploads = [
            Upload(name=f.filename or "image", data=await f.read()) for f in files if isinstance(f, StarletteUpload)
        ]
        multi_view = await views_upload(form) if not many and not uploads else None
        if multi_view is not None:
            uploads = [multi_view]
        options_field = form.get("options")
        raw_options = parse_json_object(options_field if isinstance(options_field, str) else "{}", "options")
    else:
        payload = parse_json(call.body or b"{}", "body", max_bytes=services.settings.max_upload_bytes)
        if not isinstance(payload, dict):
            raise InvalidOptions("body must be a JSON object")
        items = payload.get("images", []) if many else [payload] if "image" in payload or "views" in payload else []
        uploads = [_decode_item(item, index) for index, item in enumerate(items)]
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


def _decode_item(item: Any, index: int) -> Upload:
    """One image, or with "views": {"front": base64, ...} the views of one object."""
    if isinstance(item, dict) and "views" in item:
        views = item["views"]
        if not isinstance(views, dict) or not views:
            raise InvalidImage(f"item {index}: 'views' must map view names (front, left, back, right) to base64 images")
        data = {
            str(name): _decode_image({"image": value}, f"{index} ({name} view)").data for name, value in views.items()
        }
        return Upload(name=str(item.get("filename") or "views"), views=data)
    return _decode_image(item, index)


def _decode_image(item: Any, index: int | str) -> Upload:
    if not isinstance(item, dict) or not isinstance(item.get("image"), str):
        raise InvalidImage(f"image {index}: expected {{'image': '<base64>', 'filename': ...}}")
    try:
        data = base64.b64decode(item["image"], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage(f"image {index}: not valid base64") from None
    return Upload(name=str(item.get("filename") or f"image{index}"), data=data)


def _agent_view(job: JobRecord, principal: Principal) -> dict[str, Any]:
    return job_json(job, principal, prefix=DOWNLOADS, page_links=False)
