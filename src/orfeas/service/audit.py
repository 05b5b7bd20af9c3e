"""The agent audit log: what one row says about a request, and its writer. Rows are queued by the request and
written in batches by one thread, so that an audited request costs no write transaction of its own (SQLite has one
writer at a time; PostgreSQL one commit)."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Any

from orfeas.service.agents import AgentRequestRefused, Refusal
from orfeas.store.agents import AgentRecord, AgentStore, audit_row

logger = logging.getLogger(__name__)
MAX_DETAIL = 1000


class AuditLog:
    """Queues audit rows and writes them every `interval` seconds (and at `stop`); a failing write is logged,
    never the request's failure. Rows queued when the process is killed (at most `interval` seconds' worth) are
    lost; a clean stop writes them all."""

    def __init__(self, store: AgentStore, interval: float = 0.1) -> None:
        self._store = store
        self._interval = interval
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def record(
        self,
        key_id: str,
        operation: str,
        outcome: int,
        agent_id: str | None = None,
        job_id: str | None = None,
        detail: str | None = None,
    ) -> None:
        clean = None if detail is None else detail.replace("\x00", "\\0")[:MAX_DETAIL]  # PostgreSQL refuses NUL
        row = audit_row(key_id, operation, outcome, agent_id, job_id, clean, at=datetime.now(UTC))
        with self._lock:
            self._rows.append(row)
        if self._thread is None:  # not started (tests, tools): write at once
            self.flush()

    def record_admitted(
        self, agent: AgentRecord, operation: str, outcome: int, job_ids: list[str], detail: str | None = None
    ) -> None:
        """One row for an admitted request: the job it touched, or for several jobs their count and ids as the
        detail (in place of `detail`)."""
        if len(job_ids) > 1:
            detail = f"{len(job_ids)} jobs: {', '.join(job_ids)}"
        job_id = job_ids[0] if len(job_ids) == 1 else None
        self.record(
            agent_id=agent.id, key_id=agent.key_id, operation=operation, job_id=job_id, outcome=outcome, detail=detail
        )

    def record_refusal(self, refused: AgentRequestRefused, operation: str, outcome: int, refusal: Refusal) -> None:
        """One row for a refused request if the refusal limiter says to audit it, saying how many refusals of its
        key id were left out before it."""
        if not refusal.audit:
            return
        detail = str(refused)
        if refusal.skipped:
            detail += f" ({refusal.skipped} more refusals of this key id not recorded one by one)"
        agent_id = refused.agent.id if refused.agent else None
        self.record(key_id=refused.key_id or "", operation=operation, outcome=outcome, agent_id=agent_id, detail=detail)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="orfeas-audit", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush()

    def flush(self) -> None:
        with self._lock:
            rows, self._rows = self._rows, []
        if not rows:
            return
        try:
            self._store.audit_many(rows)
        except Exception:
            logger.warning("could not write %d audit rows at once; writing them one by one", len(rows))
            for row in rows:
                try:
                    self._store.audit_many([row])
                except Exception:
                    logger.exception("could not write an audit row for %s", row["operation"])

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()
