"""Who is asking, and what they may see: users, API keys, studio sessions and the one ownership rule.

Every job belongs to a principal, a user or an agent, written "user:<id>" or "agent:<id>" in the job's `owner`.
A principal sees, downloads and cancels only its own jobs; an admin sees every job. With authentication off (only
allowed on loopback: one person on one machine) every request acts as LOCAL_USER, an admin.

Passwords are hashed with argon2id (argon2-cffi). API keys are `ok_<id>_<secret>`: the id is looked up, the secret
is 256 random bits compared by SHA-256 (a slow hash adds nothing to a secret that cannot be guessed). A session is a
random cookie token, stored as its SHA-256, with its own CSRF token that state-changing requests must echo.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from orfeas.errors import InvalidOptions, OrfeasError
from orfeas.store.users import ApiKeyRecord, UserRecord, UserStore

USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
RESERVED_NAMES = {"local"}
MIN_PASSWORD = 8
MAX_PASSWORD = 1024  # bounds the hashing work one request can ask for
API_KEY = re.compile(r"ok_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
SESSION_COOKIE = "orfeas_session"
CSRF_COOKIE = "orfeas_csrf"
CSRF_HEADER = "X-CSRF-Token"


class Unauthenticated(OrfeasError):
    """The request carries no valid credentials (401)."""


class Forbidden(OrfeasError):
    """The caller is known but may not do this (403): a missing CSRF token, a foreign origin, a non-admin."""


class LoginThrottled(OrfeasError):
    """Too many failed sign-ins for this name or address (429); `retry_after` seconds until the next try."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AccountNotFound(OrfeasError, LookupError):
    """No user (or key) has this name (or id)."""


@dataclass(frozen=True)
class Principal:
    """The caller of a request: a user or an agent."""

    kind: Literal["user", "agent"]
    id: str
    name: str
    is_admin: bool = False

    @property
    def owner(self) -> str:
        """The value of `jobs.owner` for this principal's jobs."""
        return f"{self.kind}:{self.id}"

    def may_see(self, owner: str) -> bool:
        """The one ownership rule: your own jobs, or every job for an admin."""
        return self.is_admin or owner == self.owner


LOCAL_USER = Principal("user", "local", "local", is_admin=True)


def agent_principal(agent_id: str, name: str) -> Principal:
    return Principal("agent", agent_id, name)


@dataclass(frozen=True)
class NewSession:
    """A signed-in session: the cookie's token (shown once), its CSRF token and its end."""

    token: str
    csrf_token: str
    expires_at: datetime
    principal: Principal


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _principal(user: UserRecord) -> Principal:
    return Principal("user", user.id, user.name, is_admin=user.is_admin)


class LoginThrottle:
    """At most `attempts` failed sign-ins per subject (a name, an address) in `window` seconds, in this process."""

    def __init__(self, attempts: int = 10, window: float = 900.0, now: Callable[[], float] = time.monotonic) -> None:
        self._attempts = attempts
        self._window = window
        self._now = now
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, subject: str) -> None:
        """Raise LoginThrottled if `subject` used up its failures."""
        with self._lock:
            now = self._now()
            failures = self._recent(subject, now)
            if len(failures) >= self._attempts:
                retry = max(1, int(failures[0] + self._window - now) + 1)
                raise LoginThrottled(f"too many failed sign-ins; try again in {retry} s", retry)

    def failed(self, subject: str) -> None:
        with self._lock:
            now = self._now()
            self._recent(subject, now).append(now)
            if len(self._failures) > 10_000:  # bound the memory an address sweep can take
                self._failures = {k: v for k, v in self._failures.items() if v and v[-1] > now - self._window}

    def _recent(self, subject: str, now: float) -> deque[float]:
        failures = self._failures.setdefault(subject, deque())
        while failures and failures[0] <= now - self._window:
            failures.popleft()
        return failures


