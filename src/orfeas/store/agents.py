"""The agent registry's tables: agents (no secrets), their accepted requests and the audit log; plain reads and writes.

The rules (key derivation, what a valid name, rate or operation is, which requests are admitted) live in
`orfeas.service`: `agent_keys`, `agent_accounts` and `agents`. `agent_requests` holds one row per accepted signed
request; its unique (agent_id, nonce) makes a nonce recordable only once. `locked_requests_many` reads and writes
agents' rows in one transaction that holds those agents' rows locked, so several API processes sharing one database
admit each agent's requests one at a time (and the admission queue decides concurrent requests together).

The agent's row keeps a running count of its requests (`window_count` rows at or after `window_tail`), so that the
admission transaction reads only the rows that left the rate window since the previous admission, each row once,
instead of counting the whole window every time.
"""

from __future__ import annotations

import builtins
import dataclasses
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from orfeas.errors import OrfeasError
from orfeas.store.db import FixedStatements, NoWaitWrites, SingleReads, as_utc, iso_timestamps, read_only, utcnow
from orfeas.store.schema import agent_audit, agent_requests, agents


class AgentExists(OrfeasError):
    """An agent with this name is already registered."""


class AgentNotFound(OrfeasError):
    """No agent has this name (or id)."""


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
    def from_row(cls, row: sa.Row[Any]) -> AgentRecord:
        """Build a record from an `agents` row, normalising what the database returns (the rate window's columns
        are the store's own bookkeeping, left out)."""
        return cls.from_mapping(row._mapping)

    @classmethod
    def from_mapping(cls, columns: Mapping[str, Any] | sa.RowMapping) -> AgentRecord:
        """`from_row` for an `agents` row's columns by name."""
        values = {name: columns[name] for name in _RECORD_FIELDS}
        values["operations"] = tuple(values["operations"])
        for field in ("created_at", "revoked_at", "rotated_at"):
            values[field] = as_utc(values[field])
        return cls(**values)


_RECORD_FIELDS = tuple(field.name for field in dataclasses.fields(AgentRecord))


@dataclass
class RecentRequests:
    """One agent's accepted requests, read and written inside the transaction of `AgentStore.locked_requests_many`.

    `now` is the store's clock, read once when the transaction began; `record` stamps the request with it. `count`
    and `tail` are the agent's running count: `count` rows at or after `tail`; the transaction writes them back to
    the agent's row once, as it commits (`changed`).
    """

    conn: sa.Connection
    statements: FixedStatements
    agent_id: str
    rate_per_minute: int
    revoked: bool
    secret_version: int
    now: datetime
    count: int
    tail: datetime | None
    changed: bool = False

    def count_since(self, since: datetime) -> tuple[int, datetime | None]:
        """How many of this agent's requests are later than `since`, and the oldest of them (UTC), if any.

        The running count drops the rows from its tail up to `since` (those that left since the last admission), and
        the tail moves to the oldest row after `since`. Should the clock be behind the tail (another process's clock,
        or a step back), the window is counted afresh, so a row is never stamped before the tail.
        """
        if self.tail is not None and self.now < self.tail:
            counted = self._first(_COUNT_SINCE, {"agent": self.agent_id, "since": since})
            self.count, self.tail = counted["count"], as_utc(counted["oldest"])
            self.changed = True
        elif self.tail is not None and self.tail <= since:
            passed = self._first(_LEFT_AND_OLDEST, {"agent": self.agent_id, "tail": self.tail, "since": since})
            self.count -= passed["left"]
            self.tail = as_utc(passed["oldest"]) if self.count else None
            self.changed = True
        return self.count, self.tail

    def nonce_used(self, nonce: str, since: datetime) -> bool:
        """True if this agent has a request recorded with this nonce at or after `since` (older rows are forgotten,
        whether or not the housekeeping has deleted them yet)."""
        return bool(
            self.statements.rows(self.conn, _NONCE_USED, {"agent": self.agent_id, "nonce": nonce, "since": since})
        )

    def record(self, nonces: Sequence[str], forgotten_before: datetime) -> set[str]:
        """Record these requests (distinct nonces) at `now` and count them; returns the nonces recorded, leaving out
        those recorded at or after `forgotten_before` (replays). An older row of the same nonce is taken over
        (stamped `now`). On SQLite one statement per nonce on the driver's connection; on PostgreSQL one multi-row
        statement (SQLAlchemy's "insertmanyvalues"), a round trip saved per nonce.

        Call `count_since` first: the rows it has not passed yet stay counted.
        """
        if not nonces:
            return set()
        rows = [
            {"agent_id": self.agent_id, "nonce": nonce, "at": self.now, "forgotten_before": forgotten_before}
            for nonce in nonces
        ]
        upsert = _RECORD_NONCES[self.conn.dialect.name]
        if self.statements.compiled_here:
            recorded = {taken["nonce"] for row in rows for taken in self.statements.rows(self.conn, upsert, row)}
        else:
            recorded = set(self.conn.execute(upsert, rows).scalars())
        if recorded:
            self.count += len(recorded)
            self.tail = min(self.tail, self.now) if self.tail else self.now
            self.changed = True
        return recorded

    def save(self) -> None:
        """Write the running count back to the agent's row, if it changed."""
        if self.changed:
            values = {"agent": self.agent_id, "window_count": self.count, "window_tail": self.tail}
            self.statements.rows(self.conn, _SAVE_WINDOW, values)
            self.changed = False

    def _first(self, statement: sa.Executable, params: dict[str, Any]) -> dict[str, Any]:
        found = self.statements.first(self.conn, statement, params)
        assert found is not None  # an aggregate's one row
        return found


