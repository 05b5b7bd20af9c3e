"""The durable job queue: create jobs, claim them in batches under a lease, record progress, finish each exactly once.

Every state change is a conditional UPDATE inside one short transaction, so a worker whose lease expired, or whose
job was canceled, cannot overwrite what happened meanwhile; every status change also writes one `job_events` row.

A worker that dies (a kernel OOM kill is a SIGKILL, so the worker cannot say which job caused it) takes its whole
batch down. Its jobs go back to the queue in their place by submission time, each capped to half the size of the
batch that died (`batch_limit`); the next claims honour the cap, so the batch is retried in halves and then one job
at a time. Only a death while a job ran alone counts against it (`solo_crashes`), so only a job that kills a worker
on its own is failed after `max_attempts`.
"""

import dataclasses
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from orfeas.errors import OrfeasError
from orfeas.store.db import SingleReads, as_utc, iso_timestamps, read_only, utcnow
from orfeas.store.notify import JobChanges, QueueWatch, job_changes_for, queue_watch_for
from orfeas.store.schema import FINISHED_STATUSES, JobStatus, job_events, jobs

_ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)
_QUEUE_ORDER = (jobs.c.created_at, jobs.c.request_index, jobs.c.id)
_IDS_PER_QUERY = 500  # ids per IN (...) list: bounded statements however many are asked about
_CLAIMABLE = sa.and_(jobs.c.status == JobStatus.QUEUED, sa.not_(jobs.c.cancel_requested))


class JobNotFound(OrfeasError):
    """No job has this id: it never existed, or retention deleted it."""


@dataclass(frozen=True)
class NewJob:
    """A job to enqueue. The caller picks the id (see `new_job_id`) so it can store the input before the row exists."""

    id: str
    options: dict[str, Any]
    batch_key: str
    input_name: str


@dataclass(frozen=True)
class JobRecord:
    """One row of the jobs table; timestamps are timezone-aware UTC."""

    id: str
    status: JobStatus
    progress: int
    stage: str | None
    options: dict[str, Any]
    batch_key: str
    input_name: str
    idempotency_key: str | None
    request_index: int
    owner: str
    attempts: int
    batch_size: int | None
    batch_limit: int | None
    solo_crashes: int
    error: str | None
    profile: dict[str, Any] | None
    result: dict[str, Any] | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    cancel_requested: bool
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def finished(self) -> bool:
        """True once the job succeeded, failed or was canceled; it will not change again."""
        return self.status in FINISHED_STATUSES

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready values (status as a plain string, timestamps in ISO 8601)."""
        out = dataclasses.asdict(self)
        out["status"] = self.status.value
        return iso_timestamps(out)

    @classmethod
    def from_row(cls, row: sa.Row[*tuple[Any, ...]]) -> "JobRecord":
        """Build a record from a `jobs` row, normalising what the database returns."""
        return cls.from_mapping(dict(row._mapping))

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> "JobRecord":
        """Build a record from a `jobs` row's columns by name (the dict is changed in place)."""
        values["status"] = JobStatus(values["status"])
        for field in ("lease_expires_at", "created_at", "updated_at", "started_at", "finished_at"):
            values[field] = as_utc(values[field])
        return cls(**values)


def new_job_id() -> str:
    """A fresh job id (uuid4 hex, 32 characters)."""
    return uuid.uuid4().hex


def _owned_by(worker_id: str) -> sa.ColumnElement[bool]:
    return sa.and_(jobs.c.status == JobStatus.RUNNING, jobs.c.lease_owner == worker_id)


def _lock_owned(conn: sa.Connection, worker_id: str, job_ids: Sequence[str]) -> set[str]:
    """The ids among `job_ids` that `worker_id` runs, locked until the transaction ends.

    FOR UPDATE keeps them ours until the caller's update (a PostgreSQL SELECT alone does not: a requeue and a new
    claim could commit in between); on SQLite the write transaction already holds the database lock. Locking in id
    order gives every caller one lock order, so two of them cannot deadlock.
    """
    owned = sa.select(jobs.c.id).where(jobs.c.id.in_(job_ids), _owned_by(worker_id)).order_by(jobs.c.id)
    return set(conn.scalars(owned.with_for_update()))


