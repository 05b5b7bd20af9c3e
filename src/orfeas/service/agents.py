"""Authenticating agent requests: signature, timestamp window, permission, replay and rate checks, HTTP-agnostic.

The checks run cheapest and least revealing first, and the one that records anything (`admit`) runs last, so a
forged, stale or unpermitted request never spends the agent's quota nor burns a nonce. The API layer maps the
exceptions to 401, 403 and 429 and audits the outcome; each exception carries the presented key id and, once the key
is known, the agent.

`admit` is the rate limiter: an agent's requests of the last 60 s are its sliding window, and a nonce is remembered
for twice the timestamp window. It decides and records inside one transaction that holds the agent's row locked
(`AgentStore.locked_requests_many`), so several API processes sharing one database never exceed an agent's rate
together; `AdmissionQueue` decides the admissions that arrive together in one such transaction (`admit_many`).
That transaction is short and its cost does not grow with the rate: the window is a running count on the agent's
row, the nonce is checked by its unique constraint as it is inserted, and old rows are left to the housekeeping
(`AgentStore.purge_requests`), nonces older than the retention counting as forgotten until it deletes them.
"""

from __future__ import annotations

import asyncio
import math
import queue
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timedelta

from orfeas.errors import OrfeasError
from orfeas.service.agent_accounts import AGENT_OPERATIONS, AgentAccounts
from orfeas.signing import (
    KEY_HEADER,
    NONCE_HEADER,
    NONCE_PATTERN,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign,
    signature_matches,
)
from orfeas.store.agents import AgentNotFound, AgentRecord, AgentStore, RecentRequests
from orfeas.store.db import WriteBusy

RATE_WINDOW_SECONDS = 60
MAX_KNOWN_AGENTS = 10_000  # agent records an authenticator keeps between requests


@dataclass(frozen=True)
class Admission:
    """The rate limiter's answer to one signed request.

    `reason` is "rate", "replay", "revoked" or "stale" (the secret was rotated after the request was verified) when
    refused. `reset` is the number of seconds until the oldest request in the agent's window leaves it (freeing a
    slot); `retry_after` equals it when refused for the rate, else None.
    """

    allowed: bool
    limit: int
    remaining: int
    reset: int
    reason: str | None = None
    retry_after: int | None = None


def admit(
    store: AgentStore, agent_id: str, nonce: str, window_seconds: int = 300, secret_version: int | None = None
) -> Admission:
    """Record one signed request if the agent's rate allows it and its nonce is new. Raises AgentNotFound.

    Refused requests record nothing, so they spend no quota. `window_seconds` is the authenticator's timestamp
    window: a nonce must be remembered for twice that (a request may be signed up to that far in the past or
    future); an older recording of it is forgotten. With `secret_version` (the version the signature was checked
    against), a request is refused as "stale" if the agent's secret has been rotated since.
    """
    admission = admit_many(store, [Pending(agent_id, nonce, secret_version)], window_seconds)[0]
    if isinstance(admission, AgentNotFound):
        raise admission
    return admission


@dataclass(frozen=True)
class Pending:
    """One signed request waiting for its admission: its agent, its nonce and the secret version it was verified
    with (None: not checked)."""

    agent_id: str
    nonce: str
    secret_version: int | None = None


def admit_many(
    store: AgentStore, requests: Sequence[Pending], window_seconds: int = 300, no_wait: bool = False
) -> list[Admission | AgentNotFound]:
    """`admit` for several requests in one transaction, decided in the order given (the same nonce twice: the
    second is a replay); an unknown agent's requests get AgentNotFound. With `no_wait`, raises WriteBusy rather
    than wait for another writer."""
    retention = timedelta(seconds=max(2 * window_seconds, RATE_WINDOW_SECONDS))
    outcomes: list[Admission | AgentNotFound] = []
    by_agent: dict[str, list[int]] = {}
    for index, request in enumerate(requests):
        by_agent.setdefault(request.agent_id, []).append(index)
        outcomes.append(AgentNotFound(f"no agent with id {request.agent_id!r}"))
    with store.locked_requests_many(by_agent, no_wait=no_wait) as found:
        for agent_id, indexes in by_agent.items():
            if agent_id in found:
                decided = _decide(found[agent_id], [requests[i] for i in indexes], retention)
                for index, admission in zip(indexes, decided, strict=True):
                    outcomes[index] = admission
    return outcomes


