"""Monitoring computed from stored job profiles (so it survives restarts), device status and Prometheus metrics."""

from __future__ import annotations

import shutil
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse

from orfeas.api.deps import Services, get_services
from orfeas.api.schemas import ERRORS, DeviceStatus, Health, PerformanceSummary, Readiness, Recommendations
from orfeas.api.security import caller
from orfeas.service.batch_sizing import BatchPlan
from orfeas.service.monitoring import device_status, performance_summary, recommendations

router = APIRouter(tags=["monitoring"], responses=ERRORS)
PROFILE_WINDOW = 1000  # the summary covers this many most recent finished jobs


@router.get("/api/performance/summary", dependencies=[Depends(caller)])
def summary(services: Annotated[Services, Depends(get_services)]) -> PerformanceSummary:
    """Totals, average/p50/p95 duration, per-stage breakdown and bottlenecks of recent finished jobs."""
    return PerformanceSummary.model_validate(performance_summary(services.job_store.recent_profiles(PROFILE_WINDOW)))


@router.get("/api/performance/recommendations", dependencies=[Depends(caller)])
def advice(services: Annotated[Services, Depends(get_services)]) -> Recommendations:
    """Advice from the profiles and the device's memory and utilization: `message` names the studio's form fields,
    `cli` the `orfeas generate` options."""
    data = performance_summary(services.job_store.recent_profiles(PROFILE_WINDOW))
    reading = services.sampler.latest()  # not the probe: the sampler thread owns the utilization counter
    items = recommendations(data, reading, services.batch_sizer.last_plan, services.sampler.trend())
    return Recommendations.model_validate({"recommendations": items})


@router.get("/api/gpu/status", dependencies=[Depends(caller)])
def gpu_status(services: Annotated[Services, Depends(get_services)]) -> DeviceStatus:
    """Device memory and utilization with its trend, and the batch size the batch sizer would choose now."""
    plan = _current_plan(services)
    reading, trend = services.sampler.latest(), services.sampler.trend()
    status = device_status(reading, plan, trend)
    data = performance_summary(services.job_store.recent_profiles(PROFILE_WINDOW))
    return DeviceStatus.model_validate(status | {"recommendations": recommendations(data, reading, plan, trend)})


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(caller)])
def metrics(services: Annotated[Services, Depends(get_services)]) -> Response:
    body, content_type = services.metrics.render()
    return Response(body, media_type=content_type)


@router.get("/healthz", tags=["health"])
def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get(
    "/readyz",
    tags=["health"],
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready: the fields say why."}},
)
def readyz(services: Annotated[Services, Depends(get_services)]) -> Response:
    """Ready when the database answers, every worker this process runs has looped recently and the data
    directory has at least ORFEAS_MIN_FREE_DISK_BYTES free."""
    services.job_store.queue_depth()  # raises OperationalError (503) when the database is down
    stale = sum(not worker.is_alive() for worker in services.workers)
    low_disk = shutil.disk_usage(services.settings.data_dir).free < services.settings.min_free_disk_bytes
    if stale or low_disk:
        problems = Readiness(status="not ready", stale_workers=stale or None, low_disk_space=low_disk or None)
        return JSONResponse(problems.model_dump(exclude_none=True), status_code=503)
    return JSONResponse(Readiness(status="ready").model_dump(exclude_none=True))


def _current_plan(services: Services) -> BatchPlan | None:
    """What the batch sizer would choose for the next queued job (or the default generator) right now."""
    if services.workers:
        worker = services.workers[0]
        upcoming = services.job_store.next_queued()
        if upcoming is not None:
            return worker.plan_for(upcoming)
        return worker.plan_default()
    return services.batch_sizer.last_plan
