"""The parent-worker protocol: one JSON object per line over a Unix stream socket.

Worker -> parent: `hello` (index, pid, its internal sockets), `claim` (with a request id: the parent answers
whether the stream is now the worker's), `release`, `event` (a control-plane event for the other workers),
`kick` (disconnect a publisher wherever it is).
Parent -> worker: `snapshot` (every worker and owner on joining), `worker`/`gone` (a worker came or went),
`claimed`/`released` (ownership changes), `reply` (to a claim), `event` and `kick` (another worker's).
"""

from __future__ import annotations

import json
from typing import Any

# A line longer than this is a bug on one side: the connection is dropped rather than buffered.
MAX_LINE = 1024 * 1024


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """One message; ValueError when the line is not a JSON object with an `op`."""
    value = json.loads(line)
    if not isinstance(value, dict) or not isinstance(value.get("op"), str):
        raise ValueError("not a message")
    return value
