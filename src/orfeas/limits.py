"""Bounds on what callers send: JSON that is small, shallow and storable, and names that fit their columns.

Every check raises InvalidOptions (HTTP 422) naming the field, before any work or write, so that an input the
database or a later stage could not take never gets that far.
"""

from __future__ import annotations

import json
import math
import unicodedata
from typing import Any

from orfeas.errors import InvalidOptions

MAX_JSON_DEPTH = 8  # generator options and agent bodies are flat; 8 leaves room for a nested option or two
MAX_JSON_ITEMS = 1_000  # keys and list items in one JSON document, counted together
MAX_SAFE_INTEGER = 2**53 - 1  # the largest integer every JSON reader (JavaScript, PostgreSQL's jsonb) keeps exactly
MAX_NAME_LENGTH = 255  # the jobs table's input_name column
MAX_IDEMPOTENCY_KEY_LENGTH = 200  # the jobs table's idempotency_key column


def parse_json(text: str | bytes, field: str, *, max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON that is at most `max_bytes` long and `max_depth` deep, with only finite numbers."""
    if len(text) > max_bytes:
        raise InvalidOptions(f"{field} is {len(text)} bytes; the limit is {max_bytes}")
    try:
        value = json.loads(text or "null", parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise InvalidOptions(f"{field} is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidOptions(f"{field} is nested deeper than {max_depth} levels") from None
    except ValueError as exc:  # integers with more digits than Python converts, NaN and Infinity
        raise InvalidOptions(f"{field} is not usable JSON: {exc}") from None
    check_json_value(value, field, max_depth=max_depth)
    return value


def check_json_value(value: Any, field: str, *, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse JSON-like data deeper than `max_depth`, with more than MAX_JSON_ITEMS items, integers beyond
    ±MAX_SAFE_INTEGER, non-finite floats or NUL characters in strings (PostgreSQL stores none of these)."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    items = 0
    while pending:
        current, depth = pending.pop()
        if isinstance(current, dict | list):
            if depth > max_depth:
                raise InvalidOptions(f"{field} is nested deeper than {max_depth} levels")
            children = list(current.items()) if isinstance(current, dict) else list(enumerate(current))
            items += len(children)
            if items > MAX_JSON_ITEMS:
                raise InvalidOptions(f"{field} has more than {MAX_JSON_ITEMS} items")
            for key, child in children:
                if isinstance(key, str):
                    _check_string(key, field)
                pending.append((child, depth + 1))
        elif isinstance(current, bool) or current is None:
            continue
        elif isinstance(current, int):
            if abs(current) > MAX_SAFE_INTEGER:
                raise InvalidOptions(f"{field} holds the integer {str(current)[:20]}..., beyond ±{MAX_SAFE_INTEGER}")
        elif isinstance(current, float):
            if not math.isfinite(current):
                raise InvalidOptions(f"{field} holds {current}; numbers must be finite")
        elif isinstance(current, str):
            _check_string(current, field)


def _check_string(text: str, field: str) -> None:
    if "\x00" in text:
        raise InvalidOptions(f"{field} holds a NUL character")


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def clean_input_name(name: str | None, fallback: str = "image") -> str:
    """An uploaded file's name as we store and show it: the last path part, without control or format
    characters, at most MAX_NAME_LENGTH characters (the extension kept); `fallback` when nothing is left."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn")).strip()
    if len(base) > MAX_NAME_LENGTH:
        stem, dot, extension = base.rpartition(".")
        if dot and 0 < len(extension) <= 10:
            base = stem[: MAX_NAME_LENGTH - len(extension) - 1] + "." + extension
        else:
            base = base[:MAX_NAME_LENGTH]
    return base if base.strip(".") else fallback


def check_idempotency_key(key: str | None) -> str | None:
    """The Idempotency-Key header if it is usable: 1 to 200 visible ASCII characters."""
    if key is None or key == "":
        return None
    if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise InvalidOptions(f"Idempotency-Key is {len(key)} characters; the limit is {MAX_IDEMPOTENCY_KEY_LENGTH}")
    if not all(" " < ch <= "~" for ch in key):
        raise InvalidOptions("Idempotency-Key may hold only visible ASCII characters")
    return key