def _decide(requests: RecentRequests, pending: list[Pending], retention: timedelta) -> list[Admission]:
    """Admit, in order, requests of the agent whose rows `requests` holds locked, recording those allowed (in one
    statement; a nonce refused as a replay frees its place for the next request). Each answer's `remaining` is
    what it would be had the requests come one by one."""
    now = requests.now
    start, oldest = requests.count_since(now - timedelta(seconds=RATE_WINDOW_SECONDS))
    limit = requests.rate_per_minute
    reset = _seconds_until((oldest or now) + timedelta(seconds=RATE_WINDOW_SECONDS), now)
    reasons: list[str | None] = [None] * len(pending)  # None: allowed
    candidates: list[int] = []
    seen: set[str] = set()
    for index, request in enumerate(pending):
        if requests.revoked:
            reasons[index] = "revoked"
        elif request.secret_version is not None and request.secret_version != requests.secret_version:
            reasons[index] = "stale"
        elif request.nonce in seen:
            reasons[index] = "replay"
        else:
            seen.add(request.nonce)
            candidates.append(index)
    count = start
    while candidates and count < limit:
        trying, candidates = candidates[: limit - count], candidates[limit - count :]
        recorded = requests.record([pending[i].nonce for i in trying], forgotten_before=now - retention)
        count += len(recorded)
        for index in trying:
            if pending[index].nonce not in recorded:
                reasons[index] = "replay"
    for index in candidates:  # over the rate: a remembered nonce is still a replay
        reasons[index] = "replay" if requests.nonce_used(pending[index].nonce, since=now - retention) else "rate"
    answers = []
    count = start
    for reason in reasons:
        if reason is None:
            count += 1
            answers.append(Admission(True, limit, limit - count, reset))
        elif reason == "rate":
            answers.append(Admission(False, limit, 0, reset, reason="rate", retry_after=reset))
        else:
            answers.append(Admission(False, limit, max(0, limit - count), reset, reason=reason))
    return answers


class AdmissionQueue:
    """Group commit for admissions: one thread takes every admission queued while its previous transaction ran and
    decides them all in one transaction (`admit_many`), so concurrent signed requests share one write and one
    commit instead of queueing for the database's write lock one by one. A lone request waits for nothing.

    `admit` is the event loop's way in: on SQLite the requests that arrive in one turn of the loop are decided at
    its end, in one transaction on the loop itself, when the write lock is free (a local write of a few pages costs
    less than the hops to a thread and back); when another writer holds it, and on PostgreSQL, they go to the
    thread. Until `start` (tests, tools) and after `stop`, `submit` admits at once in the caller's thread.
    """

    def __init__(self, store: AgentStore, window_seconds: int = 300, max_batch: int = 64) -> None:
        self._store = store
        self._window = window_seconds
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Queued | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._turns = threading.local()  # each event loop's (thread's) requests of its current turn

    async def admit(self, request: Pending) -> Admission:
        """The admission of one request, for a coroutine on the event loop (see the class)."""
        if not self._store.writes_without_waiting or self._thread is None:
            return await asyncio.wrap_future(self.submit(request))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Admission | None] = loop.create_future()  # None: the write lock was taken
        turn: list[tuple[Pending, asyncio.Future[Admission | None]]] | None = getattr(self._turns, "pending", None)
        if turn is None:
            turn = self._turns.pending = []
            loop.call_soon(self._settle_this_turn)
        turn.append((request, future))
        admission = await future
        if admission is None:
            return await asyncio.wrap_future(self.submit(request))
        return admission

    def _settle_this_turn(self) -> None:
        turn, self._turns.pending = self._turns.pending, None
        batch = [future for _, future in turn]
        try:
            outcomes: list[Admission | Exception | None] = [
                *admit_many(self._store, [request for request, _ in turn], self._window, no_wait=True)
            ]
        except WriteBusy:
            outcomes = [None] * len(batch)
        except Exception as exc:
            outcomes = [exc] * len(batch)
        for future, outcome in zip(batch, outcomes, strict=True):
            if future.done():  # its request went away (the client disconnected)
                continue
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def submit(self, request: Pending) -> Future[Admission]:
        """The admission of one request, decided now or by the queue's thread; AgentNotFound or a database error
        comes back as the future's exception."""
        future: Future[Admission] = Future()
        if self._thread is None:
            self._settle([(request, future)])
        else:
            self._queue.put((request, future))
        return future

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="orfeas-admissions", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Decide what is queued, then admit in the caller's thread from now on."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=10)
        left: list[_Queued] = []  # submitted as the thread stopped
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                left.append(item)
        if left:
            self._settle(left)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stopping = False
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._settle(batch)
            if stopping:
                return

    def _settle(self, batch: list[_Queued]) -> None:
        try:
            outcomes = admit_many(self._store, [request for request, _ in batch], self._window)
        except Exception as exc:  # the database: every request of the batch gets the error (a 503)
            for _, future in batch:
                future.set_exception(exc)
            return
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, AgentNotFound):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)


