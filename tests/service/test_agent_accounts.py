"""Registering, rotating and revoking agents against real SQLite files and, where one is reachable, a real
PostgreSQL server: the checks on names, operations and rates, and the secrets derived from the master key."""

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from orfeas.service.agent_accounts import AgentAccounts, AgentRevoked, InvalidAgentSettings
from orfeas.service.agent_keys import derive_secret
from orfeas.service.agents import admit
from orfeas.store.agents import AgentExists, AgentNotFound, AgentStore
from orfeas.store.db import create_db_engine, sqlite_url
from orfeas.store.migrate import init_db
from tests.fakes import Clock

MASTER_KEY = bytes(range(32))


@pytest.fixture
def store(engine: sa.Engine, clock: Clock) -> AgentStore:
    return AgentStore(engine, now=clock)


@pytest.fixture
def accounts(store: AgentStore) -> AgentAccounts:
    return AgentAccounts(store, MASTER_KEY)


def test_create_returns_a_secret_derived_from_the_master_key_only(accounts: AgentAccounts, store: AgentStore) -> None:
    agent, secret = accounts.create("builder", ["generate", "status"], rate_per_minute=30)

    assert agent.key_id.startswith("ak_") and len(agent.key_id) == 23
    assert (agent.operations, agent.rate_per_minute, agent.secret_version, agent.active) == (
        ("generate", "status"),
        30,
        1,
        True,
    )
    assert secret == derive_secret(MASTER_KEY, agent.key_id, 1) == accounts.secret_for(agent)
    assert AgentAccounts(store, bytes(32)).secret_for(agent) != secret
    assert store.get_by_key(agent.key_id) == agent == store.get_by_name("builder")
    assert store.get_by_key("ak_nobody") is None and store.get_by_name("nobody") is None
    listed = store.list()
    assert listed == [agent]
    assert secret not in repr(listed) and secret not in str(agent.to_dict())
    assert agent.to_dict()["operations"] == ["generate", "status"]
    assert agent.to_dict()["created_at"] == "2026-01-01T00:00:00+00:00"


def test_a_short_master_key_is_refused(store: AgentStore) -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        AgentAccounts(store, bytes(15))


def test_secrets_and_master_key_never_reach_the_database_file(tmp_path: Path) -> None:
    engine = create_db_engine(sqlite_url(tmp_path))
    init_db(engine)
    store = AgentStore(engine)
    accounts = AgentAccounts(store, MASTER_KEY)
    secrets = [accounts.create(f"agent-{i}", ["generate"])[1] for i in range(3)]
    secrets.append(accounts.rotate("agent-0")[1])
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
def test_create_refuses_unusable_settings(
    accounts: AgentAccounts, store: AgentStore, name: str, operations: list[str], rate: int
) -> None:
    with pytest.raises(InvalidAgentSettings):
        accounts.create(name, operations, rate_per_minute=rate)
    assert store.list() == []


def test_create_refuses_a_taken_name(accounts: AgentAccounts, store: AgentStore) -> None:
    accounts.create("builder", ["generate"])
    with pytest.raises(AgentExists):
        accounts.create("builder", ["status"])
    assert len(store.list()) == 1


def test_rotate_invalidates_the_old_secret(accounts: AgentAccounts, store: AgentStore, clock: Clock) -> None:
    agent, old_secret = accounts.create("builder", ["generate"])
    clock.advance(10)

    rotated, new_secret = accounts.rotate("builder")

    assert (rotated.key_id, rotated.secret_version, rotated.rotated_at) == (agent.key_id, 2, clock.now)
    assert new_secret != old_secret
    current = store.get_by_key(agent.key_id)
    assert accounts.secret_for(current) == new_secret != old_secret
    assert accounts.rotate("builder")[1] not in (old_secret, new_secret)


def test_revoke_is_final_and_idempotent(accounts: AgentAccounts, store: AgentStore, clock: Clock) -> None:
    accounts.create("builder", ["generate"])
    clock.advance(5)

    revoked = accounts.revoke("builder")
    clock.advance(5)

    assert not revoked.active and revoked.revoked_at == datetime(2026, 1, 1, 0, 0, 5, tzinfo=UTC)
    assert accounts.revoke("builder") == revoked
    assert revoked.to_dict()["active"] is False
    with pytest.raises(AgentRevoked):
        accounts.rotate("builder")
    with pytest.raises(AgentRevoked):
        accounts.set_rate("builder", 5)
    for unknown in (accounts.revoke, accounts.rotate):
        with pytest.raises(AgentNotFound):
            unknown("nobody")
    assert admit(store, revoked.id, uuid.uuid4().hex).reason == "revoked"
    assert store.count_recent_requests(revoked.id) == 0
    assert store.get_by_name("builder") == revoked  # the refused changes wrote nothing
