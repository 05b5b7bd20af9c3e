"""The progress hub against a real SQLite job store: one poller per job whatever the number of followers."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from orfeas.api.progress import DatabaseGone, ProgressHub
from orfeas.store import JobStore, NewJob, create_db_engine, init_db, new_job_id
from orfeas.store.db import sqlite_url


@pytest.fixture
def store(tmp_path) -> JobStore:
    engine = create_db_engine(sqlite_url(tmp_path))
    init_db(engine)
    return JobStore(engine)


def queued_job(store: JobStore):
    job = NewJob(id=new_job_id(), options={}, batch_key="k", input_name="a.png")
    return store.create_jobs([job], owner="user:local")[0][0]


class CountingReads:
    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.reads = 0
        self.lock = threading.Lock()

    def __call__(self, job_ids):
        with self.lock:
            self.reads += 1
        return self.store.get_many(job_ids)


@pytest.mark.parametrize(("jobs", "per_job"), [(1, 50), (20, 10)])
def test_every_follower_sees_the_end_with_one_read_per_tick(store, jobs, per_job):
    followed = [queued_job(store) for _ in range(jobs)]
    reads = CountingReads(store)
    hub = ProgressHub(reads, poll_seconds=0.02, max_sockets=1000, max_per_client=1000)

    async def follow(job) -> list[str]:
        return [state.status async for state in hub.updates(job)]

    async def scenario():
        followers = [asyncio.create_task(follow(job)) for job in followed for _ in range(per_job)]
        await asyncio.sleep(0.2)
        assert hub.followed_jobs == jobs
        polls_before = reads.reads
        for job in followed:
            store.cancel(job.id)
        seen = await asyncio.gather(*followers)
        return seen, polls_before

    seen, polls_before = asyncio.run(scenario())
    assert all(statuses == ["queued", "canceled"] for statuses in seen)
    assert polls_before <= 0.2 / 0.02 + 2  # one read per tick for all jobs and sockets
    assert hub.followed_jobs == 0


def test_a_finished_job_needs_no_poller(store):
    job = store.cancel(queued_job(store).id)
    hub = ProgressHub(store.get_many, poll_seconds=0.02, max_sockets=10, max_per_client=10)

    async def scenario():
        return [state.status async for state in hub.updates(job)]

    assert asyncio.run(scenario()) == ["canceled"]
    assert hub.reads == 0


def test_followers_give_up_when_the_job_cannot_be_read(store):
    job = queued_job(store)

    def broken(job_ids):
        raise RuntimeError("gone")

    hub = ProgressHub(broken, poll_seconds=0.01, max_sockets=10, max_per_client=10)

    async def scenario():
        async for _state in hub.updates(job):
            pass

    with pytest.raises(DatabaseGone):
        asyncio.run(scenario())


def test_sockets_are_capped_per_client_and_in_total():
    hub = ProgressHub(lambda job_ids: {}, poll_seconds=1, max_sockets=3, max_per_client=2)
    assert hub.admit("a") is None and hub.admit("a") is None
    assert "per client" in hub.admit("a")
    assert hub.admit("b") is None
    assert "retry later" in hub.admit("c")
    hub.release("a")
    assert hub.admit("c") is None
    assert hub.open_sockets == 3


@pytest.fixture
def pg_store(postgres_url) -> JobStore:
    engine = create_db_engine(postgres_url)
    init_db(engine)
    yield JobStore(engine)
    engine.dispose()


def test_postgres_notifications_wake_followers_without_polling(pg_store):
    # the poll interval is far longer than the test: only LISTEN/NOTIFY can deliver the changes in time
    followed = [queued_job(pg_store) for _ in range(5)]
    untouched = queued_job(pg_store)
    reads = CountingReads(pg_store)
    hub = ProgressHub(
        reads,
        poll_seconds=30,
        max_sockets=100,
        max_per_client=100,
        changes=pg_store.change_notifications(),
        fallback_seconds=30,
    )

    async def follow(job) -> list[tuple[str, int]]:
        return [(state.status, state.progress) async for state in hub.updates(job)]

    async def scenario():
        followers = [asyncio.create_task(follow(job)) for job in [*followed, untouched] for _ in range(10)]
        deadline = time.monotonic() + 10
        while not hub.listening and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert hub.listening
        await asyncio.sleep(0.1)
        reads_before = reads.reads
        started = time.monotonic()
        for job in followed:
            await asyncio.to_thread(pg_store.cancel, job.id)
        seen = await asyncio.wait_for(asyncio.gather(*followers[: 10 * len(followed)]), 10)
        elapsed = time.monotonic() - started
        for task in followers[10 * len(followed) :]:
            task.cancel()
        return seen, reads.reads - reads_before, elapsed

    seen, reads_after, elapsed = asyncio.run(scenario())
    assert all(states == [("queued", 0), ("canceled", 0)] for states in seen)
    assert elapsed < 10 and 1 <= reads_after <= len(followed)  # a read per notified change at most, none per socket
    assert hub.followed_jobs == 0


def test_postgres_hub_polls_while_notifications_fail(pg_store):
    job = queued_job(pg_store)

    async def broken_changes():
        raise OSError("connection refused")
        yield None  # an async generator

    hub = ProgressHub(pg_store.get_many, poll_seconds=0.02, max_sockets=10, max_per_client=10, changes=broken_changes)

    async def scenario():
        follower = asyncio.create_task(_statuses(hub, job))
        await asyncio.sleep(0.1)
        await asyncio.to_thread(pg_store.cancel, job.id)
        return await asyncio.wait_for(follower, 5)

    assert asyncio.run(scenario()) == ["queued", "canceled"]


async def _statuses(hub: ProgressHub, job) -> list[str]:
    return [state.status async for state in hub.updates(job)]


def test_sqlite_has_no_notifications(store):
    assert store.change_notifications() is None
