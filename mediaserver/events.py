"""Typed stream events: what the hub tells its listeners (HLS, WebRTC, the recorder, the control plane).

The in-process bus, the Redis bus and worker processes carry exactly these; `as_dict()` is their wire form.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mediaserver.hub import Stream


class StreamEventKind(enum.StrEnum):
    STARTED = "stream-started"
    STOPPED = "stream-stopped"
    # A track's decoder configuration changed (a new sequence header): consumers re-initialise.
    CODEC_CHANGED = "codec-changed"


@dataclass(frozen=True, slots=True)
class StreamEvent:
    kind: StreamEventKind
    stream: Stream
    # Wall-clock time of the event (UTC epoch seconds).
    at: float = field(default_factory=time.time)
    # For CODEC_CHANGED: "video" or "audio", the new codec and configuration version.
    track: str | None = None
    codec: str | None = None
    version: int = 0

    @property
    def key(self) -> str:
        return self.stream.key

    def as_dict(self) -> dict[str, object]:
        """The event without the live object: for buses, logs and other processes."""
        out: dict[str, object] = {
            "event": self.kind.value,
            "app": self.stream.app,
            "name": self.stream.name,
            "at": self.at,
            "protocol": self.stream.publisher.protocol,
        }
        if self.track is not None:
            out.update(track=self.track, codec=self.codec, version=self.version)
        return out
