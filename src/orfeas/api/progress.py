"""Progress fan-out for WebSockets: one reader per API process wakes the sockets following each job that changed;
caps on sockets per client address and in total. The database work depends on how many jobs are followed (SQLite:
one query reads them all per poll tick) or on how many changed (PostgreSQL: the reader LISTENs for the jobs table's
notifications and reads only the jobs they name, polling slowly in case one was missed), never on how many sockets
follow them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

from sqlalchemy.exc import DBAPIError

from orfeas.store.db import is_database_outage
from orfeas.store.jobs import JobRecord
from orfeas.store.notify import JobChanges
from orfeas.store.schema import FINISHED_STATUSES

logger = logging.getLogger(__name__)


class DatabaseGone(Exception):
    """The job could not be read any more: the database stayed unreachable longer than the hub waits, or the job
    was deleted."""


@dataclass
class _Feed:
    """The latest state of one job and who waits for it to change."""

    job: JobRecord
    version: int = 0
    followers: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    gone: bool = False


class ProgressHub:
    """Follows jobs for this process's sockets with one reader: a read of all followed jobs every `poll_seconds`, or,
    given `changes` (PostgreSQL's notifications), a read of the jobs named since the last one, and of all of them
    every `fallback_seconds` and whenever the notifications stop."""

    def __init__(
        self,
        read_jobs: Callable[[Sequence[str]], dict[str, JobRecord]],
        poll_seconds: float,
        max_sockets: int,
        max_per_client: int,
        outage_seconds: float = 60.0,
        changes: JobChanges | None = None,
        fallback_seconds: float = 10.0,
    ) -> None:
        self._read_jobs = read_jobs
        self._poll_seconds = poll_seconds
        self._changes = changes
        self._fallback_seconds = fallback_seconds
        self._listening = False
        self._changed: set[str] = set()
        self._read_all = True
        self._wake = asyncio.Event()
        self._max_sockets = max_sockets
        self._max_per_client = max_per_client
        self._outage_seconds = outage_seconds
        self._feeds: dict[str, _Feed] = {}
        self._clients: Counter[str] = Counter()
        self._poller: asyncio.Task[None] | None = None
        self.reads = 0  # database reads so far (for benchmarks and tests)

    @property
    def open_sockets(self) -> int:
        return sum(self._clients.values())

    @property
    def listening(self) -> bool:
        """Whether the database's notifications are being heard now (else the followed jobs are polled)."""
        return self._listening

    @property
    def followed_jobs(self) -> int:
        return len(self._feeds)

    def admit(self, client: str) -> str | None:
        """Count a new socket from `client`; the reason it is refused, or None."""
        if self.open_sockets >= self._max_sockets:
            return f"this server follows {self._max_sockets} progress sockets already; retry later"
        if self._clients[client] >= self._max_per_client:
            return f"at most {self._max_per_client} progress sockets per client; close one first"
        self._clients[client] += 1
        return None

    def release(self, client: str) -> None:
        self._clients[client] -= 1
        if self._clients[client] <= 0:
            del self._clients[client]

    async def updates(self, job: JobRecord) -> AsyncGenerator[JobRecord, None]:
        """`job` as it is now, then each new state until it is finished; DatabaseGone when it cannot be read."""
        if job.status in FINISHED_STATUSES:
            yield job
            return
        feed = self._feeds.get(job.id)
        if feed is None:
            feed = self._feeds[job.id] = _Feed(job=job)
            if self._listening:  # a change between the caller's read and now was announced before we followed it
                self._changed.add(job.id)
                self._wake.set()
        feed.followers += 1
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll())
        try:
            seen = -1
            while True:
                async with feed.changed:
                    await feed.changed.wait_for(partial(_moved_on, feed, seen))
                    seen, current = feed.version, feed.job
                if feed.gone:
                    raise DatabaseGone
                yield current
                if current.status in FINISHED_STATUSES:
                    return
        finally:
            feed.followers -= 1
            if feed.followers <= 0 and self._feeds.get(job.id) is feed:
                del self._feeds[job.id]

    async def _poll(self) -> None:
        """Until no job is followed: read the jobs due (see `_due`), wake the followers of those that changed."""
        listener = asyncio.create_task(self._listen()) if self._changes is not None else None
        try:
            await self._read_until_unfollowed()
        finally:
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
            self._listening = False

    async def _due(self) -> list[str]:
        """The followed jobs to read now: all of them after each poll interval while not listening; while listening,
        those named by a notification (all of them when listening starts or `fallback_seconds` pass quietly)."""
        if not self._listening:  # the listener wakes this wait once it hears the database
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_seconds)
            if not self._listening:
                self._wake.clear()
                return list(self._feeds)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self._fallback_seconds)
        self._wake.clear()
        if self._read_all or not self._changed:
            self._read_all = False
            self._changed.clear()
            return list(self._feeds)
        ids = [job_id for job_id in self._changed if job_id in self._feeds]
        self._changed.clear()
        return ids

    async def _listen(self) -> None:
        """Feed `_due` from the notifications; when they fail, poll until listening again a second later."""
        assert self._changes is not None
        while True:
            try:
                async for job_id in self._changes():
                    if job_id is None:  # listening now: whatever changed before must be read once
                        self._listening, self._read_all = True, True
                    elif job_id in self._feeds:
                        self._changed.add(job_id)
                    else:
                        continue
                    self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a dropped connection: poll meanwhile
                logger.warning("job notifications stopped, polling until they resume: %s", exc)
            self._listening = False
            self._wake.set()
            await asyncio.sleep(1.0)

    async def _read_until_unfollowed(self) -> None:
        outage_since: float | None = None
        while self._feeds:
            ids = await self._due()
            if not self._feeds:
                return
            if not ids:
                continue
            try:
                self.reads += 1
                current = await asyncio.to_thread(self._read_jobs, ids)
            except DBAPIError as exc:
                outage_since = outage_since or time.monotonic()
                if is_database_outage(exc) and time.monotonic() - outage_since <= self._outage_seconds:
                    if self._listening:  # read them all again after a pause, not after the next notification
                        self._read_all = True
                        self._wake.set()
                        await asyncio.sleep(self._poll_seconds)
                    continue
                await self._give_up(ids)
                return
            except Exception:  # the followers must not wait forever on a poller that died
                await self._give_up(ids)
                return
            outage_since = None
            for job_id in ids:
                feed = self._feeds.get(job_id)
                if feed is None:
                    continue
                job = current.get(job_id)
                if job is None:  # deleted meanwhile (retention)
                    await self._give_up([job_id])
                elif _progress_of(job) != _progress_of(feed.job):
                    async with feed.changed:
                        feed.job, feed.version = job, feed.version + 1
                        feed.changed.notify_all()

    async def _give_up(self, ids: list[str]) -> None:
        for job_id in ids:
            feed = self._feeds.get(job_id)
            if feed is not None:
                async with feed.changed:
                    feed.gone = True
                    feed.changed.notify_all()


def _moved_on(feed: _Feed, seen: int) -> bool:
    return feed.version != seen or feed.gone


def _progress_of(job: JobRecord) -> tuple[object, ...]:
    return (job.status, job.progress, job.stage, job.error)
