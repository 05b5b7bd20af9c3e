"""A Python client for the ORFEAS agent API: submit images, follow jobs, download results.

Every request is signed with the agent's key (see `orfeas.signing`) over exactly the bytes sent. This module imports
nothing from the server, so it can be used from any machine that has `httpx`.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

import httpx

from orfeas.signing import signed_headers

DEFAULT_URL = "http://127.0.0.1:8000"
FINAL_STATUSES = frozenset({"succeeded", "failed", "canceled"})
ImageInput = str | Path | bytes


class ApiError(Exception):
    """The server refused a request; `error_type` and `message` come from its JSON error body."""

    def __init__(self, status_code: int, error_type: str, message: str, payload: Any = None):
        self.status_code = status_code
        self.error_type = error_type
        self.message = message
        self.payload = payload
        super().__init__(self.describe())

    def describe(self) -> str:
        return f"{self.status_code} {self.error_type}: {self.message}"


class AuthError(ApiError):
    """401: unknown key, wrong signature, a timestamp outside the server's window, or a reused nonce."""


class ForbiddenError(ApiError):
    """403: the key is valid but may not do this."""


class NotFoundError(ApiError):
    """404: no such job, or a job that belongs to another agent."""


class ServerError(ApiError):
    """5xx: the server failed or is unavailable; retrying later may work."""


class RateLimitError(ApiError):
    """429: too many requests; `retry_after` is how many seconds to wait (None if the server did not say)."""

    def __init__(
        self,
        status_code: int,
        error_type: str,
        message: str,
        payload: Any = None,
        *,
        retry_after: float | None = None,
        limit: int | None = None,
        remaining: int | None = None,
        reset: int | None = None,
    ):
        self.retry_after = retry_after
        self.limit = limit
        self.remaining = remaining
        self.reset = reset
        super().__init__(status_code, error_type, message, payload)

    def describe(self) -> str:
        if "retry" in self.message.lower():  # the server already said when
            return super().describe()
        when = "later" if self.retry_after is None else f"in {self.retry_after:g} s"
        return f"{super().describe()}; retry {when}"


class ServerUnreachable(ConnectionError):
    """No HTTP response: the server is down, the URL is wrong, or the connection timed out."""


class MissingCredentials(ValueError):
    """The agent key id or secret is not configured."""


class JobFailed(Exception):
    """A job ended `failed` or `canceled`; `job` is its final view."""

    def __init__(self, job: dict[str, Any]):
        self.job = job
        reason = f": {job['error']}" if job.get("error") else ""
        super().__init__(f"job {job.get('id')} {job.get('status')}{reason}")


ERRORS_BY_STATUS: dict[int, type[ApiError]] = {401: AuthError, 403: ForbiddenError, 404: NotFoundError}


def result_filename(stem: str, fmt: str) -> str:
    """The file name a result is saved under; OBJ comes as a zip (the .obj with its material and texture)."""
    return f"{stem}.obj.zip" if fmt == "obj" else f"{stem}.{fmt}"


def read_image(image: ImageInput, filename: str | None = None) -> dict[str, str]:
    """`{"image": base64, "filename": name}` for a path or raw bytes (bytes are named by their format)."""
    if isinstance(image, bytes):
        data, name = image, filename or f"image{image_suffix(image)}"
    else:
        path = Path(image).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        data, name = path.read_bytes(), filename or path.name
    return {"image": base64.b64encode(data).decode("ascii"), "filename": name}