_Queued = tuple[Pending, "Future[Admission]"]


def _seconds_until(moment: datetime, now: datetime) -> int:
    """Whole seconds from `now` until `moment`, rounded up and at least 1."""
    return max(1, math.ceil((moment - now).total_seconds()))


_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,40}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")  # not str.isdigit, which accepts non-ASCII digits
_NONCE = re.compile(NONCE_PATTERN)
_SIGNATURE = re.compile(r"[0-9a-fA-F]{64}")


class AgentRequestRefused(OrfeasError):
    """Base of the refusals below: the key id the request presented and, once it is known, the agent."""

    def __init__(self, message: str, key_id: str | None = None, agent: AgentRecord | None = None) -> None:
        super().__init__(message)
        self.key_id = key_id
        self.agent = agent


class AuthenticationFailed(AgentRequestRefused):
    """The request is not a valid signed request of an active agent (401); the message says which check failed."""


class PermissionDenied(AgentRequestRefused):
    """The agent may not perform this operation (403)."""

    def __init__(self, operation: str, agent: AgentRecord) -> None:
        super().__init__(f"agent {agent.name!r} may not {operation!r}", key_id=agent.key_id, agent=agent)
        self.operation = operation


class RateLimited(AgentRequestRefused):
    """The agent used up its requests per minute (429); `retry_after` says when the next one is accepted."""

    def __init__(self, admission: Admission, agent: AgentRecord) -> None:
        super().__init__(
            f"rate limit of {admission.limit} requests per minute reached; retry after {admission.retry_after} s",
            key_id=agent.key_id,
            agent=agent,
        )
        self.admission = admission
        self.retry_after = admission.retry_after
        self.limit = admission.limit
        self.remaining = 0
        self.reset = admission.reset


