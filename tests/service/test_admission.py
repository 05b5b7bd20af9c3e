"""The agent rate limiter (`admit`) against real SQLite files and, where one is reachable, a real PostgreSQL server:
a sliding 60 s window per agent, nonces remembered for twice the timestamp window, several processes never admitting
more than the rate together, and the admission queue deciding concurrent requests in shared transactions."""

import asyncio
import multiprocessing
import random
import sqlite3
import threading
import uuid

import pytest
import sqlalchemy as sa

from orfeas.service.agent_accounts import AgentAccounts
from orfeas.service.agents import Admission, AdmissionQueue, Pending, admit
from orfeas.service.agents import admit_many as admit_together
from orfeas.store.agents import AgentNotFound, AgentStore
from orfeas.store.db import create_db_engine
from tests.fakes import Clock
from tests.service.test_agent_accounts import MASTER_KEY


@pytest.fixture
def store(engine: sa.Engine, clock: Clock) -> AgentStore:
    return AgentStore(engine, now=clock)


@pytest.fixture
def accounts(store: AgentStore) -> AgentAccounts:
    return AgentAccounts(store, MASTER_KEY)


def admit_many(
    store: AgentStore, agent_id: str, count: int, step: float = 0.0, clock: Clock | None = None
) -> list[Admission]:
    admissions = []
    for _ in range(count):
        admissions.append(admit(store, agent_id, uuid.uuid4().hex))
        if clock is not None:
            clock.advance(step)
    return admissions


def test_admit_counts_a_sliding_60_second_window(accounts: AgentAccounts, store: AgentStore, clock: Clock) -> None:
    agent, _ = accounts.create("builder", ["generate"])

    admissions = admit_many(store, agent.id, 100, step=0.1, clock=clock)  # t = 0.0 … 9.9; now t = 10
    assert all(a.allowed for a in admissions)
    assert [a.remaining for a in admissions[:2]] + [admissions[-1].remaining] == [99, 98, 0]
    assert admissions[0].reset == 60 and admissions[-1].reset == 51

    refused = admit(store, agent.id, uuid.uuid4().hex)
    assert (refused.allowed, refused.reason, refused.retry_after, refused.remaining, refused.limit) == (
        False,
        "rate",
        50,
        0,
        100,
    )
    assert store.count_recent_requests(agent.id) == 100

    clock.advance(49.5)  # t = 59.5: the first request is still in the window
    assert admit(store, agent.id, uuid.uuid4().hex).retry_after == 1
    clock.advance(0.5)  # t = 60: it has left
    again = admit(store, agent.id, uuid.uuid4().hex)
    assert (again.allowed, again.remaining) == (True, 0)
    assert not admit(store, agent.id, uuid.uuid4().hex).allowed
    clock.advance(0.1)  # the second has left too
    assert admit(store, agent.id, uuid.uuid4().hex).allowed


def test_rate_is_per_agent_and_adjustable(accounts: AgentAccounts, store: AgentStore) -> None:
    slow, _ = accounts.create("slow", ["generate"], rate_per_minute=2)
    fast, _ = accounts.create("fast", ["generate"])

    assert [a.allowed for a in admit_many(store, slow.id, 3)] == [True, True, False]
    assert all(a.allowed for a in admit_many(store, fast.id, 10))
    assert accounts.set_rate("slow", 3).rate_per_minute == 3
    assert [a.allowed for a in admit_many(store, slow.id, 2)] == [True, False]


def test_replayed_nonce_is_refused_and_spends_no_quota(
    accounts: AgentAccounts, store: AgentStore, clock: Clock
) -> None:
    agent, _ = accounts.create("builder", ["generate"], rate_per_minute=2)
    other, _ = accounts.create("other", ["generate"])

    assert admit(store, agent.id, "nonce-0123456789abcdef").allowed
    replay = admit(store, agent.id, "nonce-0123456789abcdef")
    assert (replay.allowed, replay.reason, replay.retry_after, replay.remaining) == (False, "replay", None, 1)
    assert store.count_recent_requests(agent.id) == 1
    clock.advance(300)  # out of the rate window, still remembered
    assert admit(store, agent.id, "nonce-0123456789abcdef").reason == "replay"
    assert admit(store, other.id, "nonce-0123456789abcdef").allowed  # nonces are per agent
    assert admit(store, agent.id, "nonce-fedcba9876543210").remaining == 1


def test_old_requests_are_purged_after_twice_the_window(
    accounts: AgentAccounts, store: AgentStore, clock: Clock
) -> None:
    agent, _ = accounts.create("builder", ["generate"])
    idle, _ = accounts.create("idle", ["generate"])
    admit(store, agent.id, "nonce-0123456789abcdef", window_seconds=300)
    admit(store, idle.id, "nonce-0123456789abcdef", window_seconds=300)

    clock.advance(600)
    assert admit(store, agent.id, "nonce-0123456789abcdef", window_seconds=300).reason == "replay"
    clock.advance(1)
    assert admit(store, agent.id, "nonce-0123456789abcdef", window_seconds=300).allowed
    assert store.count_recent_requests(idle.id, seconds=3600) == 1
    assert store.purge_requests(older_than_seconds=600) == 1
    assert store.count_recent_requests(idle.id, seconds=3600) == 0
    assert store.count_recent_requests(agent.id) == 1


