"""Races between workers that only a real PostgreSQL shows: READ COMMITTED lets another transaction change a row
between a worker's SELECT and its UPDATE unless the SELECT locks the row (SQLite's BEGIN IMMEDIATE serializes
everything, so these cannot happen there)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from orfeas.store import JobStore, NewJob, create_db_engine, init_db, new_job_id
from orfeas.store.schema import jobs


@pytest.fixture
def engine(postgres_url: str) -> Iterator[sa.Engine]:
    engine = create_db_engine(postgres_url, "orfeas-test")
    init_db(engine)
    yield engine
    engine.dispose()


def claimed_job(store: JobStore) -> str:
    job_id = new_job_id()
    store.create_jobs([NewJob(id=job_id, options={}, batch_key="k", input_name="a.png")], owner="user:test")
    (job,) = store.claim_batch("slow-worker", 1, 30)
    return job.id


def taken_over_while_waiting(engine: sa.Engine, job_id: str, call) -> object:
    """Run `call` while another transaction holds the job's row, and move the job to another worker (as a requeue
    and a new claim would) before letting go; returns what `call` returned."""
    outcome = {}
    with engine.connect() as other:
        other.execute(sa.select(jobs.c.id).where(jobs.c.id == job_id).with_for_update())
        thread = threading.Thread(target=lambda: outcome.setdefault("value", call()))
        thread.start()
        thread.join(timeout=1.0)  # `call` waits for the row (or, without a lock, has already gone ahead)
        other.execute(sa.update(jobs).where(jobs.c.id == job_id).values(lease_owner="fast-worker", attempts=2))
        other.commit()
    thread.join(timeout=10)
    return outcome["value"]


def test_a_completion_racing_a_takeover_leaves_the_job_to_its_new_worker(engine):
    store = JobStore(engine)
    job_id = claimed_job(store)
    done = taken_over_while_waiting(engine, job_id, lambda: store.complete_many("slow-worker", [(job_id, {}, {})]))
    assert done == set()
    job = store.get(job_id)
    assert job.status == "running" and job.lease_owner == "fast-worker"


def test_a_progress_write_racing_a_takeover_is_dropped(engine):
    store = JobStore(engine)
    job_id = claimed_job(store)
    ours = taken_over_while_waiting(
        engine, job_id, lambda: store.update_progress_many("slow-worker", {job_id: (50, "x")})
    )
    assert ours == set()
    assert store.get(job_id).stage == "starting"
