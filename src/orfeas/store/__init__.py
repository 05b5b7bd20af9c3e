"""Durable state of the service: the job queue in SQLite or PostgreSQL. No business rules live here."""

from orfeas.store.db import create_db_engine, sqlite_url
from orfeas.store.jobs import JobNotFound, JobRecord, JobStore, NewJob, new_job_id
from orfeas.store.migrate import init_db
from orfeas.store.schema import FINISHED_STATUSES, JobStatus

__all__ = [
    "FINISHED_STATUSES",
    "JobNotFound",
    "JobRecord",
    "JobStatus",
    "JobStore",
    "NewJob",
    "create_db_engine",
    "init_db",
    "new_job_id",
    "sqlite_url",
]
