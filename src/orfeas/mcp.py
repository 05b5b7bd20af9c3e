"""An MCP server (stdio) that lets an AI agent turn images into 3D models through a running ORFEAS server.

It calls the agent API with the SDK in `orfeas.client`, credentials from ORFEAS_AGENT_URL, ORFEAS_AGENT_KEY and
ORFEAS_AGENT_SECRET. Run it with `python -m orfeas.mcp`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio.from_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from orfeas.client import (
    AgentClient,
    ApiError,
    JobFailed,
    MissingCredentials,
    NotFoundError,
    ServerUnreachable,
)
from orfeas.client.agent import result_filename

# What a tool call may fail with that the agent can act on; anything else is a bug and stays on the server.
CLIENT_ERRORS = (ApiError, JobFailed, MissingCredentials, ServerUnreachable, TimeoutError)
WAIT_TIMEOUT = 600.0


def build_server(client_factory: Callable[[], AgentClient] = AgentClient.from_env) -> MCPServer:
    """The MCP server with its two tools; `client_factory` makes a fresh SDK client for each call."""
    server = MCPServer(
        "orfeas",
        instructions="Turn a photo or drawing of one object into a 3D model (GLB, OBJ, STL, PLY) on an ORFEAS server.",
    )

    @server.tool()
    def generate_3d(
        image_path: str,
        ctx: Context,
        options: dict[str, Any] | None = None,
        wait: bool = True,
        out_dir: str | None = None,
        views: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Turn one image of a single object into a 3D model on the ORFEAS server.

        image_path: path to a PNG, JPEG, WebP or GIF file on the machine running this MCP server (absolute, or
        relative to its working directory). The background is removed automatically; one object per image works
        best. For a multi-view model (options {"backend": "hunyuan3d", "generator_options": {"model":
        "hunyuan3d-dit-v2-mv"}}) pass instead `views`, {"front": path, "left": path, "back": path, "right": path}
        (front required), and give the front's path as image_path too.

        options (all optional; the server rejects unknown keys or out-of-range values with a message naming them):
        - formats: list of "glb", "obj", "stl", "ply" (default ["glb"]). OBJ is delivered as a zip with its
          material and texture.
        - faces: face budget after simplification, 1000-5000000 (default 50000).
        - resolution: grid cells across the object, 32-1024 (default: the backend's, 192 for inflate); higher is
          finer and slower.
        - texture: true for a textured model, false for vertex colours (default true).
        - backend: shape generator, "inflate" by default (others only if the server has them installed).
        - seed: integer, for backends that sample (default 0).
        - generator_options: backend-specific numbers; for inflate: depth (0.05-3, default 1.0, depth relative to
          local width), max_thickness (0.01-2, default 0.4, cap as a fraction of the object's size), roundness
          (0-1, default 1: round cross-sections; 0: flat chamfer), shading (0-2, default 1.0: how much the
          front is bent to match the image's shading; 0 turns it off), smoothness (0.003-1, default 0.005: the
          relief's bending penalty), back_relief (0-1, default 0.5: share of the front's relief mirrored onto the
          back), tilt (0-2, default 1.0: lean read from the elliptical outline of a ring or a dish; 0 turns it off).
          For hunyuan3d: steps, guidance_scale, decoder.

        wait: true (default) waits up to 10 minutes for the job to finish and returns the final job; false returns
        the queued job at once (follow it with job_status).

        out_dir: a folder on this machine; when given (and wait is true), every requested format is downloaded
        there as <image stem>.<format> (OBJ as .obj.zip) and the paths are returned in "files".

        Returns the job: id, status (queued, running, succeeded, failed, canceled), progress (0-100), stage, error,
        result_urls mapping each format to its path on the ORFEAS server (fetching them needs the agent's signed
        requests: use out_dir, `orfeas agent` or the orfeas.client SDK) and, with out_dir, "files".
        """
        path = Path(image_path).expanduser()
        if not path.is_file():
            raise ToolError(
                f"image not found: {image_path!r} (resolved to {path.resolve()}); give the path of a PNG, JPEG or "
                "WebP file readable by the MCP server"
            )

        def report(job: dict[str, Any]) -> None:
            message = f"{job.get('status')}: {job.get('stage') or ''}".rstrip(": ")
            anyio.from_thread.run(ctx.report_progress, float(job.get("progress") or 0), 100.0, message)

        try:
            with client_factory() as client:
                if views:
                    paths = {name: Path(view).expanduser() for name, view in views.items()}
                    missing = [str(p) for p in paths.values() if not p.is_file()]
                    if missing:
                        raise ToolError(f"view images not found: {', '.join(missing)}")
                    job = client.generate(views=paths, **(options or {}))
                else:
                    job = client.generate(path, **(options or {}))
                if wait:
                    job = client.wait(job["id"], on_progress=report, timeout=WAIT_TIMEOUT)
                if wait and out_dir:
                    job["files"] = _download_all(client, job, path.stem, Path(out_dir).expanduser())
        except TimeoutError as exc:
            raise ToolError(f"{exc}; it is still on the server: call job_status later") from exc
        except CLIENT_ERRORS as exc:
            raise ToolError(str(exc)) from exc
        return job

    @server.tool()
    def job_status(job_id: str) -> dict[str, Any]:
        """Current state of a job submitted with generate_3d, by its id.

        Returns the job: id, status (queued, running, succeeded, failed, canceled), progress (0-100), stage (the
        pipeline step running now), error (why it failed, else null) and result_urls (format -> download path,
        filled once it succeeded). A job submitted with another agent key is reported as not found.
        """
        try:
            with client_factory() as client:
                return client.status(job_id)
        except NotFoundError as exc:
            raise ToolError(f"no job {job_id!r} for this agent key") from exc
        except CLIENT_ERRORS as exc:
            raise ToolError(str(exc)) from exc

    return server


def _download_all(client: AgentClient, job: dict[str, Any], stem: str, folder: Path) -> dict[str, str]:
    """Download every format of a finished job into folder; {format: local path}."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for fmt in job.get("result_urls", {}):
        target = folder / result_filename(stem, fmt)
        files[fmt] = str(client.download(job["id"], fmt, target))
    return files


def run() -> None:
    """Serve the ORFEAS tools over stdio (the transport MCP clients use for local servers)."""
    server = build_server()
    # httpx logs every request at INFO; while a job is awaited that is two status polls a second.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    server.run("stdio")


if __name__ == "__main__":
    run()
