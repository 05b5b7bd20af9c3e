"""Users, their API keys and studio sessions: plain reads and writes (the rules are in `service/auth.py`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from orfeas.errors import OrfeasError
from orfeas.store.db import SingleReads, as_utc, read_only, utcnow
from orfeas.store.schema import api_keys, server_facts, sessions, users


class UserExists(OrfeasError):
    """A user with this name is already registered."""


@dataclass(frozen=True)
class UserRecord:
    """One row of the users table (the password hash stays in the store)."""

    id: str
    name: str
    is_admin: bool
    has_password: bool
    created_at: datetime
    disabled_at: datetime | None

    @property
    def active(self) -> bool:
        return self.disabled_at is None


@dataclass(frozen=True)
class ApiKeyRecord:
    """One row of the api_keys table, with its user's name."""

    id: str
    user_id: str
    user_name: str
    label: str
    secret_hash: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class SessionRecord:
    """One studio session: whose it is, its CSRF token and when it ends."""

    user_id: str
    csrf_token: str
    expires_at: datetime


def _user(row: Mapping[str, Any] | sa.RowMapping) -> UserRecord:
    """A user from a `users` row's mapping (`Row._mapping`)."""
    return UserRecord(
        id=row["id"],
        name=row["name"],
        is_admin=bool(row["is_admin"]),
        has_password=row["password_hash"] is not None,
        created_at=as_utc(row["created_at"]),
        disabled_at=as_utc(row["disabled_at"]),
    )


def _key(row: sa.Row[*tuple[Any, ...]]) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row.id,
        user_id=row.user_id,
        user_name=row.user_name,
        label=row.label,
        secret_hash=row.secret_hash,
        created_at=as_utc(row.created_at),
        revoked_at=as_utc(row.revoked_at),
    )


_KEYS_JOIN_USERS = api_keys.join(users, api_keys.c.user_id == users.c.id)
_KEYS_WITH_USER = sa.select(*api_keys.c, users.c.name.label("user_name")).select_from(_KEYS_JOIN_USERS)
# A key and all of its user's columns (prefixed u_), the read of every request with an API key; built once.
_KEY_AND_USER = (
    sa.select(*api_keys.c, *(c.label(f"u_{c.name}") for c in users.c), users.c.name.label("user_name"))
    .select_from(_KEYS_JOIN_USERS)
    .where(api_keys.c.id == sa.bindparam("key_id"))
)


