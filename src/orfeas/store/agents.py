"""The agent registry: API keys of AI agents, their accepted requests (replay guard and rate counter) and an audit log.

Secrets are never stored. An agent's secret is derived on demand from a server-side master key:

    secret = HEX(HMAC-SHA256(master_key, f"{key_id}:{secret_version}"))

so neither a listing nor a copy of the database alone reveals one; whoever holds the master key (every API server of
a cluster) can recompute it. Rotating a key bumps `secret_version`, which invalidates the old secret at once.

`agent_requests` holds one row per accepted signed request. Its unique (agent_id, nonce) refuses a replayed nonce,
and its rows of the last 60 s are the agent's sliding rate window. `admit` checks and records both in one write
transaction that holds the agent's row locked, so several API processes sharing one database admit each agent's
requests one at a time and never exceed its rate together.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import math
import os
import secrets
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from orfeas.errors import OrfeasError
from orfeas.store.db import as_utc, iso_timestamps, read_only, utcnow
from orfeas.store.schema import agent_audit, agent_requests, agents

AGENT_OPERATIONS = ("generate", "batch", "status", "download")
DEFAULT_RATE_PER_MINUTE = 100
RATE_WINDOW_SECONDS = 60
MASTER_KEY_FILE = "agent-master.key"
_MIN_MASTER_KEY_BYTES = 16


class AgentExists(OrfeasError):
    """An agent with this name is already registered."""


class AgentNotFound(OrfeasError):
    """No agent has this name (or id)."""


class AgentRevoked(OrfeasError):
    """The agent's key was revoked; it can no longer be used or rotated."""


class InvalidAgentSettings(OrfeasError, ValueError):
    """An agent's name, operations or rate is not usable."""


@dataclass(frozen=True)
class AgentRecord:
    """One row of the agents table, without any secret; timestamps are timezone-aware UTC."""

    id: str
    name: str
    key_id: str
    secret_version: int
    operations: tuple[str, ...]
    rate_per_minute: int
    created_at: datetime
    revoked_at: datetime | None
    rotated_at: datetime | None

    @property
    def active(self) -> bool:
        """True until the key is revoked."""
        return self.revoked_at is None

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready values (operations as a list, timestamps in ISO 8601)."""
        out = dataclasses.asdict(self)
        out["operations"] = list(self.operations)
        out["active"] = self.active
        return iso_timestamps(out)

    @classmethod
    def from_row(cls, row: sa.Row) -> AgentRecord:
        """Build a record from an `agents` row, normalising what the database returns."""
        values = dict(row._mapping)
        values["operations"] = tuple(values["operations"])
        for field in ("created_at", "revoked_at", "rotated_at"):
            values[field] = as_utc(values[field])
        return cls(**values)


@dataclass(frozen=True)
class Admission:
    """The rate limiter's answer to one signed request.

    `reason` is "rate", "replay" or "revoked" when refused. `reset` is the number of seconds until the oldest request
    in the agent's window leaves it (freeing a slot); `retry_after` equals it when refused for the rate, else None.
    """

    allowed: bool
    limit: int
    remaining: int
    reset: int
    reason: str | None = None
    retry_after: int | None = None


def derive_secret(master_key: bytes, key_id: str, secret_version: int) -> str:
    """An agent's secret: hex HMAC-SHA256 of "key_id:version" under the master key."""
    return hmac.new(master_key, f"{key_id}:{secret_version}".encode(), hashlib.sha256).hexdigest()


def new_key_id() -> str:
    """A fresh public key id: "ak_" and 20 URL-safe characters."""
    return "ak_" + secrets.token_urlsafe(15)


def load_master_key(value: str | None, data_dir: Path) -> bytes:
    """The master key: `value` (hex) if given, else the one in data_dir/agent-master.key, created on first use.

    The file holds 32 random bytes in hex with mode 0600; one machine works out of the box, and a cluster shares one
    key through ORFEAS_AGENT_MASTER_KEY. Two processes creating it at once end up with the same key.
    """
    if value is not None:
        return _parse_master_key(value, "ORFEAS_AGENT_MASTER_KEY")
    path = Path(data_dir) / MASTER_KEY_FILE
    if not path.exists():
        _create_master_key_file(path)
    return _parse_master_key(path.read_text(), str(path))


