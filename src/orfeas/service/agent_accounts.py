"""Registering, rotating and revoking agents: what a usable name, rate and set of operations is, and the secrets
(derived from the master key, see `agent_keys`) that creating and rotating hand out once."""

from __future__ import annotations

from collections.abc import Iterable

from orfeas.errors import OrfeasError
from orfeas.service.agent_keys import checked_master_key, derive_secret, new_key_id
from orfeas.store.agents import AgentRecord, AgentStore

AGENT_OPERATIONS = ("generate", "batch", "status", "download")
DEFAULT_RATE_PER_MINUTE = 100


class AgentRevoked(OrfeasError):
    """The agent's key was revoked; it can no longer be used or rotated."""


class InvalidAgentSettings(OrfeasError, ValueError):
    """An agent's name, operations or rate is not usable."""


class AgentAccounts:
    """The operator's view of the agent registry: every change checked here, then written by `store`.

    `master_key` derives the secrets; it must be at least 16 bytes (ValueError otherwise).
    """

    def __init__(self, store: AgentStore, master_key: bytes) -> None:
        self.store = store
        self._master_key = checked_master_key(master_key)

    def secret_for(self, agent: AgentRecord) -> str:
        """The agent's current secret (derived, never stored)."""
        return derive_secret(self._master_key, agent.key_id, agent.secret_version)

    def create(
        self, name: str, operations: Iterable[str], rate_per_minute: int = DEFAULT_RATE_PER_MINUTE
    ) -> tuple[AgentRecord, str]:
        """Register an agent; returns its record and its secret, which is shown this once.

        Raises InvalidAgentSettings for an unusable name, unknown operations or a non-positive rate, and AgentExists
        if the name is taken.
        """
        record = self.store.insert(
            checked_name(name), new_key_id(), checked_operations(operations), checked_rate(rate_per_minute)
        )
        return record, self.secret_for(record)

    def revoke(self, name: str) -> AgentRecord:
        """Revoke an agent's key for good; revoking it again changes nothing. Raises AgentNotFound."""
        return self.store.revoke(name)

    def rotate(self, name: str) -> tuple[AgentRecord, str]:
        """Give an active agent a new secret; the old one stops working at once. Raises AgentNotFound, AgentRevoked."""
        record = _active(self.store.rotate_secret(name))
        return record, self.secret_for(record)

    def set_rate(self, name: str, rate_per_minute: int) -> AgentRecord:
        """Change an active agent's requests per minute. Raises InvalidAgentSettings, AgentNotFound, AgentRevoked."""
        return _active(self.store.set_rate(name, checked_rate(rate_per_minute)))


def _active(record: AgentRecord) -> AgentRecord:
    """The record of an agent the store just changed; a revoked one was left unchanged and cannot be changed."""
    if not record.active:
        raise AgentRevoked(f"agent {record.name!r} is revoked")
    return record


def checked_operations(operations: Iterable[str]) -> list[str]:
    """The operations in their canonical order; InvalidAgentSettings for none or an unknown one."""
    wanted = set(operations)
    unknown = wanted.difference(AGENT_OPERATIONS)
    if unknown:
        raise InvalidAgentSettings(f"unknown operations {sorted(unknown)}; choose from {list(AGENT_OPERATIONS)}")
    if not wanted:
        raise InvalidAgentSettings(f"an agent needs at least one operation of {list(AGENT_OPERATIONS)}")
    return [operation for operation in AGENT_OPERATIONS if operation in wanted]


def checked_rate(rate_per_minute: int) -> int:
    """The rate if it is a positive integer (not a bool); InvalidAgentSettings otherwise."""
    if isinstance(rate_per_minute, bool) or not isinstance(rate_per_minute, int) or rate_per_minute < 1:
        raise InvalidAgentSettings(f"rate_per_minute must be a positive integer, got {rate_per_minute!r}")
    return rate_per_minute


def checked_name(name: str) -> str:
    """The name if it is 1-100 characters without surrounding spaces; InvalidAgentSettings otherwise."""
    if not name or name != name.strip() or len(name) > 100:
        raise InvalidAgentSettings(f"agent names are 1-100 characters without surrounding spaces, got {name!r}")
    return name
