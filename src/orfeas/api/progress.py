"""Progress fan-out for WebSockets: one database poller per followed job in this API process, however many sockets
follow it, and caps on sockets per client address and in total."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from sqlalchemy.exc import DBAPIError

from orfeas.store.db import is_database_outage
from orfeas.store.jobs import JobRecord
from orfeas.store.schema import FINISHED_STATUSES


class DatabaseGone(Exception):
    """The job could not be read any more: the database stayed unreachable longer than the hub waits."""


@dataclass
class _Feed:
    """The latest state of one job and who waits for it to change."""

    job: JobRecord | None = None
    version: int = 0
    followers: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    gone: bool = False  # the database has been unreachable too long
    task: asyncio.Task | None = None


class ProgressHub:
    """Keeps one poller per job that at least one socket follows; each poll is one primary-key read."""

    def __init__(
        self,
        read_job: Callable[[str], JobRecord],
        poll_seconds: float,
        max_sockets: int,
        max_per_client: int,
        outage_seconds: float = 60.0,
    ) -> None:
        self._read_job = read_job
        self._poll_seconds = poll_seconds
        self._max_sockets = max_sockets
        self._max_per_client = max_per_client
        self._outage_seconds = outage_seconds
        self._feeds: dict[str, _Feed] = {}
        self._clients: Counter[str] = Counter()

    @property
    def open_sockets(self) -> int:
        return sum(self._clients.values())

    @property
    def pollers(self) -> int:
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

    async def updates(self, job: JobRecord) -> AsyncIterator[JobRecord]:
        """`job` as it is now, then each new state until it is finished; DatabaseGone after a long outage."""
        if job.status in FINISHED_STATUSES:
            yield job
            return
        feed = self._feeds.get(job.id)
        if feed is None:
            feed = self._feeds[job.id] = _Feed(job=job)
            feed.task = asyncio.create_task(self._poll(job.id, feed))
        feed.followers += 1
        try:
            seen = -1
            while True:
                async with feed.changed:
                    await feed.changed.wait_for(lambda seen=seen: feed.version != seen or feed.gone)
                    seen, current = feed.version, feed.job
                if feed.gone:
                    raise DatabaseGone
                yield current
                if current.status in FINISHED_STATUSES:
                    return
        finally:
            feed.followers -= 1

    async def _poll(self, job_id: str, feed: _Feed) -> None:
        outage_since: float | None = None
        try:
            while feed.followers > 0:
                await asyncio.sleep(self._poll_seconds)
                try:
                    job = await asyncio.to_thread(self._read_job, job_id)
                except DBAPIError as exc:
                    outage_since = outage_since or time.monotonic()
                    if is_database_outage(exc) and time.monotonic() - outage_since <= self._outage_seconds:
                        continue
                    await self._give_up(feed)
                    return
                except Exception:  # the job was deleted meanwhile, or worse: its followers must not wait forever
                    await self._give_up(feed)
                    return
                outage_since = None
                if _progress_of(job) != _progress_of(feed.job):
                    async with feed.changed:
                        feed.job, feed.version = job, feed.version + 1
                        feed.changed.notify_all()
                if job.status in FINISHED_STATUSES:
                    return
        finally:
            if self._feeds.get(job_id) is feed:
                del self._feeds[job_id]

    @staticmethod
    async def _give_up(feed: _Feed) -> None:
        async with feed.changed:
            feed.gone = True
            feed.changed.notify_all()


def _progress_of(job: JobRecord | None) -> tuple | None:
    return None if job is None else (job.status, job.progress, job.stage, job.error)