def image_suffix(data: bytes) -> str:
    """File suffix for PNG, JPEG or WebP bytes, or '' when the format is not recognised."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if data.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return ""


def api_error(response: httpx.Response) -> ApiError:
    """The exception for an error response, from its `{"error": {"type", "message"}}` body and headers."""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        error_type = str(error.get("type") or "HTTPError")
        message = str(error.get("message") or response.reason_phrase)
    else:
        error_type, message = "HTTPError", response.text.strip()[:200] or response.reason_phrase
    code = response.status_code
    if code == 429:
        headers = response.headers
        return RateLimitError(
            code,
            error_type,
            message,
            payload,
            retry_after=retry_after_seconds(headers.get("Retry-After")),
            limit=header_int(headers.get("RateLimit-Limit")),
            remaining=header_int(headers.get("RateLimit-Remaining")),
            reset=header_int(headers.get("RateLimit-Reset")),
        )
    kind = ServerError if code >= 500 else ERRORS_BY_STATUS.get(code, ApiError)
    return kind(code, error_type, message, payload)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header, which holds either seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


def header_int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class AgentClient:
    """Signed calls to one ORFEAS server as one agent. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        base_url: str,
        key_id: str,
        secret: str,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.key_id = key_id
        self._secret = secret
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs: Any) -> AgentClient:
        """A client configured by ORFEAS_AGENT_URL (default http://127.0.0.1:8000), ORFEAS_AGENT_KEY and _SECRET."""
        env = os.environ if env is None else env
        key_id, secret = env.get("ORFEAS_AGENT_KEY"), env.get("ORFEAS_AGENT_SECRET")
        if not key_id or not secret:
            missing = [
                name for name, value in (("ORFEAS_AGENT_KEY", key_id), ("ORFEAS_AGENT_SECRET", secret)) if not value
            ]
            raise MissingCredentials(
                f"{' and '.join(missing)} not set: export the agent key id and secret issued by the ORFEAS server"
            )
        return cls(env.get("ORFEAS_AGENT_URL") or DEFAULT_URL, key_id, secret, **kwargs)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def generate(
        self,
        image: ImageInput | None = None,
        filename: str | None = None,
        *,
        views: Mapping[str, ImageInput] | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Submit one image (a path, or raw bytes), or the views of one object (`views={"front": ..., "back": ...}`,
        for a multi-view model such as hunyuan3d-dit-v2-mv), with generation options; returns the queued job."""
        if views is not None and image is None:
            body: dict[str, Any] = {"views": {name: read_image(view)["image"] for name, view in views.items()}}
        elif image is not None and views is None:
            body = read_image(image, filename)
        else:
            raise ValueError("give either one image or views")
        if options:
            body["options"] = options
        return self._request("POST", "/api/agent/generate-3d", json_body=body).json()["job"]

    def batch(self, images: Sequence[ImageInput], **options: Any) -> list[dict[str, Any]]:
        """Submit several images sharing the same options; returns one job per image, in order."""
        body: dict[str, Any] = {"images": [read_image(image) for image in images]}
        if options:
            body["options"] = options
        return self._request("POST", "/api/agent/batch", json_body=body).json()["jobs"]

    def status(self, job_id: str) -> dict[str, Any]:
        """The job's current view: status, progress (0-100), stage, error and result_urls."""
        return self._request("GET", f"/api/agent/status/{quote(job_id, safe='')}").json()

    def wait(
        self,
        job_id: str,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        timeout: float = 600,
        poll: float = 0.5,
    ) -> dict[str, Any]:
        """Poll until the job ends and return it; `on_progress(job)` runs whenever status, progress or stage changes.

        Raises JobFailed if it ends failed or canceled, TimeoutError if it is still going after `timeout` seconds.
        A 429 while polling waits the server's Retry-After instead of failing, if the deadline allows.
        """
        deadline = time.monotonic() + timeout
        last_seen: tuple[Any, ...] | None = None
        while True:
            try:
                job = self.status(job_id)
            except RateLimitError as exc:
                delay = poll if exc.retry_after is None else max(poll, exc.retry_after)
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                continue
            seen = (job.get("status"), job.get("progress"), job.get("stage"))
            if on_progress is not None and seen != last_seen:
                on_progress(job)
            last_seen = seen
            if job.get("status") in FINAL_STATUSES:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"job {job_id} still {job.get('status')} after {timeout:g} s")
            time.sleep(min(poll, remaining))
        if job["status"] != "succeeded":
            raise JobFailed(job)
        return job

    def download(self, job_id: str, fmt: str, path: str | Path) -> Path:
        """Save the job's result in `fmt` (glb, obj as a zip, stl, ply) to `path`, or into it if it is a folder;
        returns the file written. OBJ comes as a zip of the OBJ, its MTL and texture, so a `path` of `x.obj` is
        written as `x.obj.zip`."""
        target = Path(path).expanduser()
        if target.is_dir():
            target = target / result_filename(job_id, fmt)
        elif fmt == "obj" and target.suffix.lower() == ".obj":
            target = target.with_name(target.name + ".zip")
        url = f"/api/agent/jobs/{quote(job_id, safe='')}/result.{quote(fmt, safe='')}"
        partial = target.with_name(target.name + ".part")
        response = self._request("GET", url, stream=True)
        try:
            with partial.open("wb") as file:
                for chunk in response.iter_bytes():
                    file.write(chunk)
        except httpx.TransportError as exc:
            partial.unlink(missing_ok=True)
            raise self._unreachable(exc) from exc
        finally:
            response.close()
        partial.replace(target)
        return target

    def _request(self, method: str, path: str, *, json_body: Any = None, stream: bool = False) -> httpx.Response:
        """Send one signed request; raises the ApiError subclass for its status, or ServerUnreachable."""
        body = b"" if json_body is None else json.dumps(json_body, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"} if json_body is not None else {}
        request = self._http.build_request(method, path, content=body, headers=headers)
        # Sign what goes on the wire: the final path and raw query of the built URL, and the body bytes.
        request.headers.update(
            signed_headers(
                self.key_id, self._secret, request.method, request.url.path, request.url.query.decode(), request.content
            )
        )
        try:
            response = self._http.send(request, stream=stream)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if response.is_error:
            response.read()
            response.close()
            raise api_error(response)
        return response

    def _unreachable(self, exc: httpx.TransportError) -> ServerUnreachable:
        return ServerUnreachable(f"cannot reach the ORFEAS server at {self.base_url} ({type(exc).__name__}: {exc})")