def _parse_master_key(text: str, source: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError as exc:
        raise ValueError(f"the agent master key in {source} is not hex") from exc
    if len(key) < _MIN_MASTER_KEY_BYTES:
        raise ValueError(f"the agent master key in {source} is shorter than {_MIN_MASTER_KEY_BYTES} bytes")
    return key


def _create_master_key_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_hex(32) + "\n")
        # A hard link appears complete and fails if the name exists, so a concurrent creator's key is never replaced.
        os.link(temporary, path)
    except FileExistsError:
        pass
    finally:
        temporary.unlink(missing_ok=True)


def _seconds_until(moment: datetime, now: datetime) -> int:
    """Whole seconds from `now` until `moment`, rounded up and at least 1."""
    return max(1, math.ceil((moment - now).total_seconds()))


def _checked_operations(operations: Iterable[str]) -> list[str]:
    wanted = set(operations)
    unknown = wanted.difference(AGENT_OPERATIONS)
    if unknown:
        raise InvalidAgentSettings(f"unknown operations {sorted(unknown)}; choose from {list(AGENT_OPERATIONS)}")
    if not wanted:
        raise InvalidAgentSettings(f"an agent needs at least one operation of {list(AGENT_OPERATIONS)}")
    return [operation for operation in AGENT_OPERATIONS if operation in wanted]


def _checked_rate(rate_per_minute: int) -> int:
    if isinstance(rate_per_minute, bool) or not isinstance(rate_per_minute, int) or rate_per_minute < 1:
        raise InvalidAgentSettings(f"rate_per_minute must be a positive integer, got {rate_per_minute!r}")
    return rate_per_minute


def _checked_name(name: str) -> str:
    if not name or name != name.strip() or len(name) > 100:
        raise InvalidAgentSettings(f"agent names are 1-100 characters without surrounding spaces, got {name!r}")
    return name


