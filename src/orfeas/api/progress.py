"""Progress fan-out for WebSockets: one database poller per API process, which reads every followed job in one
query per tick and wakes the sockets following each job that changed; caps on sockets per client address and in
total. The database work depends on how many jobs are followed, not on how many sockets follow them."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy.exc import DBAPIError

from orfeas.store.db import is_database_outage
from orfeas.store.jobs import JobRecord
from orfeas.store.schema import FINISHED_STATUSES


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
    """Follows jobs for this process's sockets with one poller; each tick is one read of all followed jobs."""

    def __init__(
        self,
        read_jobs: Callable[[Sequence[str]], dict[str, JobRecord]],
        poll_seconds: float,
        max_sockets: int,
        max_per_client: int,
        outage_seconds: float = 60.0,
    ) -> None:
        self._read_jobs = read_jobs
        self._poll_seconds = poll_seconds
        self._max_sockets = max_sockets
        self._max_per_client = max_per_client
        self._outage_seconds = outage_seconds
        self._feeds: dict[str, _Feed] = {}
        self._clients: Counter[str] = Counter()
        self._poller: asyncio.Task | None = None
        self.reads = 0  # database reads so far (for benchmarks and tests)

    @property
    def open_sockets(self) -> int:
        return sum(self._clients.values())

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

    async def updates(self, job: JobRecord) -> AsyncIterator[JobRecord]:
        """`job` as it is now, then each new state until it is finished; DatabaseGone when it cannot be read."""
        if job.status in FINISHED_STATUSES:
            yield job
            return
        feed = self._feeds.setdefault(job.id, _Feed(job=job))
        feed.followers += 1
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll())
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
            if feed.followers <= 0 and self._feeds.get(job.id) is feed:
                del self._feeds[job.id]

    async def _poll(self) -> None:
        """Until no job is followed: read them all, wake the followers of those that changed."""
        outage_since: float | None = None
        while self._feeds:
            await asyncio.sleep(self._poll_seconds)
            ids = list(self._feeds)
            if not ids:
                return
            try:
                self.reads += 1
                current = await asyncio.to_thread(self._read_jobs, ids)
            except DBAPIError as exc:
                outage_since = outage_since or time.monotonic()
                if is_database_outage(exc) and time.monotonic() - outage_since <= self._outage_seconds:
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


def _progress_of(job: JobRecord) -> tuple:
    return (job.status, job.progress, job.stage, job.error)
