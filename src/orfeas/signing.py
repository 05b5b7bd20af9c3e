"""Request signing for the agent API, shared by the server and the client SDK (no other imports).

An agent signs each request with its secret:

    canonical = METHOD \\n PATH \\n SORTED_QUERY \\n TIMESTAMP \\n NONCE \\n SHA256_HEX(BODY)
    signature = HEX(HMAC-SHA256(secret, canonical))

and sends the four headers below. SORTED_QUERY is the query string's key=value pairs, each percent-encoded
(RFC 3986, as `urllib.parse.quote(..., safe="-_.~")`), sorted, joined with '&' (empty when there is none).
TIMESTAMP is Unix time in whole seconds; NONCE is 16-64 characters of [A-Za-z0-9_-], new for every request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, quote

KEY_HEADER = "X-Orfeas-Key"
TIMESTAMP_HEADER = "X-Orfeas-Timestamp"
NONCE_HEADER = "X-Orfeas-Nonce"
SIGNATURE_HEADER = "X-Orfeas-Signature"
NONCE_PATTERN = r"[A-Za-z0-9_-]{16,64}"


def canonical_query(query: str | Iterable[tuple[str, str]] | Mapping[str, str]) -> str:
    """Sorted, percent-encoded key=value pairs of a query (a raw query string or pairs)."""
    if isinstance(query, str):
        pairs = parse_qsl(query, keep_blank_values=True)
    elif isinstance(query, Mapping):
        pairs = list(query.items())
    else:
        pairs = list(query)
    encoded = sorted(f"{quote(str(k), safe='-_.~')}={quote(str(v), safe='-_.~')}" for k, v in pairs)
    return "&".join(encoded)


def canonical_string(method: str, path: str, query: str, timestamp: str, nonce: str, body: bytes) -> str:
    return "\n".join([method.upper(), path, canonical_query(query), timestamp, nonce, hashlib.sha256(body).hexdigest()])


def sign(secret: str, method: str, path: str, query: str, timestamp: str, nonce: str, body: bytes) -> str:
    """Hex HMAC-SHA256 of the canonical string."""
    message = canonical_string(method, path, query, timestamp, nonce, body).encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_matches(expected: str, given: str) -> bool:
    """Constant-time comparison of two hex signatures."""
    return hmac.compare_digest(expected.encode(), given.encode())


def signed_headers(
    key_id: str, secret: str, method: str, path: str, query: str = "", body: bytes = b"", now: float | None = None
) -> dict[str, str]:
    """The four headers that authenticate one request (a fresh nonce each call)."""
    timestamp = str(int(time.time() if now is None else now))
    nonce = secrets.token_urlsafe(18)
    return {
        KEY_HEADER: key_id,
        TIMESTAMP_HEADER: timestamp,
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: sign(secret, method, path, query, timestamp, nonce, body),
    }
