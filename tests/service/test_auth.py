"""Accounts on a real SQLite database: passwords, API keys, sessions and their expiry, the sign-in throttle."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from orfeas.errors import InvalidOptions
from orfeas.service.auth import (
    LOCAL_USER,
    AccountNotFound,
    AccountService,
    LoginThrottle,
    LoginThrottled,
    Principal,
    Unauthenticated,
)
from orfeas.store.db import create_db_engine, sqlite_url
from orfeas.store.migrate import init_db
from orfeas.store.schema import users
from orfeas.store.users import UserExists, UserStore
from tests.fakes import Clock


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 12, 1, 9, 0, tzinfo=UTC))


@pytest.fixture
def accounts(tmp_path, clock) -> AccountService:
    engine = create_db_engine(sqlite_url(tmp_path))
    init_db(engine)
    service = AccountService(UserStore(engine, now=clock), session_hours=1.0)
    service.create_user("ann", "ann-password", is_admin=True)
    service.create_user("ben", "ben-password")
    return service


def test_passwords_are_stored_as_argon2id_hashes(accounts, tmp_path):
    engine = create_db_engine(sqlite_url(tmp_path))
    with engine.connect() as conn:
        stored = dict(conn.execute(users.select().with_only_columns(users.c.name, users.c.password_hash)).all())
    assert stored["ann"].startswith("$argon2id$") and "ann-password" not in stored["ann"]


def test_a_session_lasts_its_hours_and_ends_at_sign_out(accounts, clock):
    session = accounts.sign_in("ben", "ben-password", "127.0.0.1")
    principal, csrf = accounts.session(session.token)
    assert principal == Principal("user", principal.id, "ben", is_admin=False) and csrf == session.csrf_token
    clock.now += timedelta(minutes=59)
    assert accounts.session(session.token)[0].name == "ben"
    clock.now += timedelta(minutes=2)
    with pytest.raises(Unauthenticated, match="expired"):
        accounts.session(session.token)
    assert accounts.purge_sessions() == 1

    again = accounts.sign_in("ben", "ben-password", "127.0.0.1")
    accounts.sign_out(again.token)
    with pytest.raises(Unauthenticated):
        accounts.session(again.token)


def test_disabling_a_user_ends_their_sessions_and_keys(accounts):
    session = accounts.sign_in("ben", "ben-password", "127.0.0.1")
    _record, key = accounts.create_key("ben", "laptop")
    assert accounts.principal_for_key(key).name == "ben"
    accounts.disable_user("ben")
    with pytest.raises(Unauthenticated):
        accounts.session(session.token)
    with pytest.raises(Unauthenticated):
        accounts.principal_for_key(key)
    with pytest.raises(Unauthenticated):
        accounts.sign_in("ben", "ben-password", "127.0.0.1")


def test_api_keys_are_shown_once_and_refused_once_revoked(accounts):
    record, key = accounts.create_key("ann", "ci")
    assert key.startswith(f"ok_{record.id}_") and key.split("_", 2)[2] not in record.secret_hash
    assert accounts.principal_for_key(key).is_admin
    assert [k.label for k in accounts.list_keys("ann")] == ["ci"]
    accounts.revoke_key(record.id)
    with pytest.raises(Unauthenticated):
        accounts.principal_for_key(key)
    with pytest.raises(AccountNotFound):
        accounts.create_key("nobody")


@pytest.mark.parametrize("name", ["", "local", " ann", "a" * 65, "bad/name", "-dash"])
def test_unusable_user_names_are_refused(accounts, name):
    with pytest.raises(InvalidOptions):
        accounts.create_user(name, "long-enough")


def test_short_passwords_and_taken_names_are_refused(accounts):
    with pytest.raises(InvalidOptions, match="password"):
        accounts.create_user("cat", "short")
    with pytest.raises(UserExists):
        accounts.create_user("ben", "another-password")


def test_the_throttle_counts_failures_in_its_window():
    now = [0.0]
    throttle = LoginThrottle(attempts=3, window=60, now=lambda: now[0])
    for _ in range(3):
        throttle.check("x")
        throttle.failed("x")
    with pytest.raises(LoginThrottled) as refused:
        throttle.check("x")
    assert 0 < refused.value.retry_after <= 61
    throttle.check("y")  # other subjects are not affected
    now[0] = 61.0
    throttle.check("x")


def test_the_ownership_rule():
    bob = Principal("user", "b" * 32, "bob")
    admin = Principal("user", "a" * 32, "ann", is_admin=True)
    assert bob.may_see(bob.owner) and not bob.may_see("agent:" + "c" * 32)
    assert admin.may_see("agent:" + "c" * 32) and LOCAL_USER.may_see(bob.owner)
    assert bob.owner == "user:" + "b" * 32