class AgentAuthenticator:
    """Verifies signed agent requests against the agent registry (`accounts` derives the secrets) and admits them
    through its `admissions` queue (start and stop it with the server).

    `window_seconds` bounds how far a request's timestamp may be from the server's clock, in either direction;
    `now` is that clock (Unix seconds), injectable for tests.
    """

    def __init__(
        self, accounts: AgentAccounts, window_seconds: int = 300, now: Callable[[], float] = time.time
    ) -> None:
        self._accounts = accounts
        self._store = accounts.store
        self._window = window_seconds
        self._now = now
        self.admissions = AdmissionQueue(accounts.store, window_seconds)
        self._known: dict[str, tuple[AgentRecord, str]] = {}  # key id -> active agent and its secret, as last read
        self._known_lock = threading.Lock()

    def authenticate(self, request: SignedRequest, operation: str) -> tuple[AgentRecord, Admission]:
        """The agent that signed this request and its rate-limit state, once the request is admitted.

        Raises AuthenticationFailed, PermissionDenied or RateLimited; only an admitted request is recorded.
        """
        for fresh in (False, True):
            agent, nonce = self.verify(request, operation, fresh=fresh)
            admission = self.admissions.submit(self.pending(agent, nonce)).result()
            if admission.reason != "stale" or fresh:
                break
        return agent, self.accept(agent, nonce, admission)

    def verify(self, request: SignedRequest, operation: str, fresh: bool = False) -> tuple[AgentRecord, str]:
        """Every check but the admission (at most one read, no write): the agent that signed this request and its
        nonce. Raises AuthenticationFailed or PermissionDenied.

        The agent's record and secret are remembered from the last read; should a check fail with them, it is read
        again (a rotated secret). The admission then decides against the agent's row itself: submit
        `pending(agent, nonce)` to `admissions`, and if the answer is "stale" (rotated or revoked since the record
        was read) verify again with `fresh`; pass the final answer to `accept`.
        """
        if operation not in AGENT_OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}; choose from {list(AGENT_OPERATIONS)}")
        signed = _signed_headers(request.headers)
        key_id = signed.key_id
        known = None if fresh else self._known.get(key_id)
        if known is not None:
            try:
                return self._check(known, signed, request, operation)
            except AgentRequestRefused:
                pass  # decided on a fresh read below
        agent = self._store.get_by_key(key_id)
        if agent is None:
            self._known.pop(key_id, None)
            raise AuthenticationFailed(f"unknown key {key_id!r}", key_id=key_id)
        known = (agent, self._accounts.secret_for(agent))
        if agent.active:
            self._remember(key_id, known)
        else:
            self._known.pop(key_id, None)
        return self._check(known, signed, request, operation)

    def pending(self, agent: AgentRecord, nonce: str) -> Pending:
        """What to submit to `admissions` for a request `verify` accepted."""
        return Pending(agent.id, nonce, agent.secret_version)

    def accept(self, agent: AgentRecord, nonce: str, admission: Admission) -> Admission:
        """The admission of a verified request if it was allowed; else raises RateLimited or AuthenticationFailed
        (a replayed nonce, or a key revoked or rotated since `verify` read it)."""
        if admission.reason == "rate":
            raise RateLimited(admission, agent)
        if admission.reason == "replay":
            raise AuthenticationFailed(f"nonce {nonce!r} was already used", key_id=agent.key_id, agent=agent)
        if admission.reason == "revoked":
            self._known.pop(agent.key_id, None)
            raise AuthenticationFailed(f"key {agent.key_id!r} is revoked", key_id=agent.key_id, agent=agent)
        if admission.reason == "stale":
            self._known.pop(agent.key_id, None)
            raise AuthenticationFailed(f"the secret of key {agent.key_id!r} changed", key_id=agent.key_id, agent=agent)
        return admission

    def _check(
        self, known: tuple[AgentRecord, str], signed: _Signature, request: SignedRequest, operation: str
    ) -> tuple[AgentRecord, str]:
        agent, secret = known
        key_id = signed.key_id
        if not agent.active:
            raise AuthenticationFailed(f"key {key_id!r} is revoked", key_id=key_id, agent=agent)
        skew = int(signed.timestamp) - self._now()
        if abs(skew) > self._window:
            raise AuthenticationFailed(
                f"timestamp is {skew:+.0f} s from server time, outside ±{self._window} s", key_id=key_id, agent=agent
            )
        expected = sign(
            secret, request.method, request.path, request.query, signed.timestamp, signed.nonce, request.body
        )
        if not signature_matches(expected, signed.signature.lower()):
            raise AuthenticationFailed("bad signature", key_id=key_id, agent=agent)
        if operation not in agent.operations:
            raise PermissionDenied(operation, agent)
        return agent, signed.nonce

    def _remember(self, key_id: str, known: tuple[AgentRecord, str]) -> None:
        with self._known_lock:
            if len(self._known) >= MAX_KNOWN_AGENTS and key_id not in self._known:
                self._known.pop(next(iter(self._known)), None)  # the one remembered longest
            self._known[key_id] = known


