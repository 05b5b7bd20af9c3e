"""Jobs: submit images, follow progress, download results, cancel."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Header, Query, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse
from sqlalchemy.exc import DBAPIError

from orfeas.api.deps import Services, get_services
from orfeas.api.schemas import JobList, JobView, SubmittedJobs, job_json
from orfeas.api.security import caller, websocket_caller
from orfeas.errors import InvalidOptions, OrfeasError
from orfeas.options import GenerateOptions
from orfeas.pipeline.export import FORMATS
from orfeas.service.auth import Principal
from orfeas.service.jobs import Upload
from orfeas.store.db import is_database_outage
from orfeas.store.jobs import JobNotFound, JobRecord

router = APIRouter(prefix="/api/jobs", tags=["jobs"])
Caller = Annotated[Principal, Depends(caller)]
JOB_ID = re.compile(r"[0-9a-f]{32}")
FINISHED = {"succeeded", "failed", "canceled"}
OUTAGE_SECONDS = 60.0  # how long a progress socket waits for an unreachable database before it gives up
MEDIA_TYPES = {
    "glb": "model/gltf-binary",
    "obj": "application/zip",
    "stl": "model/stl",
    "ply": "application/octet-stream",
}


def owner_names(services: Services, viewer: Principal, jobs: list[JobRecord]) -> dict[str, str]:
    """Display names of the jobs' owners, for an admin's view (nobody else sees owners)."""
    return services.accounts.names({job.owner for job in jobs}) if viewer.is_admin else {}


def view(services: Services, viewer: Principal, job: JobRecord) -> dict[str, Any]:
    return job_json(job, viewer, owner_names(services, viewer, [job]))


def checked_id(job_id: str) -> str:
    if not JOB_ID.fullmatch(job_id):
        raise JobNotFound(f"no job {job_id!r}")
    return job_id


@router.post("", status_code=202, response_model=SubmittedJobs)
async def submit_jobs(
    services: Annotated[Services, Depends(get_services)],
    principal: Caller,
    image: Annotated[list[UploadFile], File(description="One or more images (PNG, JPEG, WebP).")] = None,  # noqa: RUF013
    backend: Annotated[str, Form()] = "inflate",
    resolution: Annotated[int | None, Form()] = None,
    faces: Annotated[int, Form()] = 50_000,
    texture: Annotated[bool, Form()] = True,
    formats: Annotated[str, Form(description="Comma-separated: glb,obj,stl,ply")] = "glb",
    seed: Annotated[int, Form()] = 0,
    generator_options: Annotated[str, Form(description="JSON object of generator options")] = "{}",
    idempotency_key: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """Queue one job per uploaded image; 202 with the jobs. A repeated Idempotency-Key returns the same jobs."""
    options = GenerateOptions.build(
        backend=backend,
        resolution=resolution,
        faces=faces,
        texture=texture,
        formats=formats,
        seed=seed,
        generator_options=parse_json_object(generator_options, "generator_options"),
    )
    uploads = [Upload(name=file.filename or "image", data=await file.read()) for file in image or []]
    jobs, created = await asyncio.to_thread(services.jobs.submit, uploads, options, principal, idempotency_key)
    names = owner_names(services, principal, jobs)
    body = {"jobs": [job_json(job, principal, names) for job in jobs]}
    return JSONResponse(body, status_code=202 if created else 200)


@router.get("", response_model=JobList)
def list_jobs(
    services: Annotated[Services, Depends(get_services)],
    principal: Caller,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
    status: Annotated[str | None, Query(pattern="^(queued|running|succeeded|failed|canceled)$")] = None,
) -> JSONResponse:
    """Your jobs (an admin: everyone's), newest first."""
    jobs, total = services.jobs.list(principal, limit=limit, offset=offset, status=status)
    names = owner_names(services, principal, jobs)
    views = [job_json(job, principal, names) for job in jobs]
    return JSONResponse({"jobs": views, "total": total, "limit": limit, "offset": offset})


@router.get("/{job_id}", response_model=JobView)
def get_job(job_id: str, services: Annotated[Services, Depends(get_services)], principal: Caller) -> JSONResponse:
    return JSONResponse(view(services, principal, services.jobs.get(checked_id(job_id), principal)))


@router.delete("/{job_id}", response_model=JobView)
def cancel_job(job_id: str, services: Annotated[Services, Depends(get_services)], principal: Caller) -> JSONResponse:
    """Cancel a queued or running job; a finished job is returned unchanged."""
    return JSONResponse(view(services, principal, services.jobs.cancel(checked_id(job_id), principal)))


@router.get("/{job_id}/result.{fmt}")
def download_result(
    job_id: str, fmt: str, services: Annotated[Services, Depends(get_services)], principal: Caller
) -> FileResponse:
    """The model in one of the formats the job asked for (OBJ as a zip with its MTL and texture)."""
    return result_file_response(services, services.jobs.get(checked_id(job_id), principal), fmt)


def result_file_response(services: Services, job: JobRecord, fmt: str) -> FileResponse:
    """The download of a finished job's result in `fmt`, named after the uploaded image."""
    if fmt not in FORMATS:
        raise InvalidOptions(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if job.status != "succeeded":
        raise JobNotFound(f"job {job.id} has no result yet (status {job.status})")
    name = (job.result or {}).get("files", {}).get(fmt)
    path = services.artifacts.result_file(job.id, name) if name else None
    if path is None:
        raise JobNotFound(f"job {job.id} was not asked for {fmt}; it has {', '.join(job.result['files'])}")
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", job.input_name.rsplit(".", 1)[0]) or "model"
    filename = f"{stem}.obj.zip" if fmt == "obj" else f"{stem}.{fmt}"
    return FileResponse(path, media_type=MEDIA_TYPES[fmt], filename=filename)


@router.get("/{job_id}/preview.png")
def preview(job_id: str, services: Annotated[Services, Depends(get_services)], principal: Caller) -> FileResponse:
    """A small rendering of the finished model (the studio's history thumbnails)."""
    job = services.jobs.get(checked_id(job_id), principal)
    return FileResponse(services.jobs.preview_path(job), media_type="image/png")


@router.websocket("/{job_id}/events")
async def job_events(websocket: WebSocket, job_id: str) -> None:
    """Progress events {status, progress, stage, ...} from the current state until the job ends.

    The socket polls the job's row (one primary-key read per `poll_seconds / 2`), so it sees progress written by a
    worker anywhere in the cluster, whichever API server took the job; see docs/BENCHMARKS.md for the cost. While the
    database is unreachable it keeps waiting, and gives up with an error event after OUTAGE_SECONDS.
    """
    services: Services = websocket.app.state.services
    try:
        principal = await websocket_caller(websocket)
    except OrfeasError as exc:
        await websocket.close(code=4401, reason=str(exc))
        return
    await websocket.accept()
    last = None
    outage_since: float | None = None
    try:
        while True:
            try:
                job = await asyncio.to_thread(services.jobs.get, checked_id(job_id), principal)
            except JobNotFound as exc:
                await websocket.send_json({"type": "error", "error": {"type": "JobNotFound", "message": str(exc)}})
                await websocket.close(code=4404)
                return
            except DBAPIError as exc:
                if not is_database_outage(exc):
                    raise
                outage_since = outage_since or time.monotonic()
                if time.monotonic() - outage_since > OUTAGE_SECONDS:
                    message = "the job database is unavailable; reconnect later"
                    await websocket.send_json(
                        {"type": "error", "error": {"type": "ServiceUnavailable", "message": message}}
                    )
                    await websocket.close(code=1011)
                    return
                await asyncio.sleep(1.0)
                continue
            outage_since = None
            event = {
                "type": "progress",
                "job_id": job.id,
                "status": job.status,
                "progress": job.progress,
                "stage": job.stage,
                "error": job.error,
            }
            if event != last:
                await websocket.send_json(event)
                last = event
            if job.status in FINISHED:
                await websocket.send_json({"type": "end", **await asyncio.to_thread(view, services, principal, job)})
                await websocket.close()
                return
            await asyncio.sleep(services.settings.poll_seconds / 2)
    except WebSocketDisconnect:
        return


def parse_json_object(text: str, field: str) -> dict[str, Any]:
    """A form field holding a JSON object; InvalidOptions (422) naming the field when it is not one."""
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise InvalidOptions(f"{field} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidOptions(f"{field} must be a JSON object")
    return value
