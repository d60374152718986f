"""Structured logs: one JSON object per line (orjson), redacted, never a record value.

riprap only logs through ``logging.getLogger("riprap...")``; it never configures
logging itself. The CLI installs :class:`JsonFormatter` (``--log-format json``)
or a human console format; embedding services attach it to their own handlers.
"""

from __future__ import annotations

import json
import logging
from typing import Any, final

import orjson

from riprap.observability._redact import Redactor

CONTEXT_FIELDS = ("pipeline", "stage", "partition", "offset", "trace_id")
"""``extra=`` fields copied into the JSON object when a log call carries them."""


@final
class JsonFormatter(logging.Formatter):
    """Formats a log record as one line of JSON, with the message redacted.

    Args:
        redactor: Cleans messages and exception text (emails, tokens, keys, cards).
    """

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self.redactor.redact(record.getMessage()),
        }
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                event[name] = value
        if record.exc_info:
            event["error"] = self.redactor.redact(self.formatException(record.exc_info))
        try:
            return orjson.dumps(event, default=str).decode()
        except TypeError:  # text with a lone surrogate, an integer beyond 64 bits
            return json.dumps(event, default=str)  # ASCII: every stream can take the line


@final
class _ConsoleFormatter(logging.Formatter):
    """The human console format, redacted like :class:`JsonFormatter` (message and traceback)."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.redactor = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        return self.redactor.redact(super().format(record))


def configure_cli_logging(*, fmt: str, verbose: bool) -> None:
    """Logging for the ``riprap`` command only: JSON lines or a console format on stderr.

    Both formats redact the message and any traceback with the default patterns.
    """
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(_ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
