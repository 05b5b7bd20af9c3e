"""Building the service objects from one Settings: the API's app factory, `orfeas worker` and the operator commands
all open the database and assemble the stores and services here, so each part is made in one way only."""

from __future__ import annotations

import os
from dataclasses import dataclass

import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from orfeas.config import Settings
from orfeas.service.agent_accounts import AgentAccounts
from orfeas.service.agent_keys import check_master_key, load_master_key
from orfeas.service.agents import AgentAuthenticator
from orfeas.service.audit import AuditLog
from orfeas.service.auth import AccountService
from orfeas.service.batch_sizing import BatchSizer, MemoryProbe, MemorySource
from orfeas.service.jobs import JobService
from orfeas.service.metrics import ServiceMetrics
from orfeas.service.worker import Worker
from orfeas.store.agents import AgentStore
from orfeas.store.artifacts import LocalArtifactStore
from orfeas.store.db import sqlite_url
from orfeas.store.jobs import JobStore
from orfeas.store.opening import open_database
from orfeas.store.users import UserStore


def database_url(settings: Settings) -> str:
    """The job database the settings name: ORFEAS_DATABASE_URL, else the SQLite file in the data folder."""
    return settings.database_url or sqlite_url(settings.data_dir)


def open_job_database(settings: Settings, role: str | None = None) -> sa.Engine:
    """The job database, migrated to the newest schema (DatabaseUnavailable when it cannot be opened).

    With `role` ("api", "worker") its PostgreSQL connections are labelled orfeas-ROLE-PID, so an operator can tell
    whose they are.
    """
    return open_database(database_url(settings), f"orfeas-{role}-{os.getpid()}" if role else None)


@dataclass(frozen=True)
class JobParts:
    """What queued jobs are stored in and generated with; the API and `orfeas worker` share this set."""

    settings: Settings
    job_store: JobStore
    artifacts: LocalArtifactStore
    probe: MemoryProbe
    batch_sizer: BatchSizer

    def job_service(self) -> JobService:
        """The service that submits, lists and cancels jobs for the routes."""
        return JobService(self.job_store, self.artifacts, self.settings)

    def metrics(self, memory: MemorySource) -> ServiceMetrics:
        """Prometheus metrics in a registry of their own, reading job counts from the store and `memory`."""
        return ServiceMetrics(CollectorRegistry(), self.job_store.count_by_status, memory)

    def worker(self, metrics: ServiceMetrics | None = None) -> Worker:
        """A worker that claims batches from the store; each call makes a new one (with its own id)."""
        return Worker(self.job_store, self.artifacts, self.settings, self.batch_sizer, metrics)


def build_job_parts(settings: Settings, engine: sa.Engine) -> JobParts:
    """The job store on `engine`, the result folder and the batch sizer reading the settings' device.

    Raises ValueError for a device setting that is not 'auto', 'cpu' or 'cuda:N'.
    """
    probe = MemoryProbe(settings.device)
    return JobParts(
        settings=settings,
        job_store=JobStore(engine),
        artifacts=LocalArtifactStore(settings.data_dir),
        probe=probe,
        batch_sizer=BatchSizer(probe, settings.target_utilization, settings.max_batch),
    )


def agent_accounts(settings: Settings, engine: sa.Engine) -> AgentAccounts:
    """The agents' accounts, with the master key their secrets derive from (the settings' or the data folder's).

    Raises ValueError (MasterKeyMismatch) when the database was set up with another master key.
    """
    master_key = load_master_key(settings.agent_master_key, settings.data_dir)
    check_master_key(UserStore(engine), master_key)
    return AgentAccounts(AgentStore(engine), master_key)


def account_service(settings: Settings, engine: sa.Engine) -> AccountService:
    """The users, their sessions and API keys."""
    return AccountService(UserStore(engine), settings.session_hours)


@dataclass(frozen=True)
class AgentParts:
    """What the agent API checks and records requests with."""

    agent_store: AgentStore
    authenticator: AgentAuthenticator
    audit: AuditLog


def build_agent_parts(settings: Settings, engine: sa.Engine) -> AgentParts:
    """The agent store, the request authenticator and the audit log on `engine` (see `agent_accounts`)."""
    accounts = agent_accounts(settings, engine)
    return AgentParts(
        agent_store=accounts.store,
        authenticator=AgentAuthenticator(accounts, settings.agent_window_seconds),
        audit=AuditLog(accounts.store),
    )
