"""The job store against real SQLite files and, where one is reachable, a real PostgreSQL server."""

import json
import multiprocessing
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from orfeas.store import JobNotFound, JobRecord, JobStatus, JobStore, NewJob, create_db_engine, new_job_id
from orfeas.store.db import sqlite_url
from orfeas.store.schema import job_events, jobs

LEASE = 30.0


class StepClock:
    """A clock that moves 1 ms at every reading (so creation order is strict) and further on demand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> StepClock:
    return StepClock()


@pytest.fixture
def store(engine: sa.Engine, clock: StepClock) -> JobStore:
    return JobStore(engine, now=clock)


def enqueue(
    store: JobStore,
    batch_key: str = "inflate-512",
    count: int = 1,
    idempotency_key: str | None = None,
    owner: str = "user:test",
) -> list[JobRecord]:
    new = [
        NewJob(id=new_job_id(), options={"generator": batch_key, "n": i}, batch_key=batch_key, input_name=f"{i}.png")
        for i in range(count)
    ]
    records, created = store.create_jobs(new, idempotency_key=idempotency_key, owner=owner)
    assert created
    return records


def ids(records: list[JobRecord]) -> list[str]:
    return [record.id for record in records]


def succeeded_events(engine: sa.Engine) -> Counter:
    query = sa.select(job_events.c.job_id).where(job_events.c.status == "succeeded")
    with engine.connect() as conn:
        return Counter(conn.scalars(query))


def test_created_jobs_read_back_queued(store: JobStore, clock: StepClock) -> None:
    created = enqueue(store, "inflate-512", count=3, owner="agent-1")

    assert [job.request_index for job in created] == [0, 1, 2]
    first = store.get(created[0].id)
    assert first == created[0]
    assert first.status is JobStatus.QUEUED
    assert (first.progress, first.attempts, first.stage, first.cancel_requested) == (0, 0, None, False)
    assert first.options == {"generator": "inflate-512", "n": 0}
    assert (first.owner, first.input_name, first.result, first.profile) == ("agent-1", "0.png", None, None)
    assert first.created_at.tzinfo is not None and first.created_at.utcoffset() == timedelta(0)
    assert first.created_at <= clock.now

    data = json.loads(json.dumps(first.to_dict()))
    assert data["status"] == "queued"
    assert datetime.fromisoformat(data["created_at"]) == first.created_at
    assert [event["status"] for event in store.events(first.id)] == ["queued"]


def test_unknown_job_is_not_found(store: JobStore) -> None:
    with pytest.raises(JobNotFound):
        store.get("0" * 32)
    with pytest.raises(JobNotFound):
        store.cancel("0" * 32)


def test_idempotent_create_returns_the_first_jobs_and_inserts_nothing(store: JobStore) -> None:
    first = enqueue(store, count=2, idempotency_key="req-1", owner="agent-1")

    again = [NewJob(id=new_job_id(), options={}, batch_key="inflate-512", input_name="x.png") for _ in range(2)]
    records, created = store.create_jobs(again, idempotency_key="req-1", owner="agent-1")

    assert not created
    assert ids(records) == ids(first)
    assert store.count_by_status()["queued"] == 2
    for job in again:
        with pytest.raises(JobNotFound):
            store.get(job.id)


def test_idempotency_keys_are_per_owner(store: JobStore) -> None:
    enqueue(store, idempotency_key="req-1", owner="agent-1")
    enqueue(store, idempotency_key="req-1", owner="agent-2")
    local = enqueue(store, idempotency_key="req-1", owner="user:local")
    enqueue(store)  # no key: never deduplicated
    enqueue(store)

    again, created = store.create_jobs(
        [NewJob(new_job_id(), {}, "inflate-512", "x.png")], idempotency_key="req-1", owner="user:local"
    )

    assert not created
    assert ids(again) == ids(local)
    assert store.count_by_status()["queued"] == 5


def test_concurrent_identical_requests_create_one_set_of_jobs(engine: sa.Engine) -> None:
    store = JobStore(engine)
    outcomes: list[tuple[list[str], bool]] = []
    start = threading.Barrier(6)

    def submit() -> None:
        new = [NewJob(new_job_id(), {}, "inflate-512", f"{i}.png") for i in range(3)]
        start.wait()
        records, created = store.create_jobs(new, idempotency_key="same", owner="agent-1")
        outcomes.append((ids(records), created))

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(created for _, created in outcomes) == [False] * 5 + [True]
    assert len({tuple(job_ids) for job_ids, _ in outcomes}) == 1
    assert store.count_by_status()["queued"] == 3


def test_list_jobs_newest_first_with_total_and_filters(store: JobStore) -> None:
    mine = enqueue(store, count=3, owner="agent-1")
    theirs = enqueue(store, count=2, owner="agent-2")
    store.cancel(mine[0].id)

    page, total = store.list_jobs(limit=2, offset=0)
    assert total == 5
    assert ids(page) == [theirs[1].id, theirs[0].id]
    page, total = store.list_jobs(limit=10, offset=2)
    assert ids(page) == [mine[2].id, mine[1].id, mine[0].id]

    page, total = store.list_jobs(limit=10, owner="agent-1", status="queued")
    assert (ids(page), total) == ([mine[2].id, mine[1].id], 2)


def test_claim_takes_the_oldest_keys_jobs_only_oldest_first(store: JobStore, clock: StepClock) -> None:
    a1 = enqueue(store, "a", count=2)
    b = enqueue(store, "b", count=3)
    a2 = enqueue(store, "a", count=2)

    batch = store.claim_batch("w1", max_jobs=8, lease_seconds=LEASE)

    assert ids(batch) == ids(a1 + a2)
    for job in batch:
        assert job.status is JobStatus.RUNNING
        assert (job.attempts, job.lease_owner, job.stage, job.progress) == (1, "w1", "starting", 0)
        assert (job.batch_size, job.batch_limit, job.solo_crashes) == (4, None, 0)
        assert job.started_at is not None
        assert clock.now < job.lease_expires_at <= clock.now + timedelta(seconds=LEASE)
    assert ids(store.claim_batch("w1", max_jobs=8, lease_seconds=LEASE)) == ids(b)
    assert store.claim_batch("w1", max_jobs=8, lease_seconds=LEASE) == []
    assert [event["status"] for event in store.events(b[0].id)] == ["queued", "running"]
    assert store.events(b[0].id)[1]["worker"] == "w1"


def test_claim_respects_max_jobs(store: JobStore) -> None:
    queued = enqueue(store, "a", count=5)

    sizes = []
    while batch := store.claim_batch("w1", max_jobs=2, lease_seconds=LEASE):
        sizes.append(len(batch))
    assert sizes == [2, 2, 1]
    assert store.count_by_status()["running"] == len(queued)
    with pytest.raises(ValueError):
        store.claim_batch("w1", max_jobs=0, lease_seconds=LEASE)


def test_claim_skips_canceled_jobs(store: JobStore) -> None:
    first, second = enqueue(store, "a", count=2)
    store.cancel(first.id)

    assert ids(store.claim_batch("w1", max_jobs=8, lease_seconds=LEASE)) == [second.id]


def claim_until_empty(store: JobStore, worker_id: str, max_jobs: int) -> list[list[JobRecord]]:
    batches = []
    while batch := store.claim_batch(worker_id, max_jobs=max_jobs, lease_seconds=LEASE):
        batches.append(batch)
    return batches


def test_threads_claiming_concurrently_never_share_a_job(engine: sa.Engine) -> None:
    store = JobStore(engine)
    queued = [job for _ in range(20) for key in ("a", "b", "c") for job in enqueue(store, key, count=2)]
    batches: list[list[JobRecord]] = []
    start = threading.Barrier(4)

    def claim(worker_id: str) -> None:
        start.wait()
        batches.extend(claim_until_empty(store, worker_id, max_jobs=3))

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    claimed = [job.id for batch in batches for job in batch]
    assert len(claimed) == len(set(claimed))
    assert set(claimed) == set(ids(queued))
    assert all(len({job.batch_key for job in batch}) == 1 for batch in batches)


def claim_in_process(url: str, worker_id: str, start, results) -> None:
    """Runs in a spawned process with its own engine, as a separate worker would."""
    engine = create_db_engine(url)
    store = JobStore(engine)
    start.wait()
    batches = claim_until_empty(store, worker_id, max_jobs=2)
    results.put([[(job.id, job.batch_key) for job in batch] for batch in batches])
    engine.dispose()


def test_processes_claiming_concurrently_never_share_a_job(db_url: str, engine: sa.Engine) -> None:
    store = JobStore(engine)
    queued = [job for _ in range(40) for key in ("a", "b") for job in enqueue(store, key, count=2)]
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(3)
    results = context.Queue()
    processes = [context.Process(target=claim_in_process, args=(db_url, f"proc{i}", start, results)) for i in range(3)]
    for process in processes:
        process.start()
    per_process = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=10)
        assert process.exitcode == 0

    batches = [batch for batches in per_process for batch in batches]
    claimed = [job_id for batch in batches for job_id, _ in batch]
    assert len(claimed) == len(set(claimed))
    assert set(claimed) == set(ids(queued))
    assert all(len({key for _, key in batch}) == 1 for batch in batches)
    assert store.count_by_status()["running"] == len(queued)


def test_only_the_lease_owner_reports_progress_completes_or_fails(store: JobStore) -> None:
    enqueue(store, count=2)
    job, other = store.claim_batch("w1", max_jobs=2, lease_seconds=LEASE)

    assert not store.update_progress(job.id, "w2", 50, "generating")
    assert store.update_progress(job.id, "w1", 50, "generating")
    assert (store.get(job.id).progress, store.get(job.id).stage) == (50, "generating")
    with pytest.raises(ValueError):
        store.update_progress(job.id, "w1", 101, "generating")

    assert not store.complete(job.id, "w2", {"glb": "model.glb"}, {"total_s": 1.0})
    assert store.complete(job.id, "w1", {"glb": "model.glb"}, {"total_s": 1.0})
    done = store.get(job.id)
    assert (done.status, done.progress, done.stage, done.lease_owner) == (JobStatus.SUCCEEDED, 100, "done", None)
    assert (done.result, done.profile) == ({"glb": "model.glb"}, {"total_s": 1.0})
    assert done.finished and done.finished_at is not None
    assert not store.complete(job.id, "w1", {}, {})
    assert not store.update_progress(job.id, "w1", 10, "again")

    assert not store.fail(other.id, "w2", "boom")
    assert store.fail(other.id, "w1", "boom", {"total_s": 0.5})
    failed = store.get(other.id)
    assert (failed.status, failed.error, failed.profile) == (JobStatus.FAILED, "boom", {"total_s": 0.5})
    assert store.events(other.id)[-1] == {
        "status": "failed",
        "at": failed.finished_at.isoformat(),
        "worker": "w1",
        "detail": "boom",
    }


def test_fail_without_a_worker_fails_a_queued_job_but_not_a_finished_one(store: JobStore) -> None:
    (job,) = enqueue(store)

    assert store.fail(job.id, None, "unreadable image")
    assert store.get(job.id).status is JobStatus.FAILED
    assert not store.fail(job.id, None, "again")
    assert store.get(job.id).error == "unreadable image"


def test_a_canceled_running_job_cannot_complete(store: JobStore, engine: sa.Engine) -> None:
    enqueue(store)
    (job,) = store.claim_batch("w1", max_jobs=1, lease_seconds=LEASE)

    canceled = store.cancel(job.id)

    assert canceled.status is JobStatus.CANCELED
    assert canceled.cancel_requested and canceled.finished_at is not None
    assert not store.update_progress(job.id, "w1", 60, "texturing")
    assert not store.complete(job.id, "w1", {}, {})
    assert not store.fail(job.id, "w1", "late error")
    assert store.renew_leases("w1", [job.id], LEASE) == 0
    assert store.get(job.id).status is JobStatus.CANCELED
    assert [event["status"] for event in store.events(job.id)] == ["queued", "running", "canceled"]
    assert succeeded_events(engine) == Counter()


def test_canceling_a_finished_job_changes_nothing(store: JobStore) -> None:
    enqueue(store)
    (job,) = store.claim_batch("w1", max_jobs=1, lease_seconds=LEASE)
    store.complete(job.id, "w1", {}, {})
    before = store.get(job.id)

    assert store.cancel(job.id) == before
    assert [event["status"] for event in store.events(job.id)] == ["queued", "running", "succeeded"]


def test_expired_leases_requeue_then_fail_after_max_attempts(store: JobStore, clock: StepClock) -> None:
    (job,) = enqueue(store)

    for attempt in (1, 2):
        (claimed,) = store.claim_batch(f"w{attempt}", max_jobs=1, lease_seconds=10)
        assert (claimed.attempts, claimed.batch_size) == (attempt, 1)
        clock.advance(5)
        assert store.requeue_expired(max_attempts=3) == ([], [])
        clock.advance(6)
        assert store.requeue_expired(max_attempts=3) == ([job.id], [])
        requeued = store.get(job.id)
        assert (requeued.status, requeued.lease_owner, requeued.stage, requeued.progress) == ("queued", None, None, 0)
        assert (requeued.solo_crashes, requeued.batch_limit) == (attempt, 1)  # it ran alone: the crash is its own
        # The worker that lost its lease can no longer finish the job.
        assert not store.complete(job.id, f"w{attempt}", {}, {})

    store.claim_batch("w3", max_jobs=1, lease_seconds=10)
    clock.advance(11)
    assert store.requeue_expired(max_attempts=3) == ([], [job.id])
    failed = store.get(job.id)
    assert (failed.status, failed.attempts, failed.solo_crashes) == (JobStatus.FAILED, 3, 3)
    assert failed.error == "worker stopped responding 3 times while running this job alone"
    statuses = [(event["status"], event["detail"]) for event in store.events(job.id)]
    assert statuses[-3:] == [("queued", "lease expired"), ("running", None), ("failed", failed.error)]


def run_until_drained(
    store: JobStore, clock: StepClock, kills_worker: set[str], after_death: Callable[[], None], max_jobs: int = 8
) -> list[list[str]]:
    """Claim and finish batches the way workers do; a batch holding a job of `kills_worker` dies (its lease
    expires and the next worker's takeover runs, then `after_death`). Returns the batches that died."""
    died = []
    for turn in range(100):
        batch = store.claim_batch(f"w{turn}", max_jobs=max_jobs, lease_seconds=10)
        if not batch:
            return died
        if kills_worker & set(ids(batch)):
            died.append(ids(batch))
            clock.advance(11)
            store.requeue_expired(max_attempts=3)
            after_death()
        else:
            assert store.complete_many(f"w{turn}", [(job.id, {}, {}) for job in batch]) == set(ids(batch))
    raise AssertionError("the queue never drained")


def test_a_dead_batch_is_retried_in_halves_and_only_the_job_that_kills_workers_fails(
    store: JobStore, clock: StepClock
) -> None:
    first = enqueue(store, count=8)
    later = enqueue(store, count=3)
    guilty = first[5].id

    limits = []  # the guilty job's batch limit after each death
    died = run_until_drained(store, clock, {guilty}, after_death=lambda: limits.append(store.get(guilty).batch_limit))

    # 8 → 4 → 2 → alone, then max_attempts deaths alone; no innocent job is charged, none runs alone needlessly
    assert [len(batch) for batch in died] == [8, 4, 2, 1, 1, 1]
    assert died[1:3] == [ids(first[4:8]), ids(first[4:6])]
    final = {job.id: store.get(job.id) for job in first + later}
    assert final[guilty].status is JobStatus.FAILED and final[guilty].solo_crashes == 3
    assert "3 times while running this job alone" in final[guilty].error
    for job_id, job in final.items():
        if job_id != guilty:
            assert (job.status, job.solo_crashes) == (JobStatus.SUCCEEDED, 0)
    assert final[first[4].id].attempts == 4 and final[first[4].id].batch_size == 1  # died three times, then alone
    assert limits[:4] == [4, 2, 1, 1]
    assert store.get(first[7].id).batch_size == 2  # retried with its half-mate after the batch of 4 died


def test_requeued_jobs_keep_their_place_by_submission_time(store: JobStore, clock: StepClock) -> None:
    old = enqueue(store, "a", count=4)
    store.claim_batch("dead", max_jobs=8, lease_seconds=10)
    newer = enqueue(store, "b", count=2) + enqueue(store, "a")
    clock.advance(11)
    assert sorted(store.requeue_expired()[0]) == sorted(ids(old))

    assert store.next_queued().id == old[0].id
    batches = []
    while batch := store.claim_batch("w1", max_jobs=8, lease_seconds=LEASE):
        batches.append(ids(batch))
    assert batches == [ids(old[:2]), ids(old[2:]), ids(newer[:2]), ids(newer[2:])]


def test_a_claim_honours_the_oldest_jobs_limit_and_takes_only_companions_it_allows(
    store: JobStore, engine: sa.Engine
) -> None:
    queued = enqueue(store, count=6)
    limits = [4, 1, None, 2, 4, 8]
    with engine.begin() as conn:
        for job, limit in zip(queued, limits, strict=True):
            conn.execute(sa.update(jobs).where(jobs.c.id == job.id).values(batch_limit=limit))

    batches = []
    while batch := store.claim_batch("w1", max_jobs=8, lease_seconds=LEASE):
        batches.append([ids(queued).index(job.id) for job in batch])
    # head limit 4: only companions that allow 4 or more; then the one limited to 1 alone; then the rest
    assert batches == [[0, 2, 4, 5], [1], [3]]
    assert [store.get(job.id).batch_size for job in queued] == [4, 1, 4, 1, 4, 4]


def test_renewed_leases_do_not_expire(store: JobStore, clock: StepClock) -> None:
    enqueue(store, count=2)
    batch = store.claim_batch("w1", max_jobs=2, lease_seconds=10)

    clock.advance(8)
    assert store.renew_leases("w1", ids(batch), 10) == 2
    assert store.renew_leases("w2", ids(batch), 10) == 0
    assert store.renew_leases("w1", [], 10) == 0
    clock.advance(8)

    assert store.requeue_expired() == ([], [])
    assert store.count_by_status()["running"] == 2


def test_requeue_owned_returns_jobs_without_counting_an_attempt(store: JobStore) -> None:
    enqueue(store, count=2)
    batch = store.claim_batch("w1", max_jobs=2, lease_seconds=LEASE)

    assert store.requeue_owned("w2") == []
    assert sorted(store.requeue_owned("w1")) == sorted(ids(batch))

    for job in map(store.get, ids(batch)):
        assert (job.status, job.attempts, job.lease_owner, job.lease_expires_at) == ("queued", 0, None, None)
    assert store.events(batch[0].id)[-1]["detail"] == "worker shut down"
    assert len(store.claim_batch("w2", max_jobs=2, lease_seconds=LEASE)) == 2


def test_existing_ids_finds_the_rows_among_many_ids(store: JobStore) -> None:
    known = ids(enqueue(store, count=3))
    unknown = [new_job_id() for _ in range(1200)]  # more than one IN list's worth
    assert store.existing_ids(unknown[:600] + known + unknown[600:]) == set(known)
    assert store.existing_ids([]) == set()


def test_count_by_status_and_queue_depth(store: JobStore) -> None:
    assert store.count_by_status() == {"queued": 0, "running": 0, "succeeded": 0, "failed": 0, "canceled": 0}
    assert store.queue_depth() == 0

    enqueue(store, "a", count=4)
    enqueue(store, "b", count=2)
    first, second, _running = store.claim_batch("w1", max_jobs=3, lease_seconds=LEASE)
    store.complete(first.id, "w1", {}, {})
    store.fail(second.id, "w1", "boom")
    store.cancel(store.list_jobs(limit=1)[0][0].id)

    assert store.count_by_status() == {"queued": 2, "running": 1, "succeeded": 1, "failed": 1, "canceled": 1}
    assert store.queue_depth() == 2


def test_recent_profiles_newest_first(store: JobStore) -> None:
    enqueue(store, count=4)
    batch = store.claim_batch("w1", max_jobs=4, lease_seconds=LEASE)
    for n, job in enumerate(batch[:3]):
        store.complete(job.id, "w1", {}, {"n": n})
    store.fail(batch[3].id, "w1", "boom", {"n": 99})

    assert store.recent_profiles() == [{"n": 2}, {"n": 1}, {"n": 0}]
    assert store.recent_profiles(limit=2) == [{"n": 2}, {"n": 1}]


def test_delete_finished_before_removes_old_finished_jobs_and_their_events(
    store: JobStore, engine: sa.Engine, clock: StepClock
) -> None:
    old, old_failed, still_queued = enqueue(store, count=3)
    store.claim_batch("w1", max_jobs=2, lease_seconds=LEASE)
    store.complete(old.id, "w1", {}, {})
    store.fail(old_failed.id, "w1", "boom")
    clock.advance(3600)
    cutoff = clock()
    (recent,) = enqueue(store)
    store.cancel(recent.id)

    deleted = store.delete_finished_before(cutoff)

    assert sorted(deleted) == sorted([old.id, old_failed.id])
    with pytest.raises(JobNotFound):
        store.get(old.id)
    assert store.get(still_queued.id).status is JobStatus.QUEUED
    assert store.get(recent.id).status is JobStatus.CANCELED
    with engine.connect() as conn:
        remaining = set(conn.scalars(sa.select(job_events.c.job_id)))
    assert remaining == {still_queued.id, recent.id}
    assert store.events(old.id) == []


def test_each_completed_job_has_exactly_one_succeeded_event(store: JobStore, engine: sa.Engine) -> None:
    enqueue(store, "a", count=5)
    batch = store.claim_batch("w1", max_jobs=5, lease_seconds=LEASE)
    for job in batch:
        assert store.complete(job.id, "w1", {}, {})
        assert not store.complete(job.id, "w1", {}, {})

    assert succeeded_events(engine) == Counter({job.id: 1 for job in batch})


def test_sqlite_connections_use_wal_and_enforce_foreign_keys(tmp_path) -> None:
    engine = create_db_engine(sqlite_url(tmp_path))
    with engine.connect() as conn:
        pragmas = {name: conn.exec_driver_sql(f"PRAGMA {name}").scalar() for name in ("journal_mode", "foreign_keys")}
        pragmas["busy_timeout"] = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()
        pragmas["synchronous"] = conn.exec_driver_sql("PRAGMA synchronous").scalar()
    engine.dispose()
    assert pragmas == {"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 5000, "synchronous": 1}


def test_unsupported_database_urls_are_refused() -> None:
    with pytest.raises(ValueError, match="unsupported database URL"):
        create_db_engine("mysql://user@localhost/orfeas")
