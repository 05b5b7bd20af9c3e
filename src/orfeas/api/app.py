"""The app factory: builds every service object once, starts the in-process worker, wires the routes."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from orfeas import __version__
from orfeas.api.deps import Services
from orfeas.api.errors import BodySizeLimit, install_error_handlers
from orfeas.api.routes import jobs, monitoring
from orfeas.config import Settings
from orfeas.service.jobs import JobService
from orfeas.service.metrics import ServiceMetrics
from orfeas.service.monitoring import UtilizationSampler
from orfeas.service.optimizer import MemoryProbe, ResourceOptimizer
from orfeas.service.worker import Worker
from orfeas.store.artifacts import ArtifactStore
from orfeas.store.db import create_db_engine, init_db, sqlite_url
from orfeas.store.jobs import JobStore

logger = logging.getLogger(__name__)
SAMPLE_SECONDS = 2.0  # utilization sampling period for the trend


def build_services(settings: Settings) -> Services:
    """Open the database and the result folder and build the objects the routes and the worker share."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_db_engine(settings.database_url or sqlite_url(settings.data_dir))
    init_db(engine)
    store = JobStore(engine)
    artifacts = ArtifactStore(settings.data_dir)
    probe = MemoryProbe(settings.device)
    optimizer = ResourceOptimizer(probe, settings.target_utilization, settings.max_batch)
    metrics = ServiceMetrics(CollectorRegistry(), store.count_by_status, probe)
    return Services(
        settings=settings,
        store=store,
        artifacts=artifacts,
        jobs=JobService(store, artifacts, settings),
        probe=probe,
        optimizer=optimizer,
        sampler=UtilizationSampler(probe),
        metrics=metrics,
    )


def create_app(settings: Settings | None = None, *, run_worker: bool = True) -> FastAPI:
    """The ORFEAS API; with `run_worker`, a worker thread generates the queued jobs in this process."""
    settings = settings or Settings()
    services = build_services(settings)
    stop = threading.Event()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        services.sampler.start(SAMPLE_SECONDS)
        threads = []
        if run_worker:
            worker = Worker(services.store, services.artifacts, settings, services.optimizer, services.metrics)
            services.workers.append(worker)
            thread = threading.Thread(target=worker.run, args=(stop,), name="orfeas-worker", daemon=True)
            thread.start()
            threads.append(thread)
        try:
            yield
        finally:
            stop.set()
            services.sampler.stop()
            for thread in threads:
                thread.join(timeout=30)

    app = FastAPI(
        title="ORFEAS",
        version=__version__,
        description="Image to 3D: submit images, follow progress, download GLB / OBJ / STL / PLY.",
        lifespan=lifespan,
    )
    app.state.services = services
    app.add_middleware(BodySizeLimit, limit=settings.max_upload_bytes)
    install_error_handlers(app)
    app.include_router(jobs.router)
    app.include_router(monitoring.router)
    return app
