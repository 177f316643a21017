"""Structured JSON logs on stderr, one object per line."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from warren.core.errors import InvalidArgument

# Attributes every LogRecord has; anything else came in through ``extra=``.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "component": self.component,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def level_from_env() -> int:
    """The level WARREN_LOG_LEVEL names (any case; default info)."""
    value = os.environ.get("WARREN_LOG_LEVEL", "info")
    level = logging.getLevelNamesMapping().get(value.strip().upper())
    if level is None:
        raise InvalidArgument(
            f"WARREN_LOG_LEVEL={value!r} is not a log level: use debug, info, warning or error"
        )
    return level


def setup(component: str) -> None:
    """Configure the root logger; WARREN_LOG_LEVEL=debug|info|warning|error picks the level."""
    level = level_from_env()  # first: a bad value changes nothing
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(component))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
