"""Authenticating signed agent requests against a real SQLite registry: every refusal leaves the quota untouched."""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa

from orfeas.service.agent_accounts import AgentAccounts
from orfeas.service.agents import (
    AgentAuthenticator,
    AuthenticationFailed,
    PermissionDenied,
    RateLimited,
    SignedRequest,
    rate_limit_headers,
)
from orfeas.signing import KEY_HEADER, NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, signed_headers
from orfeas.store.agents import AgentRecord, AgentStore
from orfeas.store.db import sqlite_url
from tests.fakes import Clock
from tests.service.test_agent_accounts import MASTER_KEY

PATH = "/api/agent/generate-3d"
QUERY = "b=2&a=x%20y"
BODY = b'{"image": "aGVsbG8=", "options": {"formats": ["glb"]}}'


@dataclass
class Call:
    """One agent request, signed by `agent` with `secret` unless a test changes it after signing."""

    agent: AgentRecord
    secret: str
    clock: Clock
    method: str = "POST"
    path: str = PATH
    query: str = QUERY
    body: bytes = BODY
    headers: dict[str, str] = field(default_factory=dict)
    operation: str = "generate"

    def sign(self, skew: float = 0.0) -> "Call":
        self.headers = signed_headers(
            self.agent.key_id, self.secret, self.method, self.path, self.query, self.body, now=self.clock.time() + skew
        )
        return self

    def send(self, authenticator: AgentAuthenticator):
        request = SignedRequest(self.method, self.path, self.query, self.headers, self.body)
        return authenticator.authenticate(request, self.operation)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """SQLite only: conftest's `engine` migrates it (the admission itself is tested on both in test_admission.py)."""
    return sqlite_url(tmp_path)


@pytest.fixture
def store(engine: sa.Engine, clock: Clock) -> AgentStore:
    return AgentStore(engine, now=clock)


@pytest.fixture
def accounts(store: AgentStore) -> AgentAccounts:
    return AgentAccounts(store, MASTER_KEY)


@pytest.fixture
def authenticator(accounts: AgentAccounts, clock: Clock) -> AgentAuthenticator:
    return AgentAuthenticator(accounts, window_seconds=300, now=clock.time)


@pytest.fixture
def call(accounts: AgentAccounts, clock: Clock) -> Call:
    agent, secret = accounts.create("builder", ["generate", "status"], rate_per_minute=5)
    return Call(agent, secret, clock).sign()


def test_a_signed_request_is_admitted(call: Call, authenticator: AgentAuthenticator, store: AgentStore) -> None:
    agent, admission = call.send(authenticator)

    assert agent == call.agent
    assert (admission.allowed, admission.limit, admission.remaining) == (True, 5, 4)
    assert rate_limit_headers(admission) == {
        "RateLimit-Limit": "5",
        "RateLimit-Remaining": "4",
        "RateLimit-Reset": "60",
    }
    assert store.count_recent_requests(agent.id) == 1


def test_headers_are_found_in_any_case(call: Call, authenticator: AgentAuthenticator) -> None:
    call.headers = {name.lower(): value for name, value in call.headers.items()}
    call.headers[SIGNATURE_HEADER.lower()] = call.headers[SIGNATURE_HEADER.lower()].upper()
    assert call.send(authenticator)[1].allowed


@pytest.mark.parametrize("skew", [-300, 300])
def test_timestamps_at_the_edge_of_the_window_are_accepted(
    call: Call, authenticator: AgentAuthenticator, skew: int
) -> None:
    assert call.sign(skew=skew).send(authenticator)[1].allowed


def tamper(**changes) -> Callable[[Call, AgentAccounts], None]:
    def apply(call: Call, _accounts: AgentAccounts) -> None:
        for name, value in changes.items():
            setattr(call, name, value)

    return apply


def set_header(name: str, value: str | None) -> Callable[[Call, AgentAccounts], None]:
    def apply(call: Call, _accounts: AgentAccounts) -> None:
        if value is None:
            del call.headers[name]
        else:
            call.headers[name] = value

    return apply