def _record_nonces(dialect: Any) -> sa.Executable:
    """The upsert of `RecentRequests.record`, built once per dialect (its values are bound at each call; several
    rows at once go as one multi-row INSERT, SQLAlchemy's "insertmanyvalues")."""
    insert = dialect.insert(agent_requests).values(
        agent_id=sa.bindparam("agent_id"), nonce=sa.bindparam("nonce"), at=sa.bindparam("at")
    )
    return insert.on_conflict_do_update(
        index_elements=[agent_requests.c.agent_id, agent_requests.c.nonce],
        set_={"at": insert.excluded.at},
        where=agent_requests.c.at < sa.bindparam("forgotten_before"),
    ).returning(agent_requests.c.nonce)


# The admission's statements, built once: building a statement costs more than SQLAlchemy's cached compilation.
_RECORD_NONCES = {"postgresql": _record_nonces(postgresql), "sqlite": _record_nonces(sqlite)}
_SAVE_WINDOW = (
    sa.update(agents)
    .where(agents.c.id == sa.bindparam("agent"))
    .values(window_count=sa.bindparam("window_count"), window_tail=sa.bindparam("window_tail"))
)
_at = agent_requests.c.at  # lower case: ruff's SIM300 takes upper-case names for constants and turns comparisons
_mine = agent_requests.c.agent_id == sa.bindparam("agent")
_COUNT_SINCE = sa.select(sa.func.count().label("count"), sa.func.min(_at).label("oldest")).where(
    _mine, _at > sa.bindparam("since")
)
# in one statement: the rows from the tail up to `since` (they left the window), and the oldest after `since`
_LEFT_AND_OLDEST = sa.select(
    sa.select(sa.func.count())
    .where(_mine, _at >= sa.bindparam("tail"), _at <= sa.bindparam("since"))
    .scalar_subquery()
    .label("left"),
    sa.select(_at).where(_mine, _at > sa.bindparam("since")).order_by(_at).limit(1).scalar_subquery().label("oldest"),
)
_NONCE_USED = sa.select(agent_requests.c.id).where(
    _mine, agent_requests.c.nonce == sa.bindparam("nonce"), _at >= sa.bindparam("since")
)
# Locks the agent's row on PostgreSQL; SQLite's BEGIN IMMEDIATE (see store.db) already serialises.
_LOCK_AGENT = (
    sa.select(
        agents.c.rate_per_minute,
        agents.c.revoked_at,
        agents.c.secret_version,
        agents.c.window_count,
        agents.c.window_tail,
    )
    .where(agents.c.id == sa.bindparam("agent"))
    .with_for_update()
)
_BY_KEY = sa.select(agents).where(agents.c.key_id == sa.bindparam("key_id"))