class UserStore:
    """The users, api_keys, sessions and server_facts tables; every method is one short transaction."""

    def __init__(self, engine: sa.Engine, now: Callable[[], datetime] = utcnow) -> None:
        self._engine = engine
        self._clock = now
        self._single_read = SingleReads(engine)

    def now(self) -> datetime:
        return self._clock().astimezone(UTC)

    # users

    def create_user(self, user_id: str, name: str, password_hash: str | None, is_admin: bool) -> UserRecord:
        """Insert a user; raises UserExists when the name is taken."""
        values = {
            "id": user_id,
            "name": name,
            "password_hash": password_hash,
            "is_admin": is_admin,
            "created_at": self.now(),
        }
        try:
            with self._engine.begin() as conn:
                row = conn.execute(sa.insert(users).values(values).returning(*users.c)).one()
        except IntegrityError:
            raise UserExists(f"a user named {name!r} already exists") from None
        return _user(row._mapping)

    def user_by_name(self, name: str) -> tuple[UserRecord, str | None] | None:
        """The user with this name and its password hash, or None."""
        with read_only(self._engine) as conn:
            row = conn.execute(sa.select(users).where(users.c.name == name)).first()
        return (_user(row._mapping), row.password_hash) if row else None

    def user_by_id(self, user_id: str) -> UserRecord | None:
        with read_only(self._engine) as conn:
            row = conn.execute(sa.select(users).where(users.c.id == user_id)).first()
        return _user(row._mapping) if row else None

    def list_users(self) -> list[UserRecord]:
        with read_only(self._engine) as conn:
            rows = conn.execute(sa.select(users).order_by(users.c.created_at, users.c.name)).all()
        return [_user(row._mapping) for row in rows]

    def count_admins(self) -> int:
        query = sa.select(sa.func.count()).where(users.c.is_admin, users.c.disabled_at.is_(None))
        with read_only(self._engine) as conn:
            return conn.scalar(query) or 0

    def update_user(self, name: str, **values: object) -> UserRecord | None:
        """Change columns of the named user (password_hash, is_admin, disabled_at); None if there is none."""
        with self._engine.begin() as conn:
            row = conn.execute(
                sa.update(users).where(users.c.name == name).values(**values).returning(*users.c)
            ).first()
            if row is not None and values.get("disabled_at") is not None:
                conn.execute(sa.delete(sessions).where(sessions.c.user_id == row.id))
        return _user(row._mapping) if row else None

    def names(self, user_ids: set[str]) -> dict[str, str]:
        """{user id: name} for those of `user_ids` that exist."""
        if not user_ids:
            return {}
        with read_only(self._engine) as conn:
            return dict(conn.execute(sa.select(users.c.id, users.c.name).where(users.c.id.in_(user_ids))).all())

    # API keys

    def create_key(self, key_id: str, user_id: str, label: str, secret_hash: str) -> ApiKeyRecord:
        values = {
            "id": key_id,
            "user_id": user_id,
            "label": label,
            "secret_hash": secret_hash,
            "created_at": self.now(),
        }
        with self._engine.begin() as conn:
            conn.execute(sa.insert(api_keys).values(values))
            return _key(conn.execute(_KEYS_WITH_USER.where(api_keys.c.id == key_id)).one())

    def key_and_user(self, key_id: str) -> tuple[ApiKeyRecord, UserRecord] | None:
        """A key and its user in one read (what every request with an API key needs)."""
        with self._single_read() as conn:
            row = conn.execute(_KEY_AND_USER, {"key_id": key_id}).first()
        if row is None:
            return None
        return _key(row), _user({c.name: row._mapping[f"u_{c.name}"] for c in users.c})

    def key(self, key_id: str) -> ApiKeyRecord | None:
        with read_only(self._engine) as conn:
            row = conn.execute(_KEYS_WITH_USER.where(api_keys.c.id == key_id)).first()
        return _key(row) if row else None

    def list_keys(self, user_id: str | None = None) -> list[ApiKeyRecord]:
        query = _KEYS_WITH_USER.order_by(api_keys.c.created_at, api_keys.c.id)
        if user_id is not None:
            query = query.where(api_keys.c.user_id == user_id)
        with read_only(self._engine) as conn:
            return [_key(row) for row in conn.execute(query)]

    def revoke_key(self, key_id: str) -> ApiKeyRecord | None:
        """Mark a key revoked (again: unchanged); None if there is no such key."""
        with self._engine.begin() as conn:
            conn.execute(
                sa.update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=self.now())
            )
            row = conn.execute(_KEYS_WITH_USER.where(api_keys.c.id == key_id)).first()
        return _key(row) if row else None

    # sessions

    def create_session(self, token_hash: str, user_id: str, csrf_token: str, expires_at: datetime) -> None:
        values = {
            "token_hash": token_hash,
            "user_id": user_id,
            "csrf_token": csrf_token,
            "created_at": self.now(),
            "expires_at": expires_at,
        }
        with self._engine.begin() as conn:
            conn.execute(sa.insert(sessions).values(values))

    def session(self, token_hash: str) -> SessionRecord | None:
        query = sa.select(sessions.c.user_id, sessions.c.csrf_token, sessions.c.expires_at).where(
            sessions.c.token_hash == token_hash
        )
        with read_only(self._engine) as conn:
            row = conn.execute(query).first()
        return SessionRecord(row.user_id, row.csrf_token, as_utc(row.expires_at)) if row else None

    def delete_session(self, token_hash: str) -> None:
        with self._engine.begin() as conn:
            conn.execute(sa.delete(sessions).where(sessions.c.token_hash == token_hash))

    def delete_expired_sessions(self) -> int:
        with self._engine.begin() as conn:
            return conn.execute(sa.delete(sessions).where(sessions.c.expires_at < self.now())).rowcount

    # server facts

    def fact(self, name: str) -> str | None:
        with read_only(self._engine) as conn:
            return conn.scalar(sa.select(server_facts.c.value).where(server_facts.c.name == name))

    def set_fact_once(self, name: str, value: str) -> str:
        """Store `value` under `name` unless one is stored already; returns the stored value."""
        try:
            with self._engine.begin() as conn:
                existing = conn.scalar(sa.select(server_facts.c.value).where(server_facts.c.name == name))
                if existing is not None:
                    return existing
                conn.execute(sa.insert(server_facts).values(name=name, value=value))
        except IntegrityError:  # another process stored one first
            stored = self.fact(name)
            if stored is None:
                raise
            return stored
        return value
