"""The queue watch an idle worker waits on (store/notify.py), on a real SQLite file and a real PostgreSQL: it
returns as soon as another connection queues jobs, however long the wait it was given."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa

from orfeas.store import JobStore, NewJob, new_job_id
from orfeas.store.notify import LISTEN_CHECK_SECONDS, PostgresQueueWatch, QueueWatch

LONG = 30.0  # a wait far longer than any test: only the watch can end it early


@pytest.fixture
def watch(engine: sa.Engine) -> Iterator[QueueWatch]:
    watch = JobStore(engine).queue_watch()
    yield watch
    watch.close()


def enqueue(store: JobStore) -> str:
    job_id = new_job_id()
    store.create_jobs([NewJob(job_id, {}, "key", "a.png")], owner="user:test")
    return job_id


def waits_for(watch: QueueWatch, action: Callable[[], object], timeout: float = LONG) -> tuple[bool, float]:
    """Run `action` from another thread once the watch waits; (what wait returned, seconds it took)."""
    watch.wait(0.01, threading.Event())  # connected and listening before the action
    timer = threading.Timer(0.2, action)
    started = time.monotonic()
    timer.start()
    try:
        return watch.wait(timeout, threading.Event()), time.monotonic() - started
    finally:
        timer.join()


def test_a_job_queued_by_another_connection_ends_the_wait(engine: sa.Engine, watch: QueueWatch) -> None:
    store = JobStore(engine)
    heard, seconds = waits_for(watch, lambda: enqueue(store))
    assert heard
    assert seconds < 5.0


def test_a_requeued_job_ends_the_wait(engine: sa.Engine, watch: QueueWatch) -> None:
    store = JobStore(engine)
    enqueue(store)
    (job,) = store.claim_batch("w1", max_jobs=1, lease_seconds=30)
    heard, seconds = waits_for(watch, lambda: store.requeue_owned("w1"))
    assert heard
    assert seconds < 5.0
    assert store.get(job.id).status == "queued"


def test_the_wait_lasts_its_timeout_when_nothing_is_queued(watch: QueueWatch) -> None:
    started = time.monotonic()
    assert not watch.wait(0.3, threading.Event())
    assert 0.29 <= time.monotonic() - started < 3.0


def test_an_interrupt_ends_the_wait_at_once(watch: QueueWatch) -> None:
    interrupt = threading.Event()
    threading.Timer(0.2, interrupt.set).start()
    started = time.monotonic()
    assert not watch.wait(LONG, interrupt)
    assert time.monotonic() - started < 0.2 + LISTEN_CHECK_SECONDS + 1.0


def test_other_writes_are_not_a_queue_change(engine: sa.Engine, watch: QueueWatch) -> None:
    """A running batch's progress writes (and the API's other writes) do not wake idle workers: PostgreSQL's
    trigger notifies queued rows only, SQLite's watch looks for a waiting job after each commit it sees."""
    store = JobStore(engine)
    job_id = enqueue(store)
    store.claim_batch("w1", max_jobs=1, lease_seconds=30)
    watch.wait(0.5, threading.Event())  # the notification of the insert, if it came after the first wait began
    heard, _seconds = waits_for(watch, lambda: store.update_progress_many("w1", {job_id: (50, "mesh_cleanup")}), 1.0)
    assert not heard


def test_a_watch_on_a_database_that_is_gone_waits_plainly() -> None:
    """A broken watch never takes the worker down: the wait lasts its timeout and the worker's own queue check
    reports the database's trouble."""
    watch = PostgresQueueWatch("postgresql://postgres@127.0.0.1:1/nowhere")
    started = time.monotonic()
    assert not watch.wait(0.3, threading.Event())
    assert time.monotonic() - started < 10.0
    watch.close()
