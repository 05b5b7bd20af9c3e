"""The API's doors: the Host allow-list and Origin check in front of every route, and the `caller` dependency
that turns a session cookie, an API key or (with authentication off) nothing into a Principal.

Agents sign their own requests on /api/agent/* (see routes/agent.py); everything else goes through `caller`.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import socket
from collections.abc import Mapping
from typing import Annotated
from urllib.parse import urlsplit

import psutil
from fastapi import Depends, Request, WebSocket
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from orfeas.api.deps import Services, get_services, quick_read
from orfeas.config import Settings
from orfeas.service.auth import (
    CSRF_HEADER,
    LOCAL_USER,
    SESSION_COOKIE,
    Forbidden,
    Principal,
    Unauthenticated,
)

UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
OPEN_PATHS = ("/healthz", "/readyz")  # load balancers probe these by address; they reveal nothing


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_auth_binding(settings: Settings) -> None:
    """Refuse authentication off on any address but loopback: there, anyone who reaches the port is admin."""
    if settings.auth == "off" and not is_loopback(settings.host):
        raise ValueError(
            f"ORFEAS_AUTH=off is allowed only on a loopback address (127.0.0.1, ::1, localhost), not {settings.host}: "
            "turn authentication on and create a user with `orfeas users create NAME --admin`"
        )


def allowed_hosts(settings: Settings) -> frozenset[str] | None:
    """The Host names the API answers to, lower-case without port; None for any."""
    configured = {name.strip().lower() for name in settings.allowed_hosts.split(",") if name.strip()}
    if "*" in configured:
        return None
    if configured:
        return frozenset(configured)
    names = {"localhost", "127.0.0.1", "::1", settings.host.lower().strip("[]")}
    if settings.host in ("0.0.0.0", "::", ""):
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        for addresses in psutil.net_if_addrs().values():
            names |= {
                a.address.split("%")[0].lower() for a in addresses if a.family in (socket.AF_INET, socket.AF_INET6)
            }
    return frozenset(names)


def host_name(host_header: str) -> str:
    """ "example.org:8000" → "example.org", "[::1]:8000" → "::1"."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class HostOriginGuard:
    """Refuse requests whose Host is not allowed (DNS rebinding) and state-changing requests or WebSockets that a
    page of another origin sent (CSRF): browsers always send Origin with those; programs send none."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str] | None, cors_origins: frozenset[str]) -> None:
        self.app = app
        self.hosts = hosts
        self.cors_origins = cors_origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        host = headers.get("host", "")
        problem = None
        if self.hosts is not None and host_name(host) not in self.hosts:
            problem = ("InvalidHost", 400, "this server does not answer to that Host name (see ORFEAS_ALLOWED_HOSTS)")
        elif (scope["type"] == "websocket" or scope.get("method") in UNSAFE_METHODS) and not self._same_site(
            headers, host
        ):
            problem = ("ForeignOrigin", 403, "requests from other sites are refused (see ORFEAS_CORS_ORIGINS)")
        if problem is None:
            await self.app(scope, receive, send)
            return
        kind, status, message = problem
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 4000 + status, "reason": message})
            return
        response = JSONResponse({"error": {"type": kind, "message": message}}, status_code=status)
        await response(scope, receive, send)

    def _same_site(self, headers: dict[str, str], host: str) -> bool:
        origin = headers.get("origin")
        if origin is None:
            return headers.get("sec-fetch-site") not in ("cross-site", "same-site")
        if origin.rstrip("/") in self.cors_origins:
            return True
        parts = urlsplit(origin)
        return origin != "null" and parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()


async def _principal(
    services: Services, headers: Mapping[str, str], cookies: Mapping[str, str], method: str
) -> tuple[Principal, str | None]:
    """The caller and, for a session, its CSRF token."""
    if services.settings.auth == "off":
        return LOCAL_USER, None
    authorization = headers.get("authorization")
    if authorization is not None:
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated("the Authorization header must be 'Bearer <API key>'")
        return await quick_read(services, services.accounts.principal_for_key, key.strip()), None
    token = cookies.get(SESSION_COOKIE)
    if token is None:
        raise Unauthenticated("sign in (the studio) or send an API key as 'Authorization: Bearer <key>'")
    principal, csrf = await asyncio.to_thread(services.accounts.session, token)
    if method in UNSAFE_METHODS and not hmac.compare_digest(headers.get(CSRF_HEADER.lower(), ""), csrf):
        raise Forbidden(f"missing or wrong {CSRF_HEADER} header (reload the page)")
    return principal, csrf


async def caller(request: Request, services: Annotated[Services, Depends(get_services)]) -> Principal:
    """The Principal of an HTTP request; 401 without valid credentials, 403 for a session without its CSRF token."""
    principal, request.state.csrf_token = await _principal(services, request.headers, request.cookies, request.method)
    return principal


async def websocket_caller(websocket: WebSocket) -> Principal:
    """The Principal of a WebSocket (cookie or API key; its Origin was checked by HostOriginGuard)."""
    services: Services = websocket.app.state.services
    return (await _principal(services, websocket.headers, websocket.cookies, "GET"))[0]


def session_cookie_secure(request: Request) -> bool:
    """Cookies are marked Secure whenever the request came over TLS (directly or through a trusted proxy)."""
    return request.url.scheme == "https"
