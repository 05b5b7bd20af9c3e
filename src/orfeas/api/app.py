"""The app factory: builds every service object once, starts the in-process worker, wires the routes."""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from orfeas import __version__
from orfeas.api.deps import Services
from orfeas.api.errors import BodySizeLimit, install_error_handlers
from orfeas.api.progress import ProgressHub
from orfeas.api.routes import agent, auth, docs, jobs, monitoring, studio
from orfeas.api.security import HostOriginGuard, allowed_hosts, check_auth_binding
from orfeas.config import Settings
from orfeas.service.monitoring import UtilizationSampler
from orfeas.service.wiring import account_service, build_agent_parts, build_job_parts, open_job_database

logger = logging.getLogger(__name__)
SAMPLE_SECONDS = 2.0  # utilization sampling period for the trend
HOUSEKEEPING_SECONDS = 60.0


def build_services(settings: Settings) -> Services:
    """Open the database and the result folder and build the objects the routes and the worker share."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = open_job_database(settings, "api")
    parts = build_job_parts(settings, engine)
    agents = build_agent_parts(settings, engine)
    sampler = UtilizationSampler(parts.probe)  # owns the CPU counter: requests and scrapes read its last sample
    metrics = parts.metrics(sampler)
    return Services(
        settings=settings,
        job_store=parts.job_store,
        artifacts=parts.artifacts,
        job_service=parts.job_service(),
        probe=parts.probe,
        batch_sizer=parts.batch_sizer,
        sampler=sampler,
        metrics=metrics,
        agent_store=agents.agent_store,
        authenticator=agents.authenticator,
        accounts=account_service(settings, engine),
        audit=agents.audit,
        new_worker=lambda: parts.worker(metrics),
    )


def _freeze_startup_objects() -> None:
    """Leave what start-up built (modules, the app, the pipeline's libraries: most of the heap, and all of it
    long-lived) out of the garbage collector's full passes, which would otherwise scan it all again and again,
    pausing every request and the worker's stages for as long (docs/BENCHMARKS.md)."""
    gc.collect()
    gc.freeze()


def _keep_agent_tables_small(services: Services, stop: threading.Event) -> None:
    """Drop request rows past the replay window and audit entries past retention, once a minute."""
    while not stop.wait(HOUSEKEEPING_SECONDS):
        try:
            services.agent_store.purge_requests(2 * services.settings.agent_window_seconds)
            cutoff = datetime.now(UTC) - timedelta(hours=services.settings.retention_hours)
            services.agent_store.delete_audit_before(cutoff)
            services.accounts.purge_sessions()
        except Exception:  # a database hiccup must not end the loop
            logger.exception("agent housekeeping failed")


def _return_running_jobs(services: Services) -> None:
    """Put the batches this process's workers are running back in the queue at once, so that a stop does not wait
    for a long batch (or its lease) and another worker can take them; the interrupted attempt does not count."""
    for worker in services.workers:
        try:
            services.job_store.requeue_owned(worker.worker_id)
        except Exception:  # the leases then run out and another worker's heartbeat requeues the jobs
            logger.exception("could not requeue the running jobs of worker %s", worker.worker_id)


def create_app(settings: Settings | None = None, *, run_worker: bool = True) -> FastAPI:
    """The ORFEAS API; with `run_worker`, a worker thread generates the queued jobs in this process."""
    settings = settings or Settings()
    check_auth_binding(settings)
    services = build_services(settings)
    stop = threading.Event()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        _freeze_startup_objects()
        services.sampler.start(SAMPLE_SECONDS)
        services.audit.start()
        services.authenticator.admissions.start()
        threads = []
        if run_worker:
            worker = services.new_worker()
            services.workers.append(worker)
            services.job_service.on_submitted(worker.wake)  # an idle worker starts a new job at once
            thread = threading.Thread(target=worker.run, args=(stop,), name="orfeas-worker", daemon=True)
            thread.start()
            threads.append(thread)
        housekeeping = threading.Thread(
            target=_keep_agent_tables_small, args=(services, stop), name="orfeas-housekeeping", daemon=True
        )
        housekeeping.start()
        threads.append(housekeeping)
        try:
            yield
        finally:
            stop.set()
            for running in services.workers:
                running.wake()
            services.sampler.stop()
            _return_running_jobs(services)
            services.authenticator.admissions.stop()
            services.audit.stop()
            for thread in threads:
                thread.join(timeout=settings.shutdown_grace_seconds)

    app = FastAPI(
        title="ORFEAS",
        version=__version__,
        description="Image to 3D: submit images, follow progress, download GLB / OBJ / STL / PLY.",
        lifespan=lifespan,
        docs_url=None,  # served offline by routes/docs.py
        redoc_url=None,
    )
    app.state.services = services
    app.state.progress = ProgressHub(
        services.job_store.get_many,
        poll_seconds=settings.poll_seconds / 2,
        max_sockets=settings.max_websockets,
        max_per_client=settings.max_websockets_per_client,
        changes=services.job_store.change_notifications(),
    )
    app.add_middleware(BodySizeLimit, limit=settings.max_upload_bytes)
    cors = frozenset(origin.strip().rstrip("/") for origin in settings.cors_origins.split(",") if origin.strip())
    if cors:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=sorted(cors),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-CSRF-Token"],
        )
    app.add_middleware(HostOriginGuard, hosts=allowed_hosts(settings), cors_origins=cors)  # outermost: runs first
    install_error_handlers(app)
    app.include_router(jobs.router)  # the polled routes first: a request is matched against the routes in turn
    app.include_router(agent.router)
    app.include_router(monitoring.router)
    app.include_router(studio.router)
    app.include_router(auth.router)
    app.include_router(docs.router)
    app.mount("/static", StaticFiles(directory=str(studio.WEB / "static"), check_dir=False), name="static")
    return app


def create_app_from_environment() -> FastAPI:
    """The app of one of `orfeas serve --workers N`'s API processes: settings from ORFEAS_*, no worker loop (that
    runs in a process of its own)."""
    return create_app(Settings(), run_worker=False)