def flip_signature(call: Call, _accounts: AgentAccounts) -> None:
    signature = call.headers[SIGNATURE_HEADER]
    call.headers[SIGNATURE_HEADER] = signature[:-1] + ("0" if signature[-1] != "0" else "1")


def stale(call: Call, _accounts: AgentAccounts) -> None:
    call.sign(skew=-301)


def future(call: Call, _accounts: AgentAccounts) -> None:
    call.sign(skew=301)


def unknown_key(call: Call, _accounts: AgentAccounts) -> None:
    call.agent = dataclasses.replace(call.agent, key_id="ak_" + "x" * 20)
    call.sign()


def revoked(call: Call, accounts: AgentAccounts) -> None:
    accounts.revoke("builder")


def rotated_away(call: Call, accounts: AgentAccounts) -> None:
    accounts.rotate("builder")


def not_permitted(call: Call, _accounts: AgentAccounts) -> None:
    call.operation = "batch"


ATTACKS = {
    "bad signature": (flip_signature, AuthenticationFailed, "bad signature"),
    "body tampered": (tamper(body=BODY.replace(b"glb", b"obj")), AuthenticationFailed, "bad signature"),
    "path tampered": (tamper(path="/api/agent/batch"), AuthenticationFailed, "bad signature"),
    "query tampered": (tamper(query="b=2&a=x%20z"), AuthenticationFailed, "bad signature"),
    "query added": (tamper(query=QUERY + "&c=1"), AuthenticationFailed, "bad signature"),
    "method tampered": (tamper(method="PUT"), AuthenticationFailed, "bad signature"),
    "stale timestamp": (stale, AuthenticationFailed, "-301 s from server time"),
    "future timestamp": (future, AuthenticationFailed, r"\+301 s from server time"),
    "unknown key": (unknown_key, AuthenticationFailed, "unknown key"),
    "revoked key": (revoked, AuthenticationFailed, "revoked"),
    "rotated-away secret": (rotated_away, AuthenticationFailed, "bad signature"),
    "missing permission": (not_permitted, PermissionDenied, "may not 'batch'"),
    "non-digit timestamp": (set_header(TIMESTAMP_HEADER, "17e8"), AuthenticationFailed, "malformed header"),
    "non-ASCII digit timestamp": (set_header(TIMESTAMP_HEADER, "١٧٠٠٠٠٠٠٠٠"), AuthenticationFailed, "malformed"),
    "short nonce": (set_header(NONCE_HEADER, "abc123"), AuthenticationFailed, "malformed header X-Orfeas-Nonce"),
    "nonce with odd characters": (set_header(NONCE_HEADER, "a/b" * 8), AuthenticationFailed, "malformed header"),
    "non-hex signature": (set_header(SIGNATURE_HEADER, "z" * 64), AuthenticationFailed, "malformed header"),
    "short signature": (set_header(SIGNATURE_HEADER, "a" * 63), AuthenticationFailed, "malformed header"),
    "empty key": (set_header(KEY_HEADER, ""), AuthenticationFailed, "missing header X-Orfeas-Key"),
    "missing key": (set_header(KEY_HEADER, None), AuthenticationFailed, "missing header X-Orfeas-Key"),
    "missing timestamp": (set_header(TIMESTAMP_HEADER, None), AuthenticationFailed, "missing header"),
    "missing nonce": (set_header(NONCE_HEADER, None), AuthenticationFailed, "missing header X-Orfeas-Nonce"),
    "missing signature": (set_header(SIGNATURE_HEADER, None), AuthenticationFailed, "missing header"),
}


@pytest.mark.parametrize("attack", ATTACKS.values(), ids=ATTACKS.keys())
def test_attacks_are_refused_without_spending_quota(
    call: Call, authenticator: AgentAuthenticator, accounts: AgentAccounts, store: AgentStore, attack
) -> None:
    change, error, message = attack
    Call(call.agent, call.secret, call.clock).sign().send(authenticator)  # one admitted request to compare against
    change(call, accounts)

    with pytest.raises(error, match=message):
        call.send(authenticator)
    assert store.count_recent_requests(call.agent.id) == 1


