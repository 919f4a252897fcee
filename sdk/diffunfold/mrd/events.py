"""The MRD server's log: one JSON line per event on stderr (``diffunfold.mrd`` logger)."""

from __future__ import annotations

import json
import logging
import time

LOG = logging.getLogger("diffunfold.mrd")


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        return json.dumps(entry, default=str)


def configure_logging(level: str = "info") -> None:
    """JSON lines on stderr for the ``diffunfold.mrd`` logger."""
    handler = logging.StreamHandler()
    handler.setFormatter(_JsonLines())
    LOG.handlers[:] = [handler]
    LOG.setLevel(level.upper())
    LOG.propagate = False


def log_event(event: str, level: int = logging.INFO, **fields) -> None:
    LOG.log(level, event, extra={"fields": fields})