class AccountService:
    """Users, API keys and sessions: creating them, checking credentials, turning them into a Principal."""

    def __init__(self, store: UserStore, session_hours: float = 12.0) -> None:
        self._store = store
        self._session = timedelta(hours=session_hours)
        self._hasher = PasswordHasher()
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))  # equal work for unknown names
        # Guessing one user's password is slowed per name; trying many names from one address, per address.
        self._by_name = LoginThrottle(attempts=10)
        self._by_client = LoginThrottle(attempts=100)

    # users

    def create_user(self, name: str, password: str | None, is_admin: bool = False) -> UserRecord:
        """Register a user (a password for the studio, or None for API keys only). Raises InvalidOptions, UserExists."""
        return self._store.create_user(uuid.uuid4().hex, checked_name(name), self._hash(password), is_admin)

    def set_password(self, name: str, password: str) -> UserRecord:
        return self._updated(name, password_hash=self._hash(password))

    def set_admin(self, name: str, is_admin: bool) -> UserRecord:
        return self._updated(name, is_admin=is_admin)

    def disable_user(self, name: str) -> UserRecord:
        """Refuse the user's password, keys and sessions from now on (their jobs stay)."""
        return self._updated(name, disabled_at=self._store.now())

    def list_users(self) -> list[UserRecord]:
        return self._store.list_users()

    def has_admin(self) -> bool:
        return self._store.count_admins() > 0

    def _updated(self, name: str, **values: object) -> UserRecord:
        user = self._store.update_user(name, **values)
        if user is None:
            raise AccountNotFound(f"no user named {name!r}")
        return user

    def _hash(self, password: str | None) -> str | None:
        if password is None:
            return None
        if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
            raise InvalidOptions(f"a password is {MIN_PASSWORD}-{MAX_PASSWORD} characters")
        return self._hasher.hash(password)

    # API keys

    def create_key(self, user_name: str, label: str = "") -> tuple[ApiKeyRecord, str]:
        """A new API key for the user; returns its record and the key, which is shown this once."""
        found = self._store.user_by_name(user_name)
        if found is None:
            raise AccountNotFound(f"no user named {user_name!r}")
        if len(label) > 100:
            raise InvalidOptions("a key label is at most 100 characters")
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        record = self._store.create_key(key_id, found[0].id, label, _sha256(secret))
        return record, f"ok_{key_id}_{secret}"

    def revoke_key(self, key_id: str) -> ApiKeyRecord:
        record = self._store.revoke_key(key_id.removeprefix("ok_").split("_")[0])
        if record is None:
            raise AccountNotFound(f"no API key {key_id!r}")
        return record

    def list_keys(self, user_name: str | None = None) -> list[ApiKeyRecord]:
        if user_name is None:
            return self._store.list_keys()
        found = self._store.user_by_name(user_name)
        if found is None:
            raise AccountNotFound(f"no user named {user_name!r}")
        return self._store.list_keys(found[0].id)

    def principal_for_key(self, key: str) -> Principal:
        """The user an `Authorization: Bearer` key belongs to; Unauthenticated for a wrong, revoked or
        disabled one (one message for all, so a caller cannot probe which)."""
        refused = Unauthenticated("invalid or revoked API key")
        match = API_KEY.fullmatch(key)
        if match is None:
            raise refused
        found = self._store.key_and_user(match.group(1))
        if found is None or not hmac.compare_digest(found[0].secret_hash, _sha256(match.group(2))):
            raise refused
        record, user = found
        if record.revoked_at is not None or not user.active:
            raise refused
        return _principal(user)

    # sessions

    def sign_in(self, name: str, password: str, client: str) -> NewSession:
        """Check a name and password and open a session; Unauthenticated or LoginThrottled otherwise."""
        self._by_name.check(name[:64])
        self._by_client.check(client)
        found = self._store.user_by_name(name) if len(password) <= MAX_PASSWORD else None
        user, password_hash = found if found else (None, None)
        if not self._password_matches(password_hash, password[:MAX_PASSWORD]) or user is None or not user.active:
            self._by_name.failed(name[:64])
            self._by_client.failed(client)
            raise Unauthenticated("wrong user name or password")
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        expires = self._store.now() + self._session
        self._store.create_session(_sha256(token), user.id, csrf, expires)
        return NewSession(token, csrf, expires, _principal(user))

    def _password_matches(self, password_hash: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash or self._dummy_hash, password) and password_hash is not None
        except (VerificationError, InvalidHashError):
            return False

    def session(self, token: str) -> tuple[Principal, str]:
        """The principal of a session cookie and its CSRF token; Unauthenticated when unknown or expired."""
        record = self._store.session(_sha256(token)) if len(token) <= 100 else None
        if record is None or record.expires_at <= self._store.now():
            raise Unauthenticated("not signed in, or the session expired: sign in again")
        user = self._store.user_by_id(record.user_id)
        if user is None or not user.active:
            raise Unauthenticated("not signed in, or the session expired: sign in again")
        return _principal(user), record.csrf_token

    def sign_out(self, token: str) -> None:
        self._store.delete_session(_sha256(token))

    def purge_sessions(self) -> int:
        return self._store.delete_expired_sessions()

    def names(self, owners: set[str]) -> dict[str, str]:
        """{owner: "user:<name>"} for the user owners among `owners` (for the admin's view)."""
        user_ids = {owner.removeprefix("user:") for owner in owners if owner.startswith("user:")}
        names = self._store.names(user_ids)
        return {f"user:{user_id}": f"user:{name}" for user_id, name in names.items()}


def checked_name(name: str) -> str:
    if not USER_NAME.fullmatch(name) or name in RESERVED_NAMES:
        raise InvalidOptions(
            f"user names are 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit, and not "
            f"{', '.join(sorted(RESERVED_NAMES))}; got {name!r}"
        )
    return name
