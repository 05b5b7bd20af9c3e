"""The one Settings object: read from ORFEAS_* environment variables, built once and passed down."""

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Machine- and deployment-level configuration (per-request choices live in `GenerateOptions`)."""

    model_config = SettingsConfigDict(env_prefix="ORFEAS_", extra="ignore")

    # pipeline
    max_image_pixels: int = Field(
        40_000_000, description="Refuse images with more pixels than this (decompression-bomb guard)."
    )
    image_size: int = Field(512, description="Side of the square cut-out handed to generators, in pixels.")
    crop_margin: float = Field(0.05, description="Margin around the object in the cut-out, as a fraction.")
    background_model: Path | None = Field(
        None,
        description="ONNX background remover (rembg's u2net, u2netp, isnet-general-use or a BiRefNet export); unset: "
        "the first of those in $U2NET_HOME (default ~/.u2net), else the weight-free remover; 'none': always the "
        "weight-free one. Never downloaded.",
    )
    generators: dict[str, str] = Field(
        default_factory=dict,
        description='Extra generators as {"name": "module:factory"}; factory(settings) returns a Generator.',
    )

    # hunyuan3d generator (optional extra orfeas[hunyuan]; pipeline/generators/hunyuan.py)
    hunyuan_model: str = Field(
        "hunyuan3d-dit-v2-0",
        description="Default Hunyuan3D-2 variant (per request: option 'model'): hunyuan3d-dit-v2-0, -v2-0-fast, "
        "-v2-0-turbo, hunyuan3d-dit-v2-mini, -mini-fast, -mini-turbo, hunyuan3d-dit-v2-mv, -mv-fast, -mv-turbo.",
    )
    hunyuan_model_path: Path | None = Field(
        None,
        description="Folder with the shape model's config.yaml and checkpoint (or with <subfolder>/ holding them); "
        "unset: $HY3DGEN_MODELS/<repo>/<subfolder> (default ~/.cache/hy3dgen), then the Hugging Face cache. "
        "Weights are never downloaded.",
    )
    hunyuan_variant: str | None = Field(
        "fp16", description="Checkpoint model.<variant>.safetensors (or .ckpt); empty for model.safetensors."
    )
    hunyuan_dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        "auto", description="Weights and activations; auto: float16 on a GPU, float32 on the CPU."
    )
    hunyuan_steps: int = Field(
        30,
        ge=1,
        le=200,
        description="Diffusion steps for all models (request option 'steps'); unset: each model's own default.",
    )
    hunyuan_guidance_scale: float = Field(
        5.0,
        ge=1.0,
        le=30.0,
        description="Guidance for all models (request option 'guidance_scale'); unset: each model's own default.",
    )
    hunyuan_octree_resolution: int = Field(
        384, ge=32, le=1024, description="Default decoding grid cells across [-1.01, 1.01] (request 'resolution')."
    )
    hunyuan_decoder: Literal["dense", "hierarchical", "flashvdm"] = Field(
        "hierarchical", description="Volume decoding: every grid point, ours near the surface, or hy3dgen's FlashVDM."
    )
    hunyuan_chunk_size: int = Field(8000, ge=1, description="Points per shape-decoder call.")
    hunyuan_compile: bool = Field(
        False, description="torch.compile the DiT, VAE and image encoder once loaded: a slow first batch, then faster."
    )

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
    device: str = Field("auto", description="'auto', 'cpu' or 'cuda:N': the device whose memory sizes batches.")
    lease_seconds: float = Field(30.0, description="A claimed job returns to the queue if not renewed this long.")
    heartbeat_seconds: float = Field(5.0, description="How often a worker renews the leases of its jobs.")
    max_attempts: int = Field(
        3, description="A job whose worker died this many times while running it alone is failed."
    )
    poll_seconds: float = Field(0.2, description="Idle worker's wait between queue checks.")
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