class AgentStore:
    """The agents, agent_requests and agent_audit tables; every method is one short transaction.

    `now` is the clock (timezone-aware), injectable so tests can move the rate window without waiting.
    """

    def __init__(self, engine: sa.Engine, now: Callable[[], datetime] = utcnow) -> None:
        self._engine = engine
        self._clock = now
        self._single_read = SingleReads(engine)
        self._no_wait = NoWaitWrites.for_engine(engine)
        self._statements = FixedStatements(engine.dialect)

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the clock must return timezone-aware datetimes")
        return now.astimezone(UTC)

    def insert(self, name: str, key_id: str, operations: builtins.list[str], rate_per_minute: int) -> AgentRecord:
        """Add an agent (values already checked) with secret version 1. Raises AgentExists if the name is taken."""
        values = {
            "id": uuid.uuid4().hex,
            "name": name,
            "key_id": key_id,
            "secret_version": 1,
            "operations": operations,
            "rate_per_minute": rate_per_minute,
            "created_at": self._now(),
        }
        try:
            with self._engine.begin() as conn:
                row = conn.execute(sa.insert(agents).values(values).returning(*agents.c)).one()
        except IntegrityError as exc:
            raise AgentExists(f"an agent named {name!r} already exists") from exc
        return AgentRecord.from_row(row)

    def list(self) -> builtins.list[AgentRecord]:
        """Every agent, revoked ones included, oldest first (no secrets)."""
        with read_only(self._engine) as conn:
            rows = conn.execute(sa.select(agents).order_by(agents.c.created_at, agents.c.name)).all()
        return [AgentRecord.from_row(row) for row in rows]

    def get_by_key(self, key_id: str) -> AgentRecord | None:
        """The agent with this public key id, or None."""
        columns = self._single_read.first(_BY_KEY, {"key_id": key_id})
        return AgentRecord.from_mapping(columns) if columns else None

    def get_by_name(self, name: str) -> AgentRecord | None:
        """The agent with this name, or None."""
        with read_only(self._engine) as conn:
            row = conn.execute(sa.select(agents).where(agents.c.name == name)).first()
        return AgentRecord.from_row(row) if row else None

    def revoke(self, name: str) -> AgentRecord:
        """Set the agent's `revoked_at` unless it is set already; returns the record. Raises AgentNotFound."""
        return self._update_active(name, revoked_at=self._now())

    def rotate_secret(self, name: str) -> AgentRecord:
        """Bump an active agent's secret version; returns the record as it now is (unchanged if revoked).

        Raises AgentNotFound.
        """
        return self._update_active(name, secret_version=agents.c.secret_version + 1, rotated_at=self._now())

    def set_rate(self, name: str, rate_per_minute: int) -> AgentRecord:
        """Set an active agent's requests per minute; returns the record as it now is (unchanged if revoked).

        Raises AgentNotFound.
        """
        return self._update_active(name, rate_per_minute=rate_per_minute)

    def _update_active(self, name: str, **values: Any) -> AgentRecord:
        """Update the agent if it is not revoked; either way the row as it is after the transaction."""
        with self._engine.begin() as conn:
            update = (
                sa.update(agents)
                .where(agents.c.name == name, agents.c.revoked_at.is_(None))
                .values(**values)
                .returning(*agents.c)
            )
            row = conn.execute(update).first() or conn.execute(sa.select(agents).where(agents.c.name == name)).first()
        if row is None:
            raise AgentNotFound(f"no agent named {name!r}")
        return AgentRecord.from_row(row)

    @property
    def writes_without_waiting(self) -> bool:
        """True where `locked_requests_many(..., no_wait=True)` is available (SQLite, a local file)."""
        return self._no_wait is not None

    @contextmanager
    def locked_requests_many(
        self, agent_ids: Iterable[str], no_wait: bool = False
    ) -> Iterator[dict[str, RecentRequests]]:
        """One write transaction over several agents' requests, holding their rows locked (in id order, so that
        two such transactions never wait for each other in a cycle); agents that do not exist are left out.

        All of them share one `now`. Leaving the block normally writes the running counts and commits; an exception
        rolls everything back. With `no_wait` (see `writes_without_waiting`) it raises WriteBusy instead of waiting
        for another writer.
        """
        begin = self._no_wait.begin if no_wait and self._no_wait is not None else self._engine.begin
        with begin() as conn:
            now = self._now()
            found: dict[str, RecentRequests] = {}
            for agent_id in sorted(set(agent_ids)):
                agent = self._statements.first(conn, _LOCK_AGENT, {"agent": agent_id})
                if agent is not None:
                    found[agent_id] = RecentRequests(
                        conn,
                        self._statements,
                        agent_id,
                        agent["rate_per_minute"],
                        agent["revoked_at"] is not None,
                        agent["secret_version"],
                        now,
                        agent["window_count"],
                        as_utc(agent["window_tail"]),
                    )
            yield found
            for requests in found.values():
                requests.save()

    def count_recent_requests(self, agent_id: str, seconds: float = 60) -> int:
        """How many of the agent's requests were admitted in the last `seconds`."""
        since = self._now() - timedelta(seconds=seconds)
        query = sa.select(sa.func.count()).where(agent_requests.c.agent_id == agent_id, agent_requests.c.at > since)
        with read_only(self._engine) as conn:
            return conn.scalar(query) or 0

    def purge_requests(self, older_than_seconds: float = 600) -> int:
        """Delete every agent's request rows older than this (keep it at least twice the timestamp window).

        An agent whose running count still reaches back past the cutoff (no admission since its rows left the rate
        window) is counted afresh from the rows that stay, first: its row is locked before any of its request rows.
        """
        cutoff = self._now() - timedelta(seconds=older_than_seconds)
        kept = (agent_requests.c.agent_id == agents.c.id, agent_requests.c.at >= cutoff)
        recount = (
            sa.update(agents)
            .where(agents.c.window_tail < cutoff)
            .values(
                window_count=sa.select(sa.func.count()).where(*kept).scalar_subquery(),
                window_tail=sa.select(sa.func.min(agent_requests.c.at)).where(*kept).scalar_subquery(),
            )
        )
        with self._engine.begin() as conn:
            conn.execute(recount)
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

    def audit_many(self, rows: builtins.list[dict[str, Any]]) -> None:
        """Record several audit rows (the columns of `audit`, with their own `at`) in one transaction."""
        if rows:
            with self._engine.begin() as conn:
                conn.execute(sa.insert(agent_audit), rows)

    def audit_log(self, agent_name: str | None = None, limit: int = 100) -> builtins.list[dict[str, Any]]:
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
        return [iso_timestamps(dict(row._mapping) | {"at": as_utc(row.at)}) for row in rows]

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
