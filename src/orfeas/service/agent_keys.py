"""Agent key policy: the master key, the public key ids and the secrets derived from them.

Secrets are never stored. An agent's secret is derived on demand from a server-side master key:

    secret = HEX(HMAC-SHA256(master_key, f"{key_id}:{secret_version}"))

so neither a listing nor a copy of the database alone reveals one; whoever holds the master key (every API server of
a cluster) can recompute it. Rotating a key bumps `secret_version`, which invalidates the old secret at once.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import uuid
from pathlib import Path

from orfeas.errors import OrfeasError
from orfeas.store.users import UserStore

MASTER_KEY_FILE = "agent-master.key"
MIN_MASTER_KEY_BYTES = 16
MASTER_KEY_CHECK = "agent_master_key_check"


class MasterKeyMismatch(OrfeasError, ValueError):
    """This process's agent master key is not the one the installation's database was set up with."""


def derive_secret(master_key: bytes, key_id: str, secret_version: int) -> str:
    """An agent's secret: hex HMAC-SHA256 of "key_id:version" under the master key."""
    return hmac.new(master_key, f"{key_id}:{secret_version}".encode(), hashlib.sha256).hexdigest()


def new_key_id() -> str:
    """A fresh public key id: "ak_" and 20 URL-safe characters."""
    return "ak_" + secrets.token_urlsafe(15)


def checked_master_key(master_key: bytes) -> bytes:
    """The key itself if it is long enough to derive secrets from; ValueError otherwise."""
    if len(master_key) < MIN_MASTER_KEY_BYTES:
        raise ValueError(f"the agent master key must be at least {MIN_MASTER_KEY_BYTES} bytes")
    return master_key


def load_master_key(value: str | None, data_dir: Path) -> bytes:
    """The master key: `value` (hex) if given, else the one in data_dir/agent-master.key, created on first use.

    The file holds 32 random bytes in hex with mode 0600; one machine works out of the box, and a cluster shares one
    key through ORFEAS_AGENT_MASTER_KEY. Two processes creating it at once end up with the same key.
    """
    if value is not None:
        return _parse_master_key(value, "ORFEAS_AGENT_MASTER_KEY")
    path = Path(data_dir) / MASTER_KEY_FILE
    if not path.exists():
        _create_master_key_file(path)
    return _parse_master_key(path.read_text(), str(path))


def _parse_master_key(text: str, source: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError as exc:
        raise ValueError(f"the agent master key in {source} is not hex") from exc
    if len(key) < MIN_MASTER_KEY_BYTES:
        raise ValueError(f"the agent master key in {source} is shorter than {MIN_MASTER_KEY_BYTES} bytes")
    return key


def _create_master_key_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_hex(32) + "\n")
        # A hard link appears complete and fails if the name exists, so a concurrent creator's key is never replaced.
        os.link(temporary, path)
    except FileExistsError:
        pass
    finally:
        temporary.unlink(missing_ok=True)


def master_key_check(master_key: bytes) -> str:
    """A value that tells master keys apart without revealing them."""
    return hmac.new(master_key, b"orfeas agent master key check", hashlib.sha256).hexdigest()


def check_master_key(store: UserStore, master_key: bytes) -> None:
    """The first process to open a database records its master key's check value; a later one with another key
    (a server or `orfeas agents` without the cluster's ORFEAS_AGENT_MASTER_KEY) is refused, since the agent secrets
    it derives would not be the ones the other servers accept."""
    mine = master_key_check(master_key)
    recorded = store.set_fact_once(MASTER_KEY_CHECK, mine)
    if not hmac.compare_digest(recorded, mine):
        raise MasterKeyMismatch(
            "this agent master key is not the one the database was set up with: give every server and "
            "`orfeas agents` the same ORFEAS_AGENT_MASTER_KEY (or the same data directory's agent-master.key)"
        )