@dataclass(frozen=True)
class SignedRequest:
    """What the signature covers, as the server received it: the method, the path as sent (percent-encoding kept),
    the raw query string, the headers and the body."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class _Signature:
    key_id: str
    timestamp: str
    nonce: str
    signature: str


def _signed_headers(headers: Mapping[str, str]) -> _Signature:
    """The key id, timestamp, nonce and signature headers (looked up case-insensitively), checked for form."""
    lowered = {name.lower(): value for name, value in headers.items()}
    values: list[str] = []
    for name, pattern in (
        (KEY_HEADER, _KEY_ID),
        (TIMESTAMP_HEADER, _TIMESTAMP),
        (NONCE_HEADER, _NONCE),
        (SIGNATURE_HEADER, _SIGNATURE),
    ):
        value = lowered.get(name.lower())
        if not value:
            raise AuthenticationFailed(f"missing header {name}", key_id=values[0] if values else None)
        if not pattern.fullmatch(value):
            raise AuthenticationFailed(f"malformed header {name}", key_id=values[0] if values else None)
        values.append(value)
    return _Signature(*values)


def rate_limit_headers(admission: Admission) -> dict[str, str]:
    """The RateLimit-* response headers for an admission, plus Retry-After when it was refused for the rate."""
    headers = {
        "RateLimit-Limit": str(admission.limit),
        "RateLimit-Remaining": str(admission.remaining),
        "RateLimit-Reset": str(admission.reset),
    }
    if admission.retry_after is not None:
        headers["Retry-After"] = str(admission.retry_after)
    return headers


class TooManyFailures(OrfeasError):
    """This client address sent too many refused agent requests lately (429); `retry_after` says when to retry."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many refused agent requests from this address; retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class Refusal:
    """What to do about one refused agent request: whether to audit it (and how many were left out before it),
    and whether its address is over its refusals (answer 429 instead of 401)."""

    audit: bool
    skipped: int
    throttled: bool
    retry_after: int


class RefusalLimiter:
    """Bounds what refused (forged, stale, malformed) agent requests cost, per API process.

    Every request is still verified, so a real agent behind the same address as an attacker keeps working; but a
    client address with more than `per_address` refusals in `window_seconds` gets 429 for further refusals, and of
    the refusals of one key id only the first of each window is audited, with the count of those left out, so a
    flood cannot bury an agent's real audit entries nor take the database's write lock again and again.
    """

    def __init__(
        self, per_address: int = 30, window_seconds: float = 60.0, now: Callable[[], float] = time.monotonic
    ) -> None:
        self._per_address = per_address
        self._window = window_seconds
        self._now = now
        self._addresses: dict[str, list[float]] = {}
        self._keys: dict[str, tuple[float, int]] = {}  # key id -> (window start, refusals not audited since)
        self._lock = threading.Lock()

    def refused(self, address: str, key_id: str) -> Refusal:
        """Count one refusal from `address` presenting `key_id`."""
        with self._lock:
            now = self._now()
            recent = [t for t in self._addresses.get(address, ()) if t > now - self._window] + [now]
            self._addresses[address] = recent[-(self._per_address + 1) :]
            throttled = len(recent) > self._per_address
            retry_after = max(1, int(recent[-self._per_address - 1] + self._window - now) + 1) if throttled else 0
            started, skipped = self._keys.get(key_id, (None, 0))
            if started is not None and now - started < self._window:
                self._keys[key_id] = (started, skipped + 1)
                return Refusal(audit=False, skipped=0, throttled=throttled, retry_after=retry_after)
            self._keys[key_id] = (now, 0)
            self._prune(now)
            return Refusal(audit=True, skipped=skipped, throttled=throttled, retry_after=retry_after)

    def _prune(self, now: float) -> None:
        if len(self._keys) + len(self._addresses) < 10_000:
            return
        cutoff = now - self._window
        self._keys = {k: v for k, v in self._keys.items() if v[0] > cutoff or v[1]}
        self._addresses = {a: t for a, t in self._addresses.items() if t and t[-1] > cutoff}
