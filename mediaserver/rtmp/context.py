"""What the parts of a server-side RTMP connection share: its dependencies, its error, the ids it sends with.

Kept apart so that imports go one way: connection -> commands -> publisher, player -> context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mediaserver.auth import Authorizer
from mediaserver.config import RtmpConfig
from mediaserver.hub import Hub
from mediaserver.metrics import Metrics
from mediaserver.rtmp.chunk import ChunkError

# Chunk stream ids we send on.
CSID_CONTROL = 2
CSID_COMMAND = 3
CSID_AUDIO = 4
CSID_DATA = 5
CSID_VIDEO = 6

# User Control event types.
UC_STREAM_BEGIN = 0
UC_STREAM_EOF = 1
UC_SET_BUFFER_LENGTH = 3
UC_PING_REQUEST = 6
UC_PING_RESPONSE = 7

# The message stream id players get from createStream; shared so that one serialisation
# of a packet serves all of them.
PLAY_STREAM_ID = 1


class ProtocolError(ChunkError):
    """A command-level violation (publish before connect, a bad stream name ...): the same handling as a chunk
    stream error, one closed connection with a counted `reason`."""


@dataclass(slots=True)
class RtmpContext:
    config: RtmpConfig
    hub: Hub
    authorizer: Authorizer
    metrics: Metrics


def status(level: str, code: str, description: str) -> dict[str, Any]:
    """The information object of an onStatus or `_error`."""
    return {"level": level, "code": code, "description": description}


def finite_number(values: dict[str, Any], key: str) -> float:
    """A finite, non-negative number from an AMF object, or 0: encoders send NaN and worse."""
    value = values.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return min(float(value), 1e9)
    return 0.0
