"""Client SDK for the ORFEAS agent API (no server imports; needs only httpx)."""

from orfeas.client.agent import (
    AgentClient,
    ApiError,
    AuthError,
    ForbiddenError,
    JobFailed,
    MissingCredentials,
    NotFoundError,
    RateLimitError,
    ServerError,
    ServerUnreachable,
)

__all__ = [
    "AgentClient",
    "ApiError",
    "AuthError",
    "ForbiddenError",
    "JobFailed",
    "MissingCredentials",
    "NotFoundError",
    "RateLimitError",
    "ServerError",
    "ServerUnreachable",
]
