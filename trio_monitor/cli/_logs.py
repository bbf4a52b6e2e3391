"""Logging for long-running commands: readable text on stderr, or JSON lines.

JSON lines carry ``time`` (ISO 8601 UTC), ``level``, ``logger``, ``message``
and, for errors, ``exception`` (the formatted traceback), plus any extra
fields a record was logged with, so a log shipper can index them.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

__all__ = ["LOG_FORMATS", "JSONFormatter", "configure_logging"]

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else was passed with ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JSONFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        return json.dumps(entry, default=_safe_repr)


def _safe_repr(value: object) -> str:
    """``repr(value)`` for JSON, or a stand-in when that raises: a log line never fails."""
    try:
        return repr(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def configure_logging(log_format: str, level: int = logging.INFO) -> logging.Handler:
    """Log to stderr in ``log_format``: ``trio_monitor`` from ``level``, libraries from WARNING.

    Libraries' warnings (a database driver reconnecting, say) matter to an
    operator too, so the handler goes on the root logger. Returns it.
    """
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("trio_monitor").setLevel(level)
    return handler