def test_a_replayed_request_is_refused_without_spending_quota(
    call: Call, authenticator: AgentAuthenticator, store: AgentStore, clock: Clock
) -> None:
    call.send(authenticator)
    clock.advance(120)  # out of the rate window, inside the timestamp window

    with pytest.raises(AuthenticationFailed, match="already used") as refused:
        call.send(authenticator)
    assert refused.value.agent == call.agent and refused.value.key_id == call.agent.key_id
    assert store.count_recent_requests(call.agent.id, seconds=300) == 1


def test_the_rate_limit_refuses_with_retry_after(
    call: Call, authenticator: AgentAuthenticator, store: AgentStore, clock: Clock
) -> None:
    for _ in range(5):
        call.sign().send(authenticator)
        clock.advance(2)

    with pytest.raises(RateLimited) as refused:
        call.sign().send(authenticator)
    error = refused.value
    assert (error.retry_after, error.limit, error.remaining, error.reset) == (50, 5, 0, 50)
    assert rate_limit_headers(error.admission) == {
        "RateLimit-Limit": "5",
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": "50",
        "Retry-After": "50",
    }
    assert store.count_recent_requests(call.agent.id) == 5

    clock.advance(50)
    assert call.send(authenticator)[1].remaining == 0  # the refused nonce was not recorded, so it may be retried


def test_refusals_carry_the_key_and_agent_for_the_audit(call: Call, authenticator: AgentAuthenticator) -> None:
    flip_signature(call, None)
    with pytest.raises(AuthenticationFailed) as bad_signature:
        call.send(authenticator)
    del call.headers[KEY_HEADER]
    with pytest.raises(AuthenticationFailed) as missing:
        call.send(authenticator)

    assert (bad_signature.value.key_id, bad_signature.value.agent) == (call.agent.key_id, call.agent)
    assert (missing.value.key_id, missing.value.agent) == (None, None)


def test_an_unknown_operation_is_a_programming_error(call: Call, authenticator: AgentAuthenticator) -> None:
    call.operation = "delete"
    with pytest.raises(ValueError):
        call.send(authenticator)


def test_refusals_are_audited_once_per_window_and_throttled_per_address() -> None:
    from orfeas.service.agents import RefusalLimiter

    clock = [1000.0]
    limiter = RefusalLimiter(per_address=3, window_seconds=60, now=lambda: clock[0])
    first = [limiter.refused("10.0.0.1", "ak_victim") for _ in range(5)]
    assert [r.audit for r in first] == [True, False, False, False, False]
    assert [r.throttled for r in first] == [False, False, False, True, True]
    assert first[-1].retry_after > 0
    assert not limiter.refused("10.0.0.2", "ak_other").throttled  # another address is not affected
    clock[0] += 61
    later = limiter.refused("10.0.0.1", "ak_victim")
    assert later.audit and later.skipped == 4 and not later.throttled


def test_a_remembered_agent_follows_rotation_and_revocation_at_once(
    call: Call, authenticator: AgentAuthenticator, accounts: AgentAccounts, store: AgentStore
) -> None:
    """The authenticator remembers agents between requests; the admission checks the agent's row itself, so a
    rotated secret works (and the old one stops) from the next request, and a revoked key at once."""
    call.send(authenticator)
    _, new_secret = accounts.rotate("builder")

    with pytest.raises(AuthenticationFailed, match="bad signature"):
        Call(call.agent, call.secret, call.clock).sign().send(authenticator)
    agent, admission = Call(call.agent, new_secret, call.clock).sign().send(authenticator)
    assert admission.allowed and agent.secret_version == 2

    accounts.revoke("builder")
    with pytest.raises(AuthenticationFailed, match="revoked"):
        Call(call.agent, new_secret, call.clock).sign().send(authenticator)
    assert store.count_recent_requests(call.agent.id) == 2
