"""One log format for `orfeas serve` and `orfeas worker`: every `extra` field shown, as text or as JSON lines."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "color_message"}


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {key: value for key, value in vars(record).items() if key not in _STANDARD and not key.startswith("_")}


class KeyValueFormatter(logging.Formatter):
    """`2026-12-03 06:00:00,000 WARNING orfeas.service.worker: job failed job=3f2c... reason="..."`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        pairs = " ".join(f"{key}={_value(value)}" for key, value in _extras(record).items())
        if not pairs:
            return text
        head, newline, trace = text.partition("\n")  # keep a traceback below the line that names the fields
        return f"{head} {pairs}{newline}{trace}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, every extra field and the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _value(value: object) -> str:
    text = str(value)
    return json.dumps(text) if not text or any(ch in text for ch in ' "=\n') else text


def configure_logging(level: str, log_format: str = "text") -> None:
    """Log to stderr at `level` in the chosen format ('text' or 'json'), replacing any earlier set-up."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def logging_config(level: str, log_format: str = "text") -> dict[str, Any]:
    """The same set-up as a `logging.config.dictConfig` dict, for processes uvicorn starts itself."""
    formatter = "orfeas.logs.JsonFormatter" if log_format == "json" else "orfeas.logs.KeyValueFormatter"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"orfeas": {"()": formatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "orfeas"}},
        "root": {"handlers": ["stderr"], "level": level.upper()},
    }
