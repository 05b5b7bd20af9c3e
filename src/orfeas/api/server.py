"""Running the app under uvicorn with bounds on every connection: header size and count, slow clients, graceful stop.

uvicorn's httptools parser has no header size limit and copies a growing header on every chunk, so one client could
stall the event loop; the protocol below counts header bytes before they reach the parser and answers 431, and
closes connections whose headers or body stop arriving. Everything else is uvicorn's fast path (httptools, uvloop).
"""

from __future__ import annotations

import asyncio
import functools
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from orfeas.config import Settings
from orfeas.logs import logging_config


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int = 64 * 1024  # request line and headers together
    max_headers: int = 100
    header_timeout: float = 10.0  # a request's headers must all arrive within this
    idle_timeout: float = 30.0  # a request body may pause this long between chunks


def _plain_response(status: str, message: str) -> bytes:
    """A whole HTTP response with our JSON error body, written before any request reaches the app."""
    kind = status.split(" ", 1)[1].replace(" ", "")
    body = json.dumps({"error": {"type": kind, "message": message}}).encode()
    head = f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
    return head.encode("latin-1") + b"connection: close\r\n\r\n" + body


def limits_from(settings: Settings) -> ConnectionLimits:
    return ConnectionLimits(
        max_header_bytes=settings.max_header_bytes,
        header_timeout=settings.header_timeout_seconds,
        idle_timeout=settings.idle_timeout_seconds,
    )


@functools.cache
def _limits_from_environment() -> ConnectionLimits:
    return limits_from(Settings())


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header limits (431) and timeouts for slow or stalled clients (408).

    `limits` is set on the subclass `guarded_protocol` makes; the class itself (what `serve_processes` hands to
    uvicorn's worker processes, which import it by name) reads them from the ORFEAS_* environment.
    """

    limits: ClassVar[ConnectionLimits | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = self.limits if self.limits is not None else _limits_from_environment()
        self._awaiting_headers = True
        self._header_bytes = 0
        self._header_count = 0
        self._refused = False
        self._deadline: asyncio.TimerHandle | None = None
        self._last_data = time.monotonic()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._last_data = time.monotonic()
        if self._awaiting_headers:
            if self._header_bytes == 0:
                self._arm(self._limits.header_timeout, self._headers_too_slow)
            end = data.find(b"\r\n\r\n")
            self._header_bytes += len(data) if end < 0 else end
            if self._header_bytes > self._limits.max_header_bytes:
                self._refuse("431 Request Header Fields Too Large", "the request's headers are too large")
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        if not self._refused:
            super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        if not self._refused:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self._limits.max_headers and not self._refused:
            self._refuse("431 Request Header Fields Too Large", "the request has too many headers")
        if not self._refused:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._cancel_timer()
        if self._refused:
            return
        super().on_headers_complete()
        if not self.transport.is_closing() and self.cycle is not None and self.cycle.more_body:
            self._arm(self._limits.idle_timeout, self._body_too_slow)

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        super().on_message_complete()
        self._awaiting_headers = True
        self._header_bytes = self._header_count = 0
        self._cancel_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        super().connection_lost(exc)

    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        self._cancel_timer()
        self._deadline = self.loop.call_later(seconds, callback)

    def _cancel_timer(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_too_slow(self) -> None:
        if self._awaiting_headers and not self.transport.is_closing():
            self._refuse("408 Request Timeout", "the request's headers did not arrive in time")

    def _body_too_slow(self) -> None:
        """Close a request whose body stopped arriving; a body we stopped reading ourselves (flow control) is fine."""
        if self.transport.is_closing() or self.cycle is None or not self.cycle.more_body:
            return
        quiet = time.monotonic() - self._last_data
        if self.flow.read_paused or quiet < self._limits.idle_timeout:
            self._arm(self._limits.idle_timeout - (0 if self.flow.read_paused else quiet), self._body_too_slow)
            return
        self.cycle.disconnected = True
        self.cycle.message_event.set()
        self.transport.close()

    def _refuse(self, status: str, message: str) -> None:
        """Answer and close; no request reaches the app."""
        self._refused = True
        self._cancel_timer()
        if not self.transport.is_closing():
            self.transport.write(_plain_response(status, message))
            self.transport.close()


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedHttpToolsProtocol]:
    """The protocol class with these limits (uvicorn builds one protocol object per connection)."""
    return type("OrfeasHttpProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})


class _AnnouncingServer(uvicorn.Server):
    """uvicorn's server, calling `on_ready` once its sockets are bound (not before, so a taken port prints no
    "serving on" line)."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_ready is not None:
            self._on_ready()


def serve(
    app: FastAPI, settings: Settings, port: int, log_level: str = "info", on_ready: Callable[[], None] | None = None
) -> bool:
    """Serve `app` until SIGINT or SIGTERM; open requests get `shutdown_grace_seconds` to finish. False when the
    server could not start (the port is taken, say)."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=port,
        log_level=log_level.lower(),
        log_config=None,  # our formatter (orfeas.logs) for uvicorn's lines too
        http=guarded_protocol(limits_from(settings)),
        loop="uvloop",
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=5,
        # uvicorn annotates an int but hands the value to asyncio.timeout, which takes fractions of a second too
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,  # type: ignore[arg-type]
        ws_max_size=settings.max_upload_bytes,
    )
    server = _AnnouncingServer(config, on_ready)
    try:
        server.run()
    except SystemExit:  # uvicorn exits when it cannot start (a taken port); the caller says why
        if server.started:
            raise
    return server.started


def serve_processes(settings: Settings, port: int, processes: int, log_level: str = "info") -> None:
    """Serve the API from `processes` uvicorn worker processes sharing one socket; each builds its app from the
    ORFEAS_* environment (`create_app_from_environment`), which the caller has set to these settings."""
    uvicorn.run(
        "orfeas.api.app:create_app_from_environment",
        factory=True,
        workers=processes,
        host=settings.host,
        port=port,
        log_level=log_level.lower(),
        log_config=logging_config(log_level, settings.log_format),  # each process sets its logging up again
        timeout_worker_healthcheck=60,  # a process importing the pipeline on a busy machine is slow, not dead
        http=GuardedHttpToolsProtocol,
        loop="uvloop",
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,  # type: ignore[arg-type]  # as in `serve`
        ws_max_size=settings.max_upload_bytes,
    )
