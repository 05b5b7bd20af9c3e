"""What the agent audit log writes for an admitted or refused request, against a real SQLite registry."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from orfeas.service.agents import AuthenticationFailed, Refusal
from orfeas.service.audit import AuditLog
from orfeas.store.agents import AgentRecord, AgentStore
from orfeas.store.db import create_db_engine, sqlite_url
from orfeas.store.migrate import init_db


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AgentStore]:
    engine: sa.Engine = create_db_engine(sqlite_url(tmp_path))
    init_db(engine)
    yield AgentStore(engine)
    engine.dispose()


@pytest.fixture
def agent(store: AgentStore) -> AgentRecord:
    return store.insert("builder", "ak_builder", ["generate", "batch"], 100)


def test_an_admitted_request_names_its_job_or_lists_several(store: AgentStore, agent: AgentRecord) -> None:
    log = AuditLog(store)  # not started: every row is written at once
    log.record_admitted(agent, "generate", 202, ["a" * 32])
    log.record_admitted(agent, "batch", 202, ["b" * 32, "c" * 32])
    log.record_admitted(agent, "status", 404, [], detail="no such job")

    rows = [(e["operation"], e["outcome"], e["job_id"], e["detail"]) for e in reversed(store.audit_log())]
    assert rows == [
        ("generate", 202, "a" * 32, None),
        ("batch", 202, None, f"2 jobs: {'b' * 32}, {'c' * 32}"),
        ("status", 404, None, "no such job"),
    ]
    assert {e["agent"] for e in store.audit_log()} == {"builder"}


def test_a_refusal_is_written_only_when_the_limiter_says_so(store: AgentStore, agent: AgentRecord) -> None:
    log = AuditLog(store)
    refused = AuthenticationFailed("bad signature", key_id=agent.key_id, agent=agent)
    log.record_refusal(refused, "generate", 401, Refusal(audit=False, skipped=0, throttled=False, retry_after=0))
    assert store.audit_log() == []

    log.record_refusal(refused, "generate", 401, Refusal(audit=True, skipped=3, throttled=True, retry_after=5))
    unknown = AuthenticationFailed("unknown key 'ak_x'", key_id="ak_x")
    log.record_refusal(unknown, "status", 401, Refusal(audit=True, skipped=0, throttled=False, retry_after=0))

    rows = [(e["agent"], e["key_id"], e["outcome"], e["detail"]) for e in reversed(store.audit_log())]
    assert rows == [
        ("builder", "ak_builder", 401, "bad signature (3 more refusals of this key id not recorded one by one)"),
        (None, "ak_x", 401, "unknown key 'ak_x'"),
    ]
