"""What the studio page needs besides jobs: the generators this machine offers, a cut-out preview, the page."""

from __future__ import annotations

import asyncio
import io
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Request, UploadFile
from fastapi.responses import FileResponse, RedirectResponse, Response
from PIL import Image

from orfeas.api.deps import Services, get_services
from orfeas.api.schemas import GeneratorList
from orfeas.api.security import caller
from orfeas.errors import OrfeasError
from orfeas.pipeline.background import prepare_image
from orfeas.pipeline.generators import available_generators
from orfeas.pipeline.image import load_image

router = APIRouter(tags=["studio"])
WEB = resources.files("orfeas") / "web"


@router.get("/api/generators", response_model=GeneratorList, dependencies=[Depends(caller)])
def generators(services: Annotated[Services, Depends(get_services)]) -> dict[str, Any]:
    """Generators this server can run, with their default grid resolution."""
    listing = []
    for name in available_generators(services.settings):
        generator = services.jobs.generator(name)
        listing.append({"name": name, "default_resolution": generator.default_resolution})
    return {"generators": listing, "default": "inflate"}


@router.post("/api/cutout", responses={200: {"content": {"image/png": {}}}}, dependencies=[Depends(caller)])
async def cutout(
    services: Annotated[Services, Depends(get_services)],
    image: Annotated[UploadFile, File(description="One image (PNG, JPEG, WebP).")],
) -> Response:
    """The image with its background removed, cropped and centred, as the generator will see it (PNG)."""
    data = await image.read()

    def render() -> bytes:
        rgba = load_image(data, max_pixels=services.settings.max_image_pixels)
        prepared = prepare_image(rgba, size=256, margin=services.settings.crop_margin)
        buffer = io.BytesIO()
        Image.fromarray(prepared.rgba, mode="RGBA").save(buffer, format="PNG")
        return buffer.getvalue()

    return Response(await asyncio.to_thread(render), media_type="image/png")


@router.get("/", include_in_schema=False)
async def index(request: Request, services: Annotated[Services, Depends(get_services)]) -> Response:
    """The studio; with authentication on, the sign-in page first."""
    try:
        await caller(request, services)
    except OrfeasError:
        return RedirectResponse("/login", status_code=303)
    return FileResponse(str(WEB / "index.html"), media_type="text/html", headers=PAGE_HEADERS)


@router.get("/favicon.ico", include_in_schema=False)
def favicon() -> RedirectResponse:
    """Browsers ask for /favicon.ico on every page, whatever the page's <link rel=icon> says."""
    return RedirectResponse("/static/favicon.svg", status_code=301)


@router.get("/login", include_in_schema=False)
def login_page() -> FileResponse:
    return FileResponse(str(WEB / "login.html"), media_type="text/html", headers=PAGE_HEADERS)


# The pages run only our own scripts and cannot be framed by another site (clickjacking).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; "
    "connect-src 'self' ws: wss: blob: data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
