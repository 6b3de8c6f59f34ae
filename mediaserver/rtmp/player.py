"""The playing side of an RTMP connection: a hub subscriber that writes a stream's packets to the socket.

A new player gets the stream's metadata, sequence headers and cached GOP first (the join
burst, in one write), then every packet as the hub fans it out. Players on the usual message
stream id and chunk size share one serialisation of each packet (`Packet.wire`: a type-0 header
with the packet's own timestamp, so the bytes do not depend on what the connection sent before
and every player gets the same ones); a player's own work per packet is the checks below and one
`transport.write` of those shared bytes. A player whose socket buffer overflows skips to the next
keyframe instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from mediaserver.auth import redact
from mediaserver.hub import Stream
from mediaserver.media import Packet, TrackKind
from mediaserver.rtmp import chunk
from mediaserver.rtmp.chunk import encode_message
from mediaserver.rtmp.context import CSID_AUDIO, CSID_DATA, CSID_VIDEO, PLAY_STREAM_ID, UC_STREAM_EOF

if TYPE_CHECKING:
    from mediaserver.rtmp.connection import RtmpConnection

log = logging.getLogger("mediaserver.rtmp")

_MESSAGE_TYPE = {TrackKind.VIDEO: chunk.VIDEO, TrackKind.AUDIO: chunk.AUDIO, TrackKind.DATA: chunk.DATA_AMF0}
_CHUNK_STREAM = {TrackKind.VIDEO: CSID_VIDEO, TrackKind.AUDIO: CSID_AUDIO, TrackKind.DATA: CSID_DATA}


class RtmpPlayer:
    """One subscriber of `stream`, on message stream `stream_id` of its connection."""

    __slots__ = (
        "_burst",
        "_chunk_size",
        "_conn",
        "_hub",
        "_max_buffer",
        "_shared_wire",
        "_skip_to_keyframe",
        "_stream_id",
        "_traffic",
        "_transport",
        "peer",
        "protocol",
        "stream",
    )

    def __init__(self, conn: RtmpConnection, transport: asyncio.Transport, stream: Stream, stream_id: int) -> None:
        ctx = conn.ctx
        self._conn = conn
        # Held here for the per-packet path; the player is unsubscribed before the connection drops it.
        self._transport = transport
        self._traffic = ctx.metrics.traffic
        self._hub = ctx.hub
        self._max_buffer = ctx.config.player_max_buffer
        self._chunk_size = conn.out_chunk_size
        self._stream_id = stream_id
        # `Packet.wire` is made for message stream 1 at the configured chunk size; others encode their own.
        self._shared_wire = stream_id == PLAY_STREAM_ID and conn.out_chunk_size == ctx.config.out_chunk_size
        self._skip_to_keyframe = False
        # While the join burst is made: its messages, written in one call at its end.
        self._burst: list[bytes] | None = None
        self.peer = conn.peer
        self.protocol = conn.protocol
        self.stream = stream

    def send_join_burst(self) -> int:
        """Metadata, sequence headers stamped with the burst's start, then the burst (the cached GOP, and the
        one before while the current is short: `Stream.join_burst`), in one write. Returns the burst's length
        in ms.

        Metadata goes at time 0: FFmpeg's FLV reader takes an onMetaData with a non-zero
        time for a text track.
        """
        stream = self.stream
        gop = stream.join_burst()
        start = gop[0].dts if gop else 0
        burst: list[bytes] = []
        self._burst = burst
        try:
            if stream.metadata is not None:
                burst.append(self._stamped(stream.metadata, 0))
            for packet in (stream.video_config, stream.audio_config):
                if packet is not None:
                    burst.append(self._stamped(packet, start))
            self._skip_to_keyframe = not gop and stream.video_config is not None
            for packet in gop:
                self.on_packet(packet)
        finally:
            self._burst = None
        transport = self._transport
        if burst and not transport.is_closing():
            # One writev instead of one write per message; the buffers are the shared ones, not copies.
            transport.writelines(burst)
            self._traffic.bytes_out[self.protocol] += sum(map(len, burst))
        return gop[-1].dts - start if gop else 0

    def _stamped(self, packet: Packet, timestamp: int) -> bytes:
        """`packet` stamped `timestamp`: an encoding of its own, the stamp being this player's."""
        return encode_message(
            _CHUNK_STREAM[packet.kind],
            _MESSAGE_TYPE[packet.kind],
            self._stream_id,
            timestamp,
            packet.flv,
            self._chunk_size,
        )

    def end(self, why: str) -> None:
        """The connection gave up this role (deleteStream, close, disconnect)."""
        stream = self.stream
        stream.unsubscribe(self)
        log.info(
            "event=play_stop protocol=%s peer=%s stream=%s/%s reason=%s",
            self.protocol,
            self.peer,
            stream.app,
            redact(stream.name),
            why,
        )

    # ----- hub Subscriber ---------------------------------------------------------------

    def on_packet(self, packet: Packet) -> None:
        transport = self._transport
        if transport.is_closing():
            return
        media = not packet.is_config and packet.kind is not TrackKind.DATA
        if self._skip_to_keyframe and media:
            # Resume on a video keyframe; an audio-only stream resumes on any audio frame.
            resumes = packet.keyframe and (packet.kind is TrackKind.VIDEO or self.stream.video_config is None)
            if not resumes:
                self._hub.drops.add("slow_player")
                return
            self._skip_to_keyframe = False
        # During the join burst this sees nothing of the burst itself (it is written at its end): the GOP
        # cache bounds that.
        if media and transport.get_write_buffer_size() > self._max_buffer:
            # The player cannot keep up: drop until the next keyframe rather than queue without bound.
            self._skip_to_keyframe = True
            self._hub.drops.add("slow_player")
            return
        if self._shared_wire:
            wire = packet.wire
            if wire is None:
                wire = encode_message(
                    _CHUNK_STREAM[packet.kind],
                    _MESSAGE_TYPE[packet.kind],
                    PLAY_STREAM_ID,
                    packet.dts,
                    packet.flv,
                    self._chunk_size,
                )
                packet.wire = wire
        else:
            wire = encode_message(
                _CHUNK_STREAM[packet.kind],
                _MESSAGE_TYPE[packet.kind],
                self._stream_id,
                packet.dts,
                packet.flv,
                self._chunk_size,
            )
        burst = self._burst
        if burst is not None:
            burst.append(wire)
            return
        transport.write(wire)
        self._traffic.bytes_out[self.protocol] += len(wire)

    def on_stream_end(self) -> None:
        conn = self._conn
        stream_id = self._stream_id
        conn.player = None
        conn.send_status(stream_id, "status", "NetStream.Play.UnpublishNotify", "stream unpublished")
        conn.send_user_control(UC_STREAM_EOF, stream_id)
        conn.send_status(stream_id, "status", "NetStream.Play.Stop", "stream ended")
        conn.close()
