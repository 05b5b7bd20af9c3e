"""The agent registry against real SQLite files and, where one is reachable, a real PostgreSQL server."""

import multiprocessing
import os
import stat
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from orfeas.store.agents import (
    AgentExists,
    AgentNotFound,
    AgentRevoked,
    AgentStore,
    InvalidAgentSettings,
    derive_secret,
    load_master_key,
)
from orfeas.store.db import create_db_engine, sqlite_url
from orfeas.store.migrate import init_db
from tests.fakes import Clock

MASTER_KEY = bytes(range(32))


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    engine = create_db_engine(db_url)
    init_db(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(engine: sa.Engine, clock: Clock) -> AgentStore:
    return AgentStore(engine, MASTER_KEY, now=clock)


def admit_many(store: AgentStore, agent_id: str, count: int, step: float = 0.0, clock: Clock | None = None) -> list:
    admissions = []
    for _ in range(count):
        admissions.append(store.admit(agent_id, uuid.uuid4().hex))
        if clock is not None:
            clock.advance(step)
    return admissions


def test_create_returns_a_secret_derived_from_the_master_key_only(store: AgentStore, engine: sa.Engine) -> None:
    agent, secret = store.create("builder", ["generate", "status"], rate_per_minute=30)

    assert agent.key_id.startswith("ak_") and len(agent.key_id) == 23
    assert (agent.operations, agent.rate_per_minute, agent.secret_version, agent.active) == (
        ("generate", "status"),
        30,
        1,
        True,
    )
    assert secret == derive_secret(MASTER_KEY, agent.key_id, 1) == store.secret_for(agent)
    assert AgentStore(engine, bytes(32)).secret_for(agent) != secret
    assert store.get_by_key(agent.key_id) == agent == store.get_by_name("builder")
    assert store.get_by_key("ak_nobody") is None and store.get_by_name("nobody") is None
    listed = store.list()
    assert listed == [agent]
    assert secret not in repr(listed) and secret not in str(agent.to_dict())
    assert agent.to_dict()["operations"] == ["generate", "status"]
    assert agent.to_dict()["created_at"] == "2026-01-01T00:00:00+00:00"


def test_secrets_and_master_key_never_reach_the_database_file(tmp_path: Path) -> None:
    engine = create_db_engine(sqlite_url(tmp_path))
    init_db(engine)
    store = AgentStore(engine, MASTER_KEY)
    secrets = [store.create(f"agent-{i}", ["generate"])[1] for i in range(3)]
    secrets.append(store.rotate("agent-0")[1])
    store.audit("ak_x", "generate", 202)
    engine.dispose()

    stored = b"".join(path.read_bytes() for path in tmp_path.glob("orfeas.db*"))
    assert b"agent-0" in stored  # the check reads the right bytes
    for secret in secrets:
        assert secret.encode() not in stored and bytes.fromhex(secret) not in stored
    assert MASTER_KEY not in stored and MASTER_KEY.hex().encode() not in stored


@pytest.mark.parametrize(
    ("name", "operations", "rate"),
    [
        ("a", ["generate", "delete"], 100),
        ("a", [], 100),
        ("a", ["generate"], 0),
        ("a", ["generate"], True),
        ("", ["generate"], 100),
        (" padded", ["generate"], 100),
        ("x" * 101, ["generate"], 100),
    ],
)
def test_create_refuses_unusable_settings(store: AgentStore, name: str, operations: list[str], rate: int) -> None:
    with pytest.raises(InvalidAgentSettings):
        store.create(name, operations, rate_per_minute=rate)
    assert store.list() == []


def test_create_refuses_a_taken_name(store: AgentStore) -> None:
    store.create("builder", ["generate"])
    with pytest.raises(AgentExists):
        store.create("builder", ["status"])
    assert len(store.list()) == 1


def test_rotate_invalidates_the_old_secret(store: AgentStore, clock: Clock) -> None:
    agent, old_secret = store.create("builder", ["generate"])
    clock.advance(10)

    rotated, new_secret = store.rotate("builder")

    assert (rotated.key_id, rotated.secret_version, rotated.rotated_at) == (agent.key_id, 2, clock.now)
    assert new_secret != old_secret
    current = store.get_by_key(agent.key_id)
    assert store.secret_for(current) == new_secret != old_secret
    assert store.rotate("builder")[1] not in (old_secret, new_secret)


def test_revoke_is_final_and_idempotent(store: AgentStore, clock: Clock) -> None:
    store.create("builder", ["generate"])
    clock.advance(5)

    revoked = store.revoke("builder")
    clock.advance(5)

    assert not revoked.active and revoked.revoked_at == datetime(2026, 1, 1, 0, 0, 5, tzinfo=UTC)
    assert store.revoke("builder") == revoked
    assert revoked.to_dict()["active"] is False
    with pytest.raises(AgentRevoked):
        store.rotate("builder")
    with pytest.raises(AgentRevoked):
        store.set_rate("builder", 5)
    for unknown in (store.revoke, store.rotate):
        with pytest.raises(AgentNotFound):
            unknown("nobody")
    assert store.admit(revoked.id, uuid.uuid4().hex).reason == "revoked"
    assert store.count_recent_requests(revoked.id) == 0


def test_admit_counts_a_sliding_60_second_window(store: AgentStore, clock: Clock) -> None:
    agent, _ = store.create("builder", ["generate"])

    admissions = admit_many(store, agent.id, 100, step=0.1, clock=clock)  # t = 0.0 … 9.9; now t = 10
    assert all(a.allowed for a in admissions)
    assert [a.remaining for a in admissions[:2]] + [admissions[-1].remaining] == [99, 98, 0]
    assert admissions[0].reset == 60 and admissions[-1].reset == 51

    refused = store.admit(agent.id, uuid.uuid4().hex)
    assert (refused.allowed, refused.reason, refused.retry_after, refused.remaining, refused.limit) == (
        False,
        "rate",
        50,
        0,
        100,
    )
    assert store.count_recent_requests(agent.id) == 100

    clock.advance(49.5)  # t = 59.5: the first request is still in the window
    assert store.admit(agent.id, uuid.uuid4().hex).retry_after == 1
    clock.advance(0.5)  # t = 60: it has left
    again = store.admit(agent.id, uuid.uuid4().hex)
    assert (again.allowed, again.remaining) == (True, 0)
    assert not store.admit(agent.id, uuid.uuid4().hex).allowed
    clock.advance(0.1)  # the second has left too
    assert store.admit(agent.id, uuid.uuid4().hex).allowed


def test_rate_is_per_agent_and_adjustable(store: AgentStore) -> None:
    slow, _ = store.create("slow", ["generate"], rate_per_minute=2)
    fast, _ = store.create("fast", ["generate"])

    assert [a.allowed for a in admit_many(store, slow.id, 3)] == [True, True, False]
    assert all(a.allowed for a in admit_many(store, fast.id, 10))
    assert store.set_rate("slow", 3).rate_per_minute == 3
    assert [a.allowed for a in admit_many(store, slow.id, 2)] == [True, False]


def test_replayed_nonce_is_refused_and_spends_no_quota(store: AgentStore, clock: Clock) -> None:
    agent, _ = store.create("builder", ["generate"], rate_per_minute=2)
    other, _ = store.create("other", ["generate"])

    assert store.admit(agent.id, "nonce-0123456789abcdef").allowed
    replay = store.admit(agent.id, "nonce-0123456789abcdef")
    assert (replay.allowed, replay.reason, replay.retry_after, replay.remaining) == (False, "replay", None, 1)
    assert store.count_recent_requests(agent.id) == 1
    clock.advance(300)  # out of the rate window, still remembered
    assert store.admit(agent.id, "nonce-0123456789abcdef").reason == "replay"
    assert store.admit(other.id, "nonce-0123456789abcdef").allowed  # nonces are per agent
    assert store.admit(agent.id, "nonce-fedcba9876543210").remaining == 1


def test_old_requests_are_purged_after_twice_the_window(store: AgentStore, clock: Clock) -> None:
    agent, _ = store.create("builder", ["generate"])
    idle, _ = store.create("idle", ["generate"])
    store.admit(agent.id, "nonce-0123456789abcdef", window_seconds=300)
    store.admit(idle.id, "nonce-0123456789abcdef", window_seconds=300)

    clock.advance(600)
    assert store.admit(agent.id, "nonce-0123456789abcdef", window_seconds=300).reason == "replay"
    clock.advance(1)
    assert store.admit(agent.id, "nonce-0123456789abcdef", window_seconds=300).allowed
    assert store.count_recent_requests(idle.id, seconds=3600) == 1
    assert store.purge_requests(older_than_seconds=600) == 1
    assert store.count_recent_requests(idle.id, seconds=3600) == 0
    assert store.count_recent_requests(agent.id) == 1


def test_admit_refuses_an_unknown_agent(store: AgentStore) -> None:
    with pytest.raises(AgentNotFound):
        store.admit(uuid.uuid4().hex, "nonce-0123456789abcdef")


def admit_in_process(url: str, agent_id: str, count: int, start, results) -> None:
    """Runs in a spawned process with its own engine, as a separate API server would."""
    engine = create_db_engine(url)
    store = AgentStore(engine, MASTER_KEY)
    start.wait()
    results.put(sum(store.admit(agent_id, uuid.uuid4().hex).allowed for _ in range(count)))
    engine.dispose()


def test_processes_admitting_concurrently_never_exceed_the_rate(db_url: str, engine: sa.Engine) -> None:
    store = AgentStore(engine, MASTER_KEY)
    agent, _ = store.create("builder", ["generate"], rate_per_minute=100)
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


def test_audit_log_is_newest_first_and_filters_by_agent(store: AgentStore, clock: Clock) -> None:
    builder, _ = store.create("builder", ["generate", "status"])
    other, _ = store.create("other", ["generate"])
    store.audit(builder.key_id, "generate", 202, agent_id=builder.id, job_id="a" * 32)
    clock.advance(1)
    store.audit("ak_unknown", "status", 401, detail="unknown key 'ak_unknown'")
    clock.advance(1)
    store.audit(other.key_id, "generate", 429, agent_id=other.id, detail="rate limit")
    clock.advance(1)
    store.audit(builder.key_id, "status", 200, agent_id=builder.id, job_id="a" * 32)

    log = store.audit_log()
    assert [(e["agent"], e["operation"], e["outcome"]) for e in log] == [
        ("builder", "status", 200),
        ("other", "generate", 429),
        (None, "status", 401),
        ("builder", "generate", 202),
    ]
    assert log[0] == {
        "at": "2026-01-01T00:00:03+00:00",
        "agent": "builder",
        "key_id": builder.key_id,
        "operation": "status",
        "job_id": "a" * 32,
        "outcome": 200,
        "detail": None,
    }
    assert [e["outcome"] for e in store.audit_log("builder")] == [200, 202]
    assert [e["outcome"] for e in store.audit_log(limit=2)] == [200, 429]
    assert store.audit_log("nobody") == []
    assert store.delete_audit_before(clock.now) == 3
    assert len(store.audit_log()) == 1


def test_load_master_key_prefers_the_setting_then_the_file(tmp_path: Path) -> None:
    assert load_master_key(MASTER_KEY.hex(), tmp_path) == MASTER_KEY
    assert not (tmp_path / "agent-master.key").exists()

    created = load_master_key(None, tmp_path / "data")
    path = tmp_path / "data" / "agent-master.key"
    assert len(created) == 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_master_key(None, tmp_path / "data") == created
    assert [p.name for p in path.parent.iterdir()] == ["agent-master.key"]
    for bad in ("not hex", "abcd"):
        with pytest.raises(ValueError):
            load_master_key(bad, tmp_path)
