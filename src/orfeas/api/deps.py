"""What routes need, built once in the app factory and handed to them through `Depends`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request

from orfeas.config import Settings
from orfeas.service.agents import AgentAuthenticator, RefusalLimiter
from orfeas.service.audit import AuditLog
from orfeas.service.auth import AccountService
from orfeas.service.batch_sizing import BatchSizer, MemoryProbe
from orfeas.service.jobs import JobService
from orfeas.service.metrics import ServiceMetrics
from orfeas.service.monitoring import UtilizationSampler
from orfeas.service.worker import Worker
from orfeas.store.agents import AgentStore
from orfeas.store.artifacts import ArtifactStorage
from orfeas.store.jobs import JobStore

T = TypeVar("T")


@dataclass
class Services:
    """The API's objects, built by `orfeas.api.app.build_services` from the parts in `orfeas.service.wiring`."""

    settings: Settings
    job_store: JobStore
    artifacts: ArtifactStorage
    job_service: JobService
    probe: MemoryProbe
    batch_sizer: BatchSizer
    sampler: UtilizationSampler
    metrics: ServiceMetrics
    agent_store: AgentStore
    authenticator: AgentAuthenticator
    accounts: AccountService
    audit: AuditLog
    new_worker: Callable[[], Worker]  # a worker on the job store, reporting to `metrics`
    refusals: RefusalLimiter = field(default_factory=RefusalLimiter)
    workers: list[Worker] = field(default_factory=list)


async def get_services(request: Request) -> Services:
    """The app's Services (async, so that FastAPI calls it on the event loop rather than through a thread)."""
    return request.app.state.services


async def quick_read(services: Services, read: Callable[..., T], *args: Any) -> T:
    """Run a short primary-key read: inline on SQLite, where it is a local page read that never waits for
    writers (WAL) and costs less than the hop to a thread; in a thread on PostgreSQL, where it is a round trip."""
    if services.job_store.local_reads:
        return read(*args)
    return await asyncio.to_thread(read, *args)
