"""Structured logging: ``key=value`` (or JSON) records that carry the session id of the connection they
belong to; under journald (``JOURNAL_STREAM``) the timestamp is left to the journal."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys

session_id: contextvars.ContextVar[str] = contextvars.ContextVar("session_id", default="-")


class _SessionFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.session = session_id.get()
        return True


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "session": getattr(record, "session", "-"),
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup(level: str = "info", fmt: str = "text") -> None:
    """Configure the root logger once, for the daemon and the CLI alike."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_SessionFilter())
    if fmt == "json":
        handler.setFormatter(_JSONFormatter())
    else:
        stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
        handler.setFormatter(
            logging.Formatter(stamp + "level=%(levelname)s logger=%(name)s session=%(session)s %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("mail.log", "aiosmtpd", "uvicorn.access", "aioimaplib", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