def _record_events(
    conn: sa.Connection,
    job_ids: Sequence[str],
    status: JobStatus,
    at: datetime,
    worker: str | None = None,
    detail: str | None = None,
) -> None:
    if job_ids:
        rows = [{"job_id": i, "status": status, "at": at, "worker": worker, "detail": detail} for i in job_ids]
        conn.execute(job_events.insert(), rows)


_JOB_BY_ID = sa.select(jobs).where(jobs.c.id == sa.bindparam("job_id"))  # built once: status polling's read


class JobStore:
    """The jobs and job_events tables used as a queue; every method is one short transaction.

    `now` is the clock (timezone-aware), injectable so tests can expire leases without waiting.
    """

    def __init__(self, engine: sa.Engine, now: Callable[[], datetime] = utcnow) -> None:
        self._engine = engine
        self._clock = now
        self._single_read = SingleReads(engine)
        self.local_reads = engine.dialect.name == "sqlite"  # reads are page reads on this machine, not round trips

    def change_notifications(self) -> JobChanges | None:
        """The ids of jobs as their status or progress changes, where the database announces them (PostgreSQL);
        None elsewhere."""
        return job_changes_for(self._engine)

    def queue_watch(self) -> QueueWatch:
        """A new watch that ends an idle worker's wait when jobs may have been queued (store.notify)."""
        return queue_watch_for(self._engine, sa.select(jobs.c.id).where(_CLAIMABLE).limit(1))

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the clock must return timezone-aware datetimes")
        return now.astimezone(UTC)

    def create_jobs(
        self, new_jobs: list[NewJob], *, owner: str, idempotency_key: str | None = None
    ) -> tuple[list[JobRecord], bool]:
        """Enqueue the jobs of one request for `owner`; returns the records and whether they were created now.

        With an idempotency key already used by this owner, nothing is inserted and the earlier request's jobs come
        back in request order, with False.
        """
        request_owner = owner
        try:
            with self._engine.begin() as conn:
                if idempotency_key is not None:
                    existing = self._request_jobs(conn, idempotency_key, request_owner)
                    if existing:
                        return existing, False
                now = self._now()
                rows = [
                    {
                        "id": job.id,
                        "status": JobStatus.QUEUED,
                        "progress": 0,
                        "options": job.options,
                        "batch_key": job.batch_key,
                        "input_name": job.input_name,
                        "idempotency_key": idempotency_key,
                        "request_index": index,
                        "owner": request_owner,
                        "attempts": 0,
                        "solo_crashes": 0,
                        "cancel_requested": False,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for index, job in enumerate(new_jobs)
                ]
                if not rows:
                    return [], True
                inserted = conn.execute(jobs.insert().returning(*jobs.c, sort_by_parameter_order=True), rows).all()
                _record_events(conn, [job.id for job in new_jobs], JobStatus.QUEUED, now)
        except IntegrityError:
            # A concurrent request with the same key committed first (the unique index caught it): answer with its jobs.
            if idempotency_key is None:
                raise
            with read_only(self._engine) as conn:
                existing = self._request_jobs(conn, idempotency_key, request_owner)
            if not existing:
                raise
            return existing, False
        return [JobRecord.from_row(row) for row in inserted], True

    @staticmethod
    def _request_jobs(conn: sa.Connection, idempotency_key: str, owner: str) -> list[JobRecord]:
        query = (
            sa.select(jobs)
            .where(jobs.c.idempotency_key == idempotency_key, jobs.c.owner == owner)
            .order_by(jobs.c.request_index)
        )
        return [JobRecord.from_row(row) for row in conn.execute(query)]

    def get(self, job_id: str) -> JobRecord:
        """The job with this id; raises JobNotFound."""
        values = self._single_read.first(_JOB_BY_ID, {"job_id": job_id})
        if values is None:
            raise JobNotFound(job_id)
        return JobRecord.from_mapping(values)

    def still_owned(self, worker_id: str, job_ids: Sequence[str]) -> set[str]:
        """Which of these jobs `worker_id` still holds (a canceled or taken-over job is no longer held)."""
        if not job_ids:
            return set()
        with self._single_read() as conn:
            query = sa.select(jobs.c.id).where(jobs.c.id.in_(list(job_ids)), _owned_by(worker_id))
            return set(conn.scalars(query))

    def get_many(self, job_ids: Sequence[str]) -> dict[str, JobRecord]:
        """The jobs with these ids that exist, by id, in one read."""
        if not job_ids:
            return {}
        with self._single_read() as conn:
            rows = conn.execute(sa.select(jobs).where(jobs.c.id.in_(list(job_ids)))).all()
        return {row.id: JobRecord.from_row(row) for row in rows}

    def list_jobs(
        self, limit: int, offset: int = 0, status: str | None = None, owner: str | None = None
    ) -> tuple[list[JobRecord], int]:
        """One page of jobs, newest first, and how many match in all; None filters match everything."""
        conditions = []
        if status is not None:
            conditions.append(jobs.c.status == status)
        if owner is not None:
            conditions.append(jobs.c.owner == owner)
        newest_first = [column.desc() for column in _QUEUE_ORDER]
        with read_only(self._engine) as conn:
            total = conn.scalar(sa.select(sa.func.count()).select_from(jobs).where(*conditions))
            rows = conn.execute(sa.select(jobs).where(*conditions).order_by(*newest_first).limit(limit).offset(offset))
            return [JobRecord.from_row(row) for row in rows], total or 0

    def claim_batch(self, worker_id: str, max_jobs: int, lease_seconds: float) -> list[JobRecord]:
        """Take the oldest queued job and up to `max_jobs - 1` more with its batch key, oldest first; [] if none.

        A batch is no larger than the oldest job's `batch_limit`, and takes only companions whose own limit allows
        a batch that large. The claimed jobs are running under a lease held by `worker_id` until
        `now + lease_seconds`.
        """
        if max_jobs < 1:
            raise ValueError(f"max_jobs must be at least 1, got {max_jobs}")
        with self._engine.begin() as conn:
            # PostgreSQL: SKIP LOCKED lets concurrent claimers pass over rows another claimer is taking instead of
            # waiting for them. SQLite renders no FOR UPDATE; there BEGIN IMMEDIATE makes the whole claim exclusive.
            oldest = sa.select(jobs.c.batch_key, jobs.c.batch_limit).where(_CLAIMABLE).order_by(*_QUEUE_ORDER).limit(1)
            head = conn.execute(oldest.with_for_update(skip_locked=True)).first()
            if head is None:
                return []
            size = min(max_jobs, head.batch_limit or max_jobs)
            same_key = (
                sa.select(jobs.c.id)
                .where(
                    _CLAIMABLE,
                    jobs.c.batch_key == head.batch_key,
                    sa.or_(jobs.c.batch_limit.is_(None), jobs.c.batch_limit >= size),
                )
                .order_by(*_QUEUE_ORDER)
                .limit(size)
            )
            job_ids = conn.scalars(same_key.with_for_update(skip_locked=True)).all()
            now = self._now()
            claim = (
                sa.update(jobs)
                .where(jobs.c.id.in_(job_ids), _CLAIMABLE)
                .values(
                    status=JobStatus.RUNNING,
                    attempts=jobs.c.attempts + 1,
                    batch_size=len(job_ids),
                    lease_owner=worker_id,
                    lease_expires_at=now + timedelta(seconds=lease_seconds),
                    started_at=sa.func.coalesce(jobs.c.started_at, now),
                    stage="starting",
                    progress=0,
                    updated_at=now,
                )
                .returning(*jobs.c)
            )
            claimed = [JobRecord.from_row(row) for row in conn.execute(claim)]
            _record_events(conn, [job.id for job in claimed], JobStatus.RUNNING, now, worker=worker_id)
        return sorted(claimed, key=lambda job: (job.created_at, job.request_index, job.id))

    def renew_leases(self, worker_id: str, job_ids: Sequence[str], lease_seconds: float) -> int:
        """Extend the leases of those jobs still running under `worker_id`; returns how many were extended."""
        if not job_ids:
            return 0
        with self._engine.begin() as conn:
            expires = self._now() + timedelta(seconds=lease_seconds)
            renew = sa.update(jobs).where(jobs.c.id.in_(job_ids), _owned_by(worker_id)).values(lease_expires_at=expires)
            return conn.execute(renew).rowcount

    def update_progress(self, job_id: str, worker_id: str, progress: int, stage: str) -> bool:
        """Record progress (0-100) of a job `worker_id` runs; False if it no longer does (canceled, taken over)."""
        return job_id in self.update_progress_many(worker_id, {job_id: (progress, stage)})

    def update_progress_many(self, worker_id: str, updates: dict[str, tuple[int, str]]) -> set[str]:
        """Record {job_id: (progress, stage)} in one transaction; returns the ids `worker_id` still runs."""
        for progress, _stage in updates.values():
            if not 0 <= progress <= 100:
                raise ValueError(f"progress must be within 0-100, got {progress}")
        if not updates:
            return set()
        with self._engine.begin() as conn:
            ours = _lock_owned(conn, worker_id, list(updates))
            rows = [
                {"job_id": job_id, "progress": progress, "stage": stage}
                for job_id, (progress, stage) in updates.items()
                if job_id in ours
            ]
            if rows:
                update = (
                    sa.update(jobs)
                    .where(jobs.c.id == sa.bindparam("job_id"))
                    .values(progress=sa.bindparam("progress"), stage=sa.bindparam("stage"), updated_at=self._now())
                )
                conn.execute(update, rows)
        return ours

    def complete_many(self, worker_id: str, outcomes: Sequence[tuple[str, dict[str, Any], dict[str, Any]]]) -> set[str]:
        """Mark several jobs succeeded in one transaction, given (job_id, result, profile) each; returns the ids
        that were still running under `worker_id` (the others are left as they are)."""
        if not outcomes:
            return set()
        with self._engine.begin() as conn:
            now = self._now()
            ours = _lock_owned(conn, worker_id, [job_id for job_id, _, _ in outcomes])
            rows = [
                {"job_id": job_id, "result": result, "profile": profile}
                for job_id, result, profile in outcomes
                if job_id in ours
            ]
            if rows:
                update = (
                    sa.update(jobs)
                    .where(jobs.c.id == sa.bindparam("job_id"))
                    .values(
                        status=JobStatus.SUCCEEDED,
                        progress=100,
                        stage="done",
                        result=sa.bindparam("result", type_=jobs.c.result.type),
                        profile=sa.bindparam("profile", type_=jobs.c.profile.type),
                        finished_at=now,
                        updated_at=now,
                        lease_owner=None,
                        lease_expires_at=None,
                    )
                )
                conn.execute(update, rows)
                _record_events(conn, sorted(ours), JobStatus.SUCCEEDED, now, worker=worker_id)
        return ours

    def complete(self, job_id: str, worker_id: str, result: dict[str, Any], profile: dict[str, Any]) -> bool:
        """Mark a job `worker_id` runs as succeeded; False if it no longer runs it, so a job succeeds at most once."""
        return job_id in self.complete_many(worker_id, [(job_id, result, profile)])

    def fail(self, job_id: str, worker_id: str | None, error: str, profile: dict[str, Any] | None = None) -> bool:
        """Mark a job as failed with an error message; False if it was not running under `worker_id`.

        With `worker_id` None there is no ownership check: any queued or running job fails (a job refused before a
        worker claimed it).
        """
        owned = _owned_by(worker_id) if worker_id is not None else jobs.c.status.in_(_ACTIVE_STATUSES)
        with self._engine.begin() as conn:
            now = self._now()
            values: dict[str, Any] = {
                "status": JobStatus.FAILED,
                "error": error,
                "finished_at": now,
                "updated_at": now,
                "lease_owner": None,
                "lease_expires_at": None,
            }
            if profile is not None:
                values["profile"] = profile
            if conn.execute(sa.update(jobs).where(jobs.c.id == job_id, owned).values(values)).rowcount != 1:
                return False
            _record_events(conn, [job_id], JobStatus.FAILED, now, worker=worker_id, detail=error)
        return True

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a queued or running job and return it; a finished job comes back unchanged. Raises JobNotFound.

        A running job's worker finds out when its next `update_progress` or `complete` returns False.
        """
        with self._engine.begin() as conn:
            now = self._now()
            cancel = (
                sa.update(jobs)
                .where(jobs.c.id == job_id, jobs.c.status.in_(_ACTIVE_STATUSES))
                .values(
                    status=JobStatus.CANCELED,
                    cancel_requested=True,
                    finished_at=now,
                    updated_at=now,
                    lease_owner=None,
                    lease_expires_at=None,
                )
                .returning(*jobs.c)
            )
            row = conn.execute(cancel).first()
            if row is not None:
                _record_events(conn, [job_id], JobStatus.CANCELED, now)
            else:
                row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
        if row is None:
            raise JobNotFound(job_id)
        return JobRecord.from_row(row)

    def requeue_expired(self, max_attempts: int = 3) -> tuple[list[str], list[str]]:
        """Recover running jobs whose lease expired (their worker died or hung); returns (requeued ids, failed ids).

        A job claimed in a batch of n > 1 is not charged (which of the n killed the worker is unknown): it goes
        back capped to batches of n // 2. A job that was alone gets a solo crash; after `max_attempts` of
        those it fails instead of going back, so one job that crashes every worker cannot take the service down
        forever, while the jobs that shared its batches run on.
        """
        requeued: list[str] = []
        failed: list[str] = []
        with self._engine.begin() as conn:
            now = self._now()
            expired_lease = sa.and_(jobs.c.status == JobStatus.RUNNING, jobs.c.lease_expires_at < now)
            query = sa.select(jobs.c.id, jobs.c.batch_size, jobs.c.solo_crashes, jobs.c.lease_owner)
            for job in conn.execute(query.where(expired_lease).with_for_update(skip_locked=True)).all():
                size = job.batch_size or 1
                crashes = job.solo_crashes + 1 if size == 1 else job.solo_crashes
                if size == 1 and crashes >= max_attempts:
                    detail = f"worker stopped responding {crashes} times while running this job alone"
                    status, outcome = JobStatus.FAILED, failed
                    values = {"status": status, "error": detail, "finished_at": now}
                else:
                    status, detail, outcome = JobStatus.QUEUED, "lease expired", requeued
                    values = {"status": status, "stage": None, "progress": 0, "batch_limit": max(size // 2, 1)}
                values |= {"solo_crashes": crashes, "lease_owner": None, "lease_expires_at": None, "updated_at": now}
                if conn.execute(sa.update(jobs).where(jobs.c.id == job.id, expired_lease).values(values)).rowcount:
                    outcome.append(job.id)
                    _record_events(conn, [job.id], status, now, worker=job.lease_owner, detail=detail)
        return requeued, failed

    def requeue_owned(self, worker_id: str) -> list[str]:
        """Put a worker's running jobs back in the queue at once (clean shutdown); the attempt does not count."""
        with self._engine.begin() as conn:
            now = self._now()
            requeue = (
                sa.update(jobs)
                .where(_owned_by(worker_id))
                .values(
                    status=JobStatus.QUEUED,
                    attempts=jobs.c.attempts - 1,
                    lease_owner=None,
                    lease_expires_at=None,
                    stage=None,
                    progress=0,
                    updated_at=now,
                )
                .returning(jobs.c.id)
            )
            job_ids = list(conn.scalars(requeue))
            _record_events(conn, job_ids, JobStatus.QUEUED, now, worker=worker_id, detail="worker shut down")
        return job_ids

    def count_by_status(self) -> dict[str, int]:
        """How many jobs are in each status, every status present."""
        counts = {status.value: 0 for status in JobStatus}
        with read_only(self._engine) as conn:
            for status, count in conn.execute(sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status)):
                counts[status] = count
        return counts

    def next_queued(self) -> JobRecord | None:
        """The job the next claim would start from (the oldest claimable one), without claiming it."""
        with read_only(self._engine) as conn:
            row = conn.execute(sa.select(jobs).where(_CLAIMABLE).order_by(*_QUEUE_ORDER).limit(1)).first()
        return JobRecord.from_row(row) if row else None

    def find_idempotent(self, idempotency_key: str, owner: str) -> list[JobRecord]:
        """The jobs an earlier request with this idempotency key created, in request order ([] if none)."""
        with read_only(self._engine) as conn:
            return self._request_jobs(conn, idempotency_key, owner)

    def queue_depth(self) -> int:
        """How many jobs wait to be claimed."""
        with read_only(self._engine) as conn:
            return conn.scalar(sa.select(sa.func.count()).select_from(jobs).where(_CLAIMABLE)) or 0

    def recent_profiles(self, limit: int = 1000) -> list[dict[str, Any]]:
        """The profiles of the most recently succeeded jobs, newest first."""
        query = (
            sa.select(jobs.c.profile)
            .where(jobs.c.status == JobStatus.SUCCEEDED, jobs.c.profile.is_not(None))
            .order_by(jobs.c.finished_at.desc(), jobs.c.id.desc())
            .limit(limit)
        )
        with read_only(self._engine) as conn:
            return list(conn.scalars(query))

    def existing_ids(self, job_ids: Sequence[str]) -> set[str]:
        """The ids among `job_ids` that have a job row."""
        found: set[str] = set()
        with read_only(self._engine) as conn:
            for start in range(0, len(job_ids), _IDS_PER_QUERY):
                chunk = list(job_ids[start : start + _IDS_PER_QUERY])
                found.update(conn.scalars(sa.select(jobs.c.id).where(jobs.c.id.in_(chunk))))
        return found

    def delete_finished_before(self, cutoff: datetime) -> list[str]:
        """Delete finished jobs (and their events) that finished before `cutoff`; returns their ids."""
        if cutoff.tzinfo is None:
            raise ValueError("cutoff must be timezone-aware")
        old = sa.and_(jobs.c.status.in_(FINISHED_STATUSES), jobs.c.finished_at < cutoff.astimezone(UTC))
        with self._engine.begin() as conn:
            # Explicit rather than relying on ON DELETE CASCADE alone, which SQLite honours only with foreign_keys on.
            conn.execute(sa.delete(job_events).where(job_events.c.job_id.in_(sa.select(jobs.c.id).where(old))))
            return list(conn.scalars(sa.delete(jobs).where(old).returning(jobs.c.id)))

    def events(self, job_id: str) -> list[dict[str, Any]]:
        """A job's status changes, oldest first, as JSON-ready dicts; [] for an unknown id."""
        query = (
            sa.select(job_events.c.status, job_events.c.at, job_events.c.worker, job_events.c.detail)
            .where(job_events.c.job_id == job_id)
            .order_by(job_events.c.id)
        )
        with read_only(self._engine) as conn:
            return [
                {"status": row.status, "at": as_utc(row.at).isoformat(), "worker": row.worker, "detail": row.detail}
                for row in conn.execute(query)
            ]
