"""Jobs: submit images, follow progress, download results, cancel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any

from fastapi import (
    APIRouter,
    Depends,
    File,
    Form,
    Header,
    Query,
    Request,
    UploadFile,
    WebSocket,
    WebSocketDisconnect,
)
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.datastructures import FormData
from starlette.datastructures import UploadFile as StarletteUpload
from websockets.exceptions import ConnectionClosed

from orfeas.api.deps import Services, get_services, quick_read
from orfeas.api.progress import DatabaseGone, ProgressHub
from orfeas.api.schemas import (
    ERRORS,
    JobList,
    JobView,
    SubmittedJobs,
    file_responses,
    job_json,
    job_list_response,
    job_response,
)
from orfeas.api.security import caller, websocket_caller
from orfeas.errors import FormatNotAvailable, InvalidOptions, OrfeasError
from orfeas.limits import parse_json
from orfeas.pipeline.export import download_name, safe_stem
from orfeas.pipeline.options import FORMATS, MAX_GENERATOR_OPTIONS_BYTES, GenerateOptions
from orfeas.pipeline.views import VIEW_NAMES
from orfeas.service.auth import Principal
from orfeas.service.jobs import Upload
from orfeas.store.jobs import JobNotFound, JobRecord
from orfeas.store.schema import FINISHED_STATUSES, JOB_ID_PATTERN, JobStatus

router = APIRouter(prefix="/api/jobs", tags=["jobs"], responses=ERRORS)
SUBMIT_FIELDS = {"image", "backend", "resolution", "faces", "texture", "formats", "seed", "generator_options"}
SUBMIT_FIELDS |= set(VIEW_NAMES)
Caller = Annotated[Principal, Depends(caller)]
MEDIA_TYPES = {
    "glb": "model/gltf-binary",
    "obj": "application/zip",
    "stl": "model/stl",
    "ply": "application/octet-stream",
}
REPEAT = {"description": "The Idempotency-Key was used before: the jobs that request made, none added."}
RESULT_FILE = file_responses(
    "The model in the format asked for (OBJ: a zip of the OBJ, its MTL and texture).",
    *dict.fromkeys(MEDIA_TYPES.values()),
)


def owner_names(services: Services, viewer: Principal, jobs: list[JobRecord]) -> dict[str, str]:
    """Display names of the jobs' owners, for an admin's view (nobody else sees owners); the admin's own name is
    known without a lookup."""
    if not viewer.is_admin:
        return {}
    others = {job.owner for job in jobs} - {viewer.owner}
    return (services.accounts.names(others) if others else {}) | {viewer.owner: f"{viewer.kind}:{viewer.name}"}


def view(services: Services, viewer: Principal, job: JobRecord) -> dict[str, Any]:
    return job_json(job, viewer, owner_names(services, viewer, [job]))


def checked_id(job_id: str) -> str:
    if not JOB_ID_PATTERN.fullmatch(job_id):
        raise JobNotFound(f"no job {job_id!r}")
    return job_id


@router.post("", status_code=202, response_model=SubmittedJobs, responses={200: {"model": SubmittedJobs, **REPEAT}})
async def submit_jobs(
    request: Request,
    services: Annotated[Services, Depends(get_services)],
    principal: Caller,
    image: Annotated[list[UploadFile] | None, File(description="One or more images (PNG, JPEG, WebP).")] = None,
    backend: Annotated[str, Form()] = "inflate",
    resolution: Annotated[int | None, Form()] = None,
    faces: Annotated[int, Form()] = 50_000,
    texture: Annotated[bool, Form()] = True,
    formats: Annotated[str, Form(description="Comma-separated: glb,obj,stl,ply")] = "glb",
    seed: Annotated[int, Form()] = 0,
    generator_options: Annotated[str, Form(description="JSON object of generator options")] = "{}",
    idempotency_key: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """Queue one job per uploaded image; 202 with the jobs. A repeated Idempotency-Key returns the same jobs (200)."""
    unknown = sorted(set((await request.form()).keys()) - SUBMIT_FIELDS)
    if unknown:
        raise InvalidOptions(f"unknown form fields {', '.join(unknown)}; known: {', '.join(sorted(SUBMIT_FIELDS))}")
    options = GenerateOptions.build(
        backend=backend,
        resolution=resolution,
        faces=faces,
        texture=texture,
        formats=formats,
        seed=seed,
        generator_options=parse_json_object(generator_options, "generator_options"),
    )
    form = await request.form()
    multi_view = await views_upload(form)
    if multi_view is not None and image:
        raise InvalidOptions("send either images (field 'image') or the views of one object (front, left, ...)")
    if multi_view is not None:
        uploads = [multi_view]
    else:
        uploads = [Upload(name=file.filename or "image", data=await file.read()) for file in image or []]
    jobs, created = await asyncio.to_thread(services.job_service.submit, uploads, options, principal, idempotency_key)
    names = owner_names(services, principal, jobs)
    body = {"jobs": [job_json(job, principal, names) for job in jobs]}
    return JSONResponse(body, status_code=202 if created else 200)


@router.get("", response_model=JobList)
def list_jobs(
    services: Annotated[Services, Depends(get_services)],
    principal: Caller,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    status: Annotated[JobStatus | None, Query()] = None,
) -> Response:
    """Your jobs (an admin: everyone's), newest first."""
    jobs, total = services.job_service.list(principal, limit=limit, offset=offset, status=status)
    names = owner_names(services, principal, jobs)
    return job_list_response(jobs, principal, names, total=total, limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobView)
async def get_job(job_id: str, services: Annotated[Services, Depends(get_services)], principal: Caller) -> Response:
    """Status, progress, stage, timings, error and result URLs of one job (the route clients poll)."""
    job = await quick_read(services, services.job_service.get, checked_id(job_id), principal)
    return job_response(job, principal, owner_names(services, principal, [job]))


@router.delete("/{job_id}", response_model=JobView)
def cancel_job(job_id: str, services: Annotated[Services, Depends(get_services)], principal: Caller) -> Response:
    """Cancel a queued or running job; a finished job is returned unchanged."""
    job = services.job_service.cancel(checked_id(job_id), principal)
    return job_response(job, principal, owner_names(services, principal, [job]))


@router.get("/{job_id}/result.{fmt}", response_class=FileResponse, responses=RESULT_FILE)
def download_result(
    job_id: str, fmt: str, services: Annotated[Services, Depends(get_services)], principal: Caller
) -> FileResponse:
    """The model in one of the formats the job asked for (OBJ as a zip with its MTL and texture)."""
    return result_file_response(services, services.job_service.get(checked_id(job_id), principal), fmt)


def result_file_response(services: Services, job: JobRecord, fmt: str) -> FileResponse:
    """The download of a finished job's result in `fmt`, named after the uploaded image."""
    if fmt not in FORMATS:
        raise InvalidOptions(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if job.status != JobStatus.SUCCEEDED:
        raise FormatNotAvailable(f"job {job.id} has no result yet (status {job.status})")
    files = (job.result or {}).get("files", {})
    path = services.artifacts.result_file(job.id, files[fmt]) if fmt in files else None
    if path is None:
        raise FormatNotAvailable(f"job {job.id} was not asked for {fmt}; it has {', '.join(files)}")
    filename = download_name(safe_stem(job.input_name.rsplit(".", 1)[0]), fmt)
    return FileResponse(path, media_type=MEDIA_TYPES[fmt], filename=filename)


@router.get(
    "/{job_id}/preview.png",
    response_class=FileResponse,
    responses=file_responses("A PNG rendering of the finished model.", "image/png"),
)
def preview(job_id: str, services: Annotated[Services, Depends(get_services)], principal: Caller) -> FileResponse:
    """A small rendering of the finished model (the studio's history thumbnails)."""
    job = services.job_service.get(checked_id(job_id), principal)
    return FileResponse(services.job_service.preview_path(job), media_type="image/png")


@router.websocket("/{job_id}/events")
async def job_events(websocket: WebSocket, job_id: str) -> None:
    """Progress events {status, progress, stage, ...} from the current state until the job ends.

    All sockets following one job in this API process share one poller of its row (see api/progress.py), so a
    socket sees progress written by a worker anywhere in the cluster at the cost of one read per job, not per
    socket. Sockets per client address and in total are capped (close code 1013: try again later).
    """
    services: Services = websocket.app.state.services
    hub: ProgressHub = websocket.app.state.progress
    try:
        principal = await websocket_caller(websocket)
    except OrfeasError as exc:
        await websocket.close(code=4401, reason=str(exc))
        return
    client = websocket.client.host if websocket.client else ""
    refusal = hub.admit(client)
    if refusal is not None:  # accepted first, so that the client sees the close code and the reason
        await websocket.accept()
        await websocket.close(code=1013, reason=refusal)
        return
    try:
        await websocket.accept()
        await _send_progress(websocket, services, hub, principal, job_id)
    except (WebSocketDisconnect, ConnectionClosed, OSError):  # the client left mid-send
        return
    finally:
        hub.release(client)


async def _send_progress(
    websocket: WebSocket, services: Services, hub: ProgressHub, principal: Principal, job_id: str
) -> None:
    try:
        job = await asyncio.to_thread(services.job_service.get, checked_id(job_id), principal)
    except JobNotFound as exc:
        await websocket.send_json({"type": "error", "error": {"type": "JobNotFound", "message": str(exc)}})
        await websocket.close(code=4404)
        return
    disconnected = asyncio.create_task(_until_disconnect(websocket))
    try:
        async for current in _racing(hub.updates(job), disconnected):
            await websocket.send_json(
                {
                    "type": "progress",
                    "job_id": current.id,
                    "status": current.status,
                    "progress": current.progress,
                    "stage": current.stage,
                    "error": current.error,
                }
            )
            if current.status in FINISHED_STATUSES:
                end = await asyncio.to_thread(view, services, principal, current)
                await websocket.send_json({"type": "end", **end})
                await websocket.close()
                return
    except DatabaseGone:
        message = "the job database is unavailable; reconnect later"
        await websocket.send_json({"type": "error", "error": {"type": "ServiceUnavailable", "message": message}})
        await websocket.close(code=1011)
    finally:
        disconnected.cancel()


async def _until_disconnect(websocket: WebSocket) -> None:
    """Returns when the client goes away (clients send nothing on this socket)."""
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass


async def _racing(updates: AsyncGenerator[JobRecord, None], stop: asyncio.Task[None]) -> AsyncIterator[JobRecord]:
    """The items of `updates` until `stop` finishes (the client left), whichever comes first."""
    try:
        while True:
            following = asyncio.ensure_future(anext(updates))
            done, _ = await asyncio.wait({following, stop}, return_when=asyncio.FIRST_COMPLETED)
            if following not in done:
                following.cancel()
                await asyncio.gather(following, return_exceptions=True)
                return
            try:
                yield following.result()
            except StopAsyncIteration:
                return
    finally:
        await updates.aclose()


async def views_upload(form: FormData) -> Upload | None:
    """The views of one object sent as form fields front, left, back, right (None when there are none)."""
    files = {name: file for name in VIEW_NAMES if isinstance(file := form.get(name), StarletteUpload)}
    if not files:
        return None
    first = files.get("front", next(iter(files.values())))
    return Upload(name=first.filename or "views", views={name: await file.read() for name, file in files.items()})


def parse_json_object(text: str, field: str) -> dict[str, Any]:
    """A form field holding a small JSON object; InvalidOptions (422) naming the field when it is not one."""
    value = parse_json(text or "{}", field, max_bytes=MAX_GENERATOR_OPTIONS_BYTES)
    if not isinstance(value, dict):
        raise InvalidOptions(f"{field} must be a JSON object")
    return value