def test_an_agent_idle_past_the_purge_starts_with_an_empty_window(
    accounts: AgentAccounts, store: AgentStore, clock: Clock
) -> None:
    agent, _ = accounts.create("builder", ["generate"], rate_per_minute=2)
    assert [a.allowed for a in admit_many(store, agent.id, 3)] == [True, True, False]

    clock.advance(700)
    assert store.purge_requests(older_than_seconds=600) == 2  # the rows the running count still started from
    assert [a.remaining for a in admit_many(store, agent.id, 2)] == [1, 0]
    assert admit(store, agent.id, uuid.uuid4().hex).reason == "rate"


@pytest.mark.parametrize("seed", [1, 2])
def test_the_running_count_matches_the_rows_in_the_window(
    accounts: AgentAccounts, store: AgentStore, clock: Clock, seed: int
) -> None:
    """Requests at uneven intervals (bursts, pauses longer than the window, purges in between): every admission's
    remaining and reset agree with the rows in the last 60 s."""
    rng = random.Random(seed)
    agent, _ = accounts.create("builder", ["generate"], rate_per_minute=20)
    for _ in range(300):
        clock.advance(rng.choice([0.0, 0.25, 1.5, 7.0, 30.0, 59.75, 60.0, 130.0]))
        if rng.random() < 0.05:
            store.purge_requests(older_than_seconds=rng.choice([60, 600]))
        in_window = store.count_recent_requests(agent.id)
        admission = admit(store, agent.id, uuid.uuid4().hex)
        assert admission.allowed == (in_window < 20)
        assert admission.remaining == max(0, 20 - in_window - admission.allowed)


def test_admit_refuses_an_unknown_agent(store: AgentStore) -> None:
    with pytest.raises(AgentNotFound):
        admit(store, uuid.uuid4().hex, "nonce-0123456789abcdef")


def admit_in_process(url: str, agent_id: str, count: int, start, results) -> None:
    """Runs in a spawned process with its own engine, as a separate API server would."""
    engine = create_db_engine(url)
    store = AgentStore(engine)
    start.wait()
    results.put(sum(admit(store, agent_id, uuid.uuid4().hex).allowed for _ in range(count)))
    engine.dispose()


def test_processes_admitting_concurrently_never_exceed_the_rate(db_url: str, engine: sa.Engine) -> None:
    store = AgentStore(engine)
    agent, _ = AgentAccounts(store, MASTER_KEY).create("builder", ["generate"], rate_per_minute=100)
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    results = context.Queue()
    processes = [context.Process(target=admit_in_process, args=(db_url, agent.id, 75, start, results)) for _ in "ab"]
    for process in processes:
        process.start()
    admitted = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=10)
        assert process.exitcode == 0

    assert sum(admitted) == 100
    assert all(count >= 25 for count in admitted)
    assert store.count_recent_requests(agent.id) == 100


def test_one_transaction_decides_several_agents_requests_in_order(accounts: AgentAccounts, store: AgentStore) -> None:
    first, _ = accounts.create("first", ["status"], rate_per_minute=2)
    second, _ = accounts.create("second", ["status"], rate_per_minute=2)
    missing = uuid.uuid4().hex
    requests = [
        Pending(first.id, "n-1"),
        Pending(second.id, "n-1"),
        Pending(first.id, "n-1"),
        Pending(first.id, "n-2"),
        Pending(missing, "n-3"),
    ]

    outcomes = admit_together(store, requests)

    assert [getattr(o, "reason", None) for o in outcomes[:4]] == [None, None, "replay", None]
    assert [o.remaining for o in outcomes[:4]] == [1, 1, 1, 0]
    assert isinstance(outcomes[4], AgentNotFound)
    assert admit(store, first.id, "n-4").reason == "rate"  # the batch's two requests were both counted
    assert store.count_recent_requests(first.id) == 2 and store.count_recent_requests(second.id) == 1


