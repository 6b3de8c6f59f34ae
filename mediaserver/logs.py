"""Structured logging: one line per event, `key=value` text or JSON."""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if self._worker is not None:
            entry["worker"] = self._worker
        # Messages are written as "key=value ..." so that both formats carry the same fields.
        message = record.getMessage()
        fields: dict[str, str] = {}
        for part in message.split(" "):
            key, sep, value = part.partition("=")
            if sep and key.isidentifier():
                fields[key] = value
        if fields and len(fields) == len(message.split(" ")):
            entry.update(fields)
        else:
            entry["message"] = message
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str = "info", fmt: str = "text", worker: int | None = None) -> None:
    """`worker`: this process is that worker of a machine; its lines say so (`worker=N`)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        tag = f" worker={worker}" if worker is not None else ""
        formatter = logging.Formatter(f"%(asctime)s.%(msecs)03dZ level=%(levelname)s logger=%(name)s{tag} %(message)s")
        formatter.converter = time.gmtime
        formatter.default_msec_format = None
        formatter.datefmt = "%Y-%m-%dT%H:%M:%S"
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
