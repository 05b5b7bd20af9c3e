"""Every error the API returns is JSON: {"error": {"type": ..., "message": ...}}, mapped here in one place."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orfeas.errors import (
    FormatNotAvailable,
    GeneratorUnavailable,
    InvalidImage,
    InvalidOptions,
    OrfeasError,
    StorageUnavailable,
)
from orfeas.service.agents import (
    AuthenticationFailed,
    PermissionDenied,
    RateLimited,
    TooManyFailures,
    rate_limit_headers,
)
from orfeas.service.auth import AccountNotFound, Forbidden, LoginThrottled, Unauthenticated
from orfeas.store.db import error_summary, is_database_outage, is_disk_full
from orfeas.store.jobs import JobNotFound
from orfeas.store.users import UserExists

logger = logging.getLogger(__name__)

STATUS_BY_ERROR: list[tuple[type[Exception], int]] = [
    (JobNotFound, 404),
    (FormatNotAvailable, 404),
    (InvalidImage, 400),
    (InvalidOptions, 422),
    (GeneratorUnavailable, 422),
    (AuthenticationFailed, 401),
    (PermissionDenied, 403),
    (RateLimited, 429),
    (Unauthenticated, 401),
    (Forbidden, 403),
    (LoginThrottled, 429),
    (TooManyFailures, 429),
    (AccountNotFound, 404),
    (UserExists, 409),
    (StorageUnavailable, 507),
]


def status_for(exc: Exception) -> int:
    """The HTTP status an error maps to (400 for any other of our errors)."""
    return next((code for kind, code in STATUS_BY_ERROR if isinstance(exc, kind)), 400)


def error_body(kind: str, message: str, **extra: object) -> dict[str, dict[str, object]]:
    return {"error": {"type": kind, "message": message, **extra}}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OrfeasError)
    async def orfeas_error(request: Request, exc: OrfeasError) -> JSONResponse:
        headers = dict(getattr(request.state, "rate_limit_headers", {}))
        if isinstance(exc, RateLimited):
            headers.update(rate_limit_headers(exc.admission))
        elif isinstance(exc, AuthenticationFailed):
            headers["WWW-Authenticate"] = "ORFEAS-HMAC-SHA256"
        elif isinstance(exc, Unauthenticated):
            headers["WWW-Authenticate"] = 'Bearer realm="orfeas"'
        elif isinstance(exc, LoginThrottled | StorageUnavailable | TooManyFailures):
            headers["Retry-After"] = str(exc.retry_after)
        return JSONResponse(error_body(type(exc).__name__, str(exc)), status_code=status_for(exc), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"field": ".".join(str(p) for p in err["loc"] if p not in ("body", "query", "path")), "message": err["msg"]}
            for err in exc.errors()
        ]
        message = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        return JSONResponse(error_body("InvalidRequest", message, problems=problems), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body("HTTPError", str(exc.detail)), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(DBAPIError)
    async def database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        if is_disk_full(exc):
            logger.error("the job database's disk is full on %s %s", request.method, request.url.path)
            return JSONResponse(
                error_body("StorageUnavailable", "the server's disk is full; nothing was stored, retry later"),
                status_code=507,
                headers={"Retry-After": str(StorageUnavailable.retry_after)},
            )
        if not is_database_outage(exc):
            logger.error("database error on %s %s", request.method, request.url.path, exc_info=exc)
            return JSONResponse(error_body("InternalError", "unexpected database error"), status_code=500)
        # server down or connection cut: the pool's pre-ping replaces dead connections, so a retry soon succeeds
        logger.warning("database unavailable: %s", error_summary(exc))
        return JSONResponse(
            error_body("ServiceUnavailable", "the job database is unavailable; retry shortly"),
            status_code=503,
            headers={"Retry-After": "2"},
        )


class BodySizeLimit:
    """Refuse request bodies over `limit` bytes with 413, whether or not they declare a Content-Length."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        received = 0
        too_large = started = False

        async def counting_receive() -> Message:
            nonlocal received, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    too_large = True  # the app sees the client go away; whatever it answers is replaced by 413
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if too_large and not started:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except Exception:
            if not too_large:
                raise
        if too_large and not started:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        response = JSONResponse(
            error_body("PayloadTooLarge", f"request body is larger than the limit of {self.limit} bytes"),
            status_code=413,
        )
        await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
