"""The agent registry's tables against real SQLite files and, where one is reachable, a real PostgreSQL server.

The rules (checked settings, derived secrets, admission) are tested in tests/service/."""

import pytest
import sqlalchemy as sa

from orfeas.store.agents import AgentExists, AgentNotFound, AgentStore
from tests.fakes import Clock


@pytest.fixture
def store(engine: sa.Engine, clock: Clock) -> AgentStore:
    return AgentStore(engine, now=clock)


def test_updates_leave_a_revoked_agent_as_it_is(store: AgentStore, clock: Clock) -> None:
    agent = store.insert("builder", "ak_builder", ["generate"], 10)
    with pytest.raises(AgentExists):
        store.insert("builder", "ak_other", ["generate"], 10)
    assert store.rotate_secret("builder").secret_version == 2
    clock.advance(5)
    revoked = store.revoke("builder")

    assert store.rotate_secret("builder") == revoked == store.set_rate("builder", 99) == store.revoke("builder")
    assert (revoked.secret_version, revoked.rate_per_minute, revoked.id) == (2, 10, agent.id)
    for change in (store.revoke, store.rotate_secret):
        with pytest.raises(AgentNotFound):
            change("nobody")


def test_audit_log_is_newest_first_and_filters_by_agent(store: AgentStore, clock: Clock) -> None:
    builder = store.insert("builder", "ak_builder", ["generate", "status"], 100)
    other = store.insert("other", "ak_other", ["generate"], 100)
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
