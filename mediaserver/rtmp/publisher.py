"""The publishing side of an RTMP connection: its media and data messages become a hub stream's packets."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from mediaserver.auth import redact
from mediaserver.formats.flv import parse_audio, parse_video
from mediaserver.hub import Stream
from mediaserver.media import Codec, Packet, TrackKind
from mediaserver.rtmp.amf import ECMAArray, encode_amf0
from mediaserver.rtmp.chunk import Message
from mediaserver.rtmp.context import finite_number

if TYPE_CHECKING:
    from mediaserver.rtmp.connection import RtmpConnection

log = logging.getLogger("mediaserver.rtmp")


def metadata_packet(values: dict[str, Any], timestamp: int = 0) -> Packet:
    """An `onMetaData` data message as players expect it."""
    body = encode_amf0("onMetaData", ECMAArray(values))
    return Packet(TrackKind.DATA, Codec.UNKNOWN, timestamp, timestamp, False, body, 0)


def metadata_of(values: list[Any]) -> tuple[Packet, int, int, float] | None:
    """A data message's `onMetaData` (with or without `@setDataFrame`) as `Stream.set_metadata` takes it:
    the packet players get, and the width, height and frame rate it declares; None for any other message."""
    if values and values[0] == "@setDataFrame":
        values = values[1:]
    if len(values) < 2 or values[0] != "onMetaData" or not isinstance(values[1], dict):
        return None
    meta = dict(values[1])
    width, height = int(finite_number(meta, "width")), int(finite_number(meta, "height"))
    return metadata_packet(meta), width, height, finite_number(meta, "framerate")


class RtmpPublisher:
    """What the hub holds as the stream's publisher (`Stream.publisher`).

    The connection hands it video, audio and decoded data messages once the publish is granted.
    """

    __slots__ = ("_conn", "_hub", "peer", "protocol", "stream")

    peer: str
    protocol: str
    # Set right after `Hub.publish`, which needs this object first.
    stream: Stream

    def __init__(self, conn: RtmpConnection) -> None:
        self._conn = conn
        self._hub = conn.ctx.hub
        self.peer = conn.peer
        self.protocol = conn.protocol

    def on_video(self, message: Message) -> None:
        packet = parse_video(message.payload, message.timestamp)
        if packet is not None:
            self.stream.push(packet)

    def on_audio(self, message: Message) -> None:
        packet = parse_audio(message.payload, message.timestamp)
        if packet is not None:
            self.stream.push(packet)

    def on_data(self, values: list[Any]) -> None:
        found = metadata_of(values)
        if found is not None:
            self.stream.set_metadata(*found)

    def stop(self, reason: str) -> None:
        """Hub request (idle timeout, shutdown): drop this publisher."""
        log.info("event=publisher_stopped protocol=%s peer=%s reason=%s", self.protocol, self.peer, reason)
        self._conn.close()

    def end(self, why: str) -> None:
        """The connection gave up this role (deleteStream, close, disconnect)."""
        stream = self.stream
        self._hub.unpublish(stream)
        log.info(
            "event=publish_stop protocol=%s peer=%s stream=%s/%s reason=%s bytes_in=%d",
            self.protocol,
            self.peer,
            stream.app,
            redact(stream.name),
            why,
            stream.bytes_in,
        )
