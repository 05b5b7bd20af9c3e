"""The progress hub against a real SQLite job store: one poller per job whatever the number of followers."""

from __future__ import annotations

import asyncio
import threading

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