def test_the_queue_shares_transactions_between_concurrent_requests(
    accounts: AgentAccounts, store: AgentStore, engine: sa.Engine
) -> None:
    """8 threads submit 400 requests of two agents at once: each agent gets exactly its rate, every future is
    answered, and the requests took fewer commits than there were requests."""
    agents = [accounts.create(name, ["status"], rate_per_minute=150)[0] for name in ("first", "second")]
    commits = []
    sa.event.listen(engine, "commit", lambda _connection: commits.append(1))
    queue = AdmissionQueue(store)
    queue.start()
    start = threading.Barrier(8)
    answers: list[Admission] = []

    def submit(agent_id: str) -> None:
        start.wait()
        futures = [queue.submit(Pending(agent_id, uuid.uuid4().hex)) for _ in range(50)]
        answers.extend(future.result(timeout=60) for future in futures)

    threads = [threading.Thread(target=submit, args=(agents[i % 2].id,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    queue.stop()

    assert len(answers) == 400
    assert sum(a.allowed for a in answers) == 300
    assert {a.reason for a in answers if not a.allowed} == {"rate"}
    assert [store.count_recent_requests(agent.id) for agent in agents] == [150, 150]
    assert len(commits) < 400


def test_a_database_error_reaches_every_request_of_its_batch(
    accounts: AgentAccounts, store: AgentStore, engine: sa.Engine
) -> None:
    agent, _ = accounts.create("builder", ["status"])
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE agent_requests"))
    queue = AdmissionQueue(store)
    # not started: decided in this thread
    futures = [queue.submit(Pending(agent.id, uuid.uuid4().hex)) for _ in range(3)]
    queue.start()
    futures += [queue.submit(Pending(agent.id, uuid.uuid4().hex)) for _ in range(3)]
    queue.stop()

    for future in futures:
        assert isinstance(future.exception(timeout=10), sa.exc.DBAPIError)


def test_a_stopped_queue_admits_in_the_callers_thread(accounts: AgentAccounts, store: AgentStore) -> None:
    agent, _ = accounts.create("builder", ["status"])
    queue = AdmissionQueue(store)
    queue.start()
    assert queue.submit(Pending(agent.id, "n-1")).result(timeout=10).allowed
    queue.stop()

    answer = queue.submit(Pending(agent.id, "n-1"))
    assert answer.done() and answer.result().reason == "replay"


def test_a_request_verified_against_a_rotated_secret_is_stale(accounts: AgentAccounts, store: AgentStore) -> None:
    agent, _ = accounts.create("builder", ["status"])
    accounts.rotate("builder")

    stale = admit(store, agent.id, "n-1", secret_version=agent.secret_version)
    assert stale.reason == "stale" and store.count_recent_requests(agent.id) == 0
    assert admit(store, agent.id, "n-1", secret_version=agent.secret_version + 1).allowed


def test_requests_of_one_turn_of_the_event_loop_share_one_transaction(
    accounts: AgentAccounts, store: AgentStore, engine: sa.Engine
) -> None:
    """`admit` from coroutines: on SQLite the turn's requests are decided together on the loop, on PostgreSQL by
    the queue's thread; either way each gets its own answer and the nonce is recorded once."""
    agent, _ = accounts.create("builder", ["status"], rate_per_minute=3)
    commits = []
    sa.event.listen(engine, "commit", lambda _connection: commits.append(threading.current_thread().name))
    queue = AdmissionQueue(store)
    queue.start()

    async def five() -> list[Admission]:
        nonces = ["n-1", "n-2", "n-1", "n-3", "n-4"]
        return await asyncio.gather(*(queue.admit(Pending(agent.id, nonce)) for nonce in nonces))

    try:
        answers = asyncio.run(five())
    finally:
        queue.stop()
    assert [a.reason for a in answers] == [None, None, "replay", None, "rate"]
    assert store.count_recent_requests(agent.id) == 3
    if engine.dialect.name == "sqlite":
        assert commits == [threading.main_thread().name]


def test_a_turn_goes_to_the_thread_while_another_process_writes(
    accounts: AgentAccounts, store: AgentStore, engine: sa.Engine
) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL's admissions always go to the thread")
    agent, _ = accounts.create("builder", ["status"])
    other = sqlite3.connect(engine.url.database, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # holds SQLite's write lock, as another API process might
    threading.Timer(0.3, other.execute, args=("ROLLBACK",)).start()  # the thread's wait ends when it lets go
    queue = AdmissionQueue(store)
    queue.start()

    async def one() -> Admission:
        return await queue.admit(Pending(agent.id, "n-1"))

    try:
        assert asyncio.run(one()).allowed
    finally:
        queue.stop()
        other.close()
    assert store.count_recent_requests(agent.id) == 1


def test_a_replay_in_a_batch_leaves_its_place_to_the_next_request(accounts: AgentAccounts, store: AgentStore) -> None:
    agent, _ = accounts.create("builder", ["status"], rate_per_minute=3)
    assert admit(store, agent.id, "n-old").allowed

    batch = [Pending(agent.id, nonce) for nonce in ("n-old", "n-a", "n-b", "n-c", "n-old")]
    outcomes = admit_together(store, batch)

    assert [o.reason for o in outcomes] == ["replay", None, None, "rate", "replay"]
    assert [o.remaining for o in outcomes] == [2, 1, 0, 0, 0]
    assert store.count_recent_requests(agent.id) == 3


def test_two_event_loops_share_one_queue(accounts: AgentAccounts, store: AgentStore) -> None:
    """Each thread's loop keeps its own turn (as the test client's loop beside a server's would)."""
    agent, _ = accounts.create("builder", ["status"], rate_per_minute=1000)
    queue = AdmissionQueue(store)
    queue.start()
    answers: list[Admission] = []

    async def many() -> list[Admission]:
        return await asyncio.gather(*(queue.admit(Pending(agent.id, uuid.uuid4().hex)) for _ in range(50)))

    threads = [threading.Thread(target=lambda: answers.extend(asyncio.run(many()))) for _ in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        queue.stop()
    assert len(answers) == 100 and all(answer.allowed for answer in answers)
    assert store.count_recent_requests(agent.id) == 100
