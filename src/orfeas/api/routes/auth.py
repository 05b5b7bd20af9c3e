"""Signing in and out of the studio, and who the caller is."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from orfeas.api.deps import Services, get_services
from orfeas.api.schemas import ERRORS, Me
from orfeas.api.security import caller, session_cookie_secure
from orfeas.service.auth import CSRF_COOKIE, MAX_PASSWORD, SESSION_COOKIE, Principal

router = APIRouter(prefix="/api/auth", tags=["auth"], responses=ERRORS)


class SignIn(BaseModel):
    name: str = Field(max_length=64)
    password: str = Field(max_length=MAX_PASSWORD)


def me(principal: Principal, services: Services, csrf_token: str | None) -> Me:
    return Me(
        name=principal.name,
        kind=principal.kind,
        admin=principal.is_admin,
        auth=services.settings.auth,
        csrf_token=csrf_token,
    )


@router.post("/login", response_model=Me)
async def login(body: SignIn, request: Request, services: Annotated[Services, Depends(get_services)]) -> Response:
    """Check a user name and password; sets the session cookie (HttpOnly) and the CSRF cookie."""
    client = request.client.host if request.client else "unknown"
    session = await asyncio.to_thread(services.accounts.sign_in, body.name, body.password, client)
    response = JSONResponse(me(session.principal, services, session.csrf_token).model_dump())
    secure = session_cookie_secure(request)
    max_age = int(services.settings.session_hours * 3600)
    response.set_cookie(
        SESSION_COOKIE, session.token, max_age=max_age, httponly=True, samesite="lax", secure=secure, path="/"
    )
    response.set_cookie(CSRF_COOKIE, session.csrf_token, max_age=max_age, samesite="strict", secure=secure, path="/")
    return response


@router.post("/logout", status_code=204)
async def logout(
    request: Request,
    services: Annotated[Services, Depends(get_services)],
    _principal: Annotated[Principal, Depends(caller)],
) -> Response:
    """End this session (its cookie stops working at once)."""
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        await asyncio.to_thread(services.accounts.sign_out, token)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")
    return response


@router.get("/me", response_model=Me)
def whoami(
    request: Request,
    services: Annotated[Services, Depends(get_services)],
    principal: Annotated[Principal, Depends(caller)],
) -> Me:
    """The caller: name, user or agent, admin or not, and (for a session) its CSRF token."""
    return me(principal, services, getattr(request.state, "csrf_token", None))