class AgentStore:
    """The agents, agent_requests and agent_audit tables; every method is one short transaction.

    `master_key` derives the secrets (see the module docstring). `now` is the clock (timezone-aware), injectable so
    tests can move the rate window without waiting.
    """

    def __init__(self, engine: sa.Engine, master_key: bytes, now: Callable[[], datetime] = utcnow) -> None:
        if len(master_key) < _MIN_MASTER_KEY_BYTES:
            raise ValueError(f"the agent master key must be at least {_MIN_MASTER_KEY_BYTES} bytes")
        self._engine = engine
        self._master_key = master_key
        self._clock = now

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the clock must return timezone-aware datetimes")
        return now.astimezone(UTC)

    def secret_for(self, agent: AgentRecord) -> str:
        """The agent's current secret (derived, never stored)."""
        return derive_secret(self._master_key, agent.key_id, agent.secret_version)

    def create(
        self, name: str, operations: Iterable[str], rate_per_minute: int = DEFAULT_RATE_PER_MINUTE
    ) -> tuple[AgentRecord, str]:
        """Register an agent; returns its record and its secret, which is shown this once.

        Raises InvalidAgentSettings for an unusable name, unknown operations or a non-positive rate, and AgentExists
        if the name is taken.
        """
        values = {
            "id": uuid.uuid4().hex,
            "name": _checked_name(name),
            "key_id": new_key_id(),
            "secret_version": 1,
            "operations": _checked_operations(operations),
            "rate_per_minute": _checked_rate(rate_per_minute),
            "created_at": self._now(),
        }
        try:
            with self._engine.begin() as conn:
                row = conn.execute(sa.insert(agents).values(values).returning(*agents.c)).one()
        except IntegrityError as exc:
            raise AgentExists(f"an agent named {name!r} already exists") from exc
        record = AgentRecord.from_row(row)
        return record, self.secret_for(record)

    def list(self) -> list[AgentRecord]:
        """Every agent, revoked ones included, oldest first (no secrets)."""
        with read_only(self._engine) as conn:
            rows = conn.execute(sa.select(agents).order_by(agents.c.created_at, agents.c.name)).all()
        return [AgentRecord.from_row(row) for row in rows]

    def get_by_key(self, key_id: str) -> AgentRecord | None:
        """The agent with this public key id, or None."""
        with read_only(self._engine) as conn:
            row = conn.execute(sa.select(agents).where(agents.c.key_id == key_id)).first()
        return AgentRecord.from_row(row) if row else None

    def get_by_name(self, name: str) -> AgentRecord | None:
        """The agent with this name, or None."""
        with read_only(self._engine) as conn:
            row = conn.execute(sa.select(agents).where(agents.c.name == name)).first()
        return AgentRecord.from_row(row) if row else None

    def revoke(self, name: str) -> AgentRecord:
        """Revoke an agent's key for good; revoking it again changes nothing. Raises AgentNotFound."""
        with self._engine.begin() as conn:
            revoke = (
                sa.update(agents)
                .where(agents.c.name == name, agents.c.revoked_at.is_(None))
                .values(revoked_at=self._now())
                .returning(*agents.c)
            )
            row = conn.execute(revoke).first() or conn.execute(sa.select(agents).where(agents.c.name == name)).first()
        if row is None:
            raise AgentNotFound(f"no agent named {name!r}")
        return AgentRecord.from_row(row)

    def rotate(self, name: str) -> tuple[AgentRecord, str]:
        """Give an active agent a new secret; the old one stops working at once. Raises AgentNotFound, AgentRevoked."""
        row = self._update_active(name, secret_version=agents.c.secret_version + 1, rotated_at=self._now())
        record = AgentRecord.from_row(row)
        return record, self.secret_for(record)

    def set_rate(self, name: str, rate_per_minute: int) -> AgentRecord:
        """Change an active agent's requests per minute. Raises InvalidAgentSettings, AgentNotFound, AgentRevoked."""
        return AgentRecord.from_row(self._update_active(name, rate_per_minute=_checked_rate(rate_per_minute)))

    def _update_active(self, name: str, **values: Any) -> sa.Row:
        with self._engine.begin() as conn:
            update = (
                sa.update(agents)
                .where(agents.c.name == name, agents.c.revoked_at.is_(None))
                .values(**values)
                .returning(*agents.c)
            )
            row = conn.execute(update).first()
            if row is None:
                if conn.scalar(sa.select(agents.c.id).where(agents.c.name == name)) is None:
                    raise AgentNotFound(f"no agent named {name!r}")
                raise AgentRevoked(f"agent {name!r} is revoked")
        return row

    def admit(self, agent_id: str, nonce: str, window_seconds: int = 300) -> Admission:
        """Record one signed request if the agent's rate allows it and its nonce is new. Raises AgentNotFound.

        Refused requests record nothing, so they spend no quota. `window_seconds` is the authenticator's timestamp
        window: a nonce must be remembered for twice that (a request may be signed up to that far in the past or
        future), so this agent's rows older than that are deleted here as well.
        """
        retention = timedelta(seconds=max(2 * window_seconds, RATE_WINDOW_SECONDS))
        with self._engine.begin() as conn:
            now = self._now()
            # Locks the agent's row on PostgreSQL; SQLite's BEGIN IMMEDIATE (see store.db) already serialises.
            lock = sa.select(agents.c.rate_per_minute, agents.c.revoked_at).where(agents.c.id == agent_id)
            agent = conn.execute(lock.with_for_update()).first()
            if agent is None:
                raise AgentNotFound(f"no agent with id {agent_id!r}")
            mine = agent_requests.c.agent_id == agent_id
            conn.execute(sa.delete(agent_requests).where(mine, agent_requests.c.at < now - retention))
            window_start = now - timedelta(seconds=RATE_WINDOW_SECONDS)
            in_window = sa.select(sa.func.count(), sa.func.min(agent_requests.c.at)).where(
                mine, agent_requests.c.at > window_start
            )
            count, oldest = conn.execute(in_window).one()
            limit = agent.rate_per_minute
            frees_at = (as_utc(oldest) if oldest is not None else now) + timedelta(seconds=RATE_WINDOW_SECONDS)
            reset = _seconds_until(frees_at, now)
            left = max(0, limit - count)
            if agent.revoked_at is not None:
                return Admission(allowed=False, limit=limit, remaining=left, reset=reset, reason="revoked")
            replay = Admission(allowed=False, limit=limit, remaining=left, reset=reset, reason="replay")
            if conn.execute(sa.select(agent_requests.c.id).where(mine, agent_requests.c.nonce == nonce)).first():
                return replay
            if count >= limit:
                return Admission(allowed=False, limit=limit, remaining=0, reset=reset, reason="rate", retry_after=reset)
            try:
                # Not expected to fail while the lock above holds; a savepoint keeps a replay from becoming an error.
                with conn.begin_nested():
                    conn.execute(sa.insert(agent_requests).values(agent_id=agent_id, nonce=nonce, at=now))
            except IntegrityError:
                return replay
        return Admission(allowed=True, limit=limit, remaining=limit - count - 1, reset=reset)

    def count_recent_requests(self, agent_id: str, seconds: float = RATE_WINDOW_SECONDS) -> int:
        """How many of the agent's requests were admitted in the last `seconds`."""
        since = self._now() - timedelta(seconds=seconds)
        query = sa.select(sa.func.count()).where(agent_requests.c.agent_id == agent_id, agent_requests.c.at > since)
        with read_only(self._engine) as conn:
            return conn.scalar(query) or 0

    def purge_requests(self, older_than_seconds: float = 600) -> int:
        """Delete every agent's request rows older than this (keep it at least twice the timestamp window)."""
        cutoff = self._now() - timedelta(seconds=older_than_seconds)
        with self._engine.begin() as conn:
            return conn.execute(sa.delete(agent_requests).where(agent_requests.c.at < cutoff)).rowcount

    def audit(
        self,
        key_id: str,
        operation: str,
        outcome: int,
        agent_id: str | None = None,
        job_id: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Record one agent request: the key it presented, what it asked for and the HTTP status it got."""
        self.audit_many([audit_row(key_id, operation, outcome, agent_id, job_id, detail, at=self._now())])

    def audit_many(self, rows: list[dict[str, Any]]) -> None:
        """Record several audit rows (the columns of `audit`, with their own `at`) in one transaction."""
        if rows:
            with self._engine.begin() as conn:
                conn.execute(sa.insert(agent_audit), rows)

    def audit_log(self, agent_name: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The latest audit rows, newest first, as JSON-ready dicts; only one agent's when `agent_name` is given."""
        query = (
            sa.select(
                agent_audit.c.at,
                agents.c.name.label("agent"),
                agent_audit.c.key_id,
                agent_audit.c.operation,
                agent_audit.c.job_id,
                agent_audit.c.outcome,
                agent_audit.c.detail,
            )
            .select_from(agent_audit.outerjoin(agents, agent_audit.c.agent_id == agents.c.id))
            .order_by(agent_audit.c.at.desc(), agent_audit.c.id.desc())
            .limit(limit)
        )
        if agent_name is not None:
            query = query.where(agents.c.name == agent_name)
        with read_only(self._engine) as conn:
            rows = conn.execute(query).all()
        return [dict(row._mapping) | {"at": as_utc(row.at).isoformat()} for row in rows]

    def delete_audit_before(self, cutoff: datetime) -> int:
        """Delete audit rows recorded before `cutoff`; returns how many."""
        if cutoff.tzinfo is None:
            raise ValueError("cutoff must be timezone-aware")
        with self._engine.begin() as conn:
            return conn.execute(sa.delete(agent_audit).where(agent_audit.c.at < cutoff.astimezone(UTC))).rowcount


def audit_row(
    key_id: str,
    operation: str,
    outcome: int,
    agent_id: str | None = None,
    job_id: str | None = None,
    detail: str | None = None,
    *,
    at: datetime,
) -> dict[str, Any]:
    """One row of the audit table, its strings cut to their columns."""
    return {
        "agent_id": agent_id,
        "key_id": key_id[:40],
        "operation": operation[:32],
        "job_id": job_id,
        "outcome": outcome,
        "detail": detail,
        "at": at,
    }
