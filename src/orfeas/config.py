"""The one Settings object: read from ORFEAS_* environment variables, built once and passed down."""

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from orfeas.pipeline.settings import PipelineFields, PipelineSettings


class Settings(BaseSettings, PipelineFields):
    """Machine- and deployment-level configuration (per-request choices live in `GenerateOptions`); the fields the
    pipeline reads are declared in `PipelineFields`."""

    model_config = SettingsConfigDict(env_prefix="ORFEAS_", extra="ignore")

    # service
    data_dir: Path = Field(Path("orfeas-data"), description="Database (SQLite) and result files live here.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite in data_dir.")
    max_upload_bytes: int = Field(25 * 2**20, description="Largest request body accepted (413 above).")
    max_images_per_request: int = Field(16, description="Images accepted in one POST /api/jobs.")
    validation_memory_bytes: int = Field(
        512 * 2**20, description="Memory that concurrent uploads may use between them to decode images for checking."
    )
    max_header_bytes: int = Field(64 * 1024, description="Largest request line and headers (431 above).")
    header_timeout_seconds: float = Field(10.0, description="A request's headers must arrive within this (408).")
    idle_timeout_seconds: float = Field(30.0, description="A request body that pauses longer is cut off.")
    max_connections: int = Field(1000, description="Open connections and requests one API process serves (503 above).")
    max_websockets: int = Field(500, description="Progress WebSockets one API process keeps open.")
    max_websockets_per_client: int = Field(64, description="Progress WebSockets one client address may keep open.")
    shutdown_grace_seconds: float = Field(10.0, description="On SIGTERM, open requests get this long to finish.")
    min_free_disk_bytes: int = Field(
        512 * 2**20, description="Below this much free space in data_dir, /readyz reports not ready."
    )
    max_batch: int = Field(8, description="Most jobs the worker hands to a generator at once.")
    target_utilization: float = Field(0.85, description="Share of device memory the batch sizing aims to use.")
    lease_seconds: float = Field(30.0, description="A claimed job returns to the queue if not renewed this long.")
    heartbeat_seconds: float = Field(5.0, description="How often a worker renews the leases of its jobs.")
    max_attempts: int = Field(
        3, description="A job whose worker died this many times while running it alone is failed."
    )
    poll_seconds: float = Field(
        0.2,
        description="Idle worker's longest wait between queue checks: new jobs end it at once (a submission in its "
        "own process, or the database's notice of jobs queued by another: store/notify.py).",
    )
    retention_hours: float = Field(24 * 7, description="Finished jobs and their files are deleted after this.")

    log_format: Literal["text", "json"] = Field(
        "text", description="Logs of serve and worker: 'text' (key=value for every field) or 'json' (one per line)."
    )

    # access control (docs/SECURITY.md)
    auth: Literal["on", "off"] = Field(
        "on",
        description="'on': users sign in (studio) or send an API key (programs); 'off': everyone is the local admin, "
        "allowed only while the server listens on a loopback address.",
    )
    host: str = Field("127.0.0.1", description="Address the API listens on (set by `orfeas serve --host`).")
    allowed_hosts: str = Field(
        "",
        description="Comma-separated Host names the API answers to ('*': any); default: the listening address, "
        "localhost and, on a wildcard address, this machine's names and addresses.",
    )
    cors_origins: str = Field("", description="Comma-separated origins allowed to call the API from other sites.")
    session_hours: float = Field(12.0, gt=0, description="A studio sign-in lasts this long.")

    # agent API
    agent_master_key: str | None = Field(
        None,
        description="Hex key from which agent secrets are derived; default: data_dir/agent-master.key (created). "
        "Every API server of a cluster needs the same one.",
    )
    agent_window_seconds: int = Field(300, description="Signed requests older or newer than this are refused.")
    max_agent_batch: int = Field(8, description="Most images in one POST /api/agent/batch.")

    def pipeline(self) -> PipelineSettings:
        """The part of these settings the pipeline reads (it never sees the database, leases or access rules)."""
        return PipelineSettings(**{name: getattr(self, name) for name in PipelineFields.model_fields})
