"""What the studio page needs besides jobs: the generators this machine offers, a cut-out preview, the page."""

from __future__ import annotations

import asyncio
import io
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Depends, File, Request, UploadFile
from fastapi.responses import FileResponse, RedirectResponse, Response
from PIL import Image
from pydantic import BaseModel, Field

from orfeas.api.deps import Services, get_services
from orfeas.api.schemas import ERRORS, file_responses
from orfeas.api.security import caller
from orfeas.errors import GeneratorUnavailable, OrfeasError
from orfeas.pipeline.background import prepare_image
from orfeas.pipeline.generators import available_generators
from orfeas.pipeline.generators.hunyuan import find_weights
from orfeas.pipeline.generators.hunyuan_variants import variant_status
from orfeas.pipeline.image import load_image
from orfeas.pipeline.learned_remover import remover_name
from orfeas.pipeline.options import GenerateOptions
from orfeas.pipeline.settings import PipelineSettings
from orfeas.service.auth import Principal

router = APIRouter(tags=["studio"], responses=ERRORS)
WEB = resources.files("orfeas") / "web"


class ModelVariant(BaseModel):
    model: str
    usable: bool = Field(description="Its weights are on this machine.")
    multiview: bool = Field(description="Takes the views of one object (front required; left, back, right).")
    views: int
    steps: int
    guidance_scale: float
    scheduler: str
    vae: str | None
    purpose: str
    folders: list[str] | None = Field(None, description="Admins only: where its weights are or must go.")
    missing: list[str] | None = Field(None, description="Admins only: the files that are missing.")
    message: str | None = Field(None, description="Why it is not usable (admins: with the files and folders).")


class StudioGenerator(BaseModel):
    name: str
    default_resolution: int | None
    available: bool = Field(description="False when the generator is installed but cannot run here yet.")
    reason: str | None = Field(None, description="Why it cannot run, and what to do (where its weights go).")
    variants: list[ModelVariant] | None = Field(None, description="hunyuan3d: its models (generator option model).")


class FieldLimits(BaseModel):
    minimum: int | None = None
    maximum: int | None = None
    default: int | None = None


class StudioGenerators(BaseModel):
    generators: list[StudioGenerator]
    default: str
    limits: dict[str, FieldLimits] = Field(description="Bounds the server enforces on the numeric job options.")
    background_remover: str = Field(description="What images without an alpha mask go through to be cut out.")


@router.get("/api/generators")
def generators(
    services: Annotated[Services, Depends(get_services)], principal: Annotated[Principal, Depends(caller)]
) -> StudioGenerators:
    """Generators this server offers, whether each (and each hunyuan3d model) can run now, and the options' bounds.
    Where weights must go (server paths) is shown to admins only."""
    settings = services.job_service.pipeline_settings
    listing = []
    for name in available_generators(settings):
        generator = services.job_service.generator(name)
        variants = model_variants(settings, principal.is_admin) if name == "hunyuan3d" else None
        usable = [v for v in variants or [] if v.usable]
        reason = missing_weights(name, settings) if variants is None or not usable else None
        if reason is not None and not principal.is_admin:
            reason = "its model weights are not on this server (an admin sees where they go)"
        listing.append(
            StudioGenerator(
                name=name,
                default_resolution=generator.default_resolution,
                available=reason is None,
                reason=reason,
                variants=variants,
            )
        )
    return StudioGenerators(
        generators=listing,
        default="inflate",
        limits=option_limits(),
        background_remover=remover_name(settings),
    )


def model_variants(settings: PipelineSettings, admin: bool) -> list[ModelVariant]:
    """Each hunyuan3d model and whether its weights are here; the server's paths only for an admin."""
    variants = []
    for status in variant_status(settings):
        variant = ModelVariant.model_validate(status, from_attributes=True)
        if not admin:
            variant.folders = variant.missing = None
            if not status.usable:
                variant.message = "its weights are not on this server (an admin sees where they go)"
        variants.append(variant)
    return variants


def missing_weights(name: str, settings: PipelineSettings) -> str | None:
    """What keeps an installed generator from running (hunyuan3d without its weights on disk), else None."""
    if name != "hunyuan3d":
        return None
    try:
        find_weights(settings)
    except GeneratorUnavailable as exc:
        return str(exc)
    return None


def option_limits() -> dict[str, FieldLimits]:
    """The ge/le bounds and defaults of GenerateOptions' numeric fields: the form reads them instead of a copy."""
    limits = {}
    for name in ("resolution", "faces"):
        field = GenerateOptions.model_fields[name]
        bounds = FieldLimits(default=field.default)
        for rule in field.metadata:
            bounds.minimum = getattr(rule, "ge", bounds.minimum)
            bounds.maximum = getattr(rule, "le", bounds.maximum)
        limits[name] = bounds
    return limits


@router.post(
    "/api/cutout",
    response_class=Response,
    responses=file_responses("The cut-out image (PNG).", "image/png"),
    dependencies=[Depends(caller)],
)
async def cutout(
    services: Annotated[Services, Depends(get_services)],
    image: Annotated[UploadFile, File(description="One image (PNG, JPEG, WebP, GIF).")],
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
