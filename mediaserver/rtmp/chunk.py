"""RTMP chunk stream: a byte-level parser (bytes in, messages out) and an encoder.

No I/O here, so both are testable with bytes alone. The parser never trusts a length
it reads: message length, chunk size and the number of chunk streams are bounded, and a
violation raises `ChunkError`, which the session turns into a closed connection.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Message type ids (RTMP 1.0, section 5.4 and 7.1).
SET_CHUNK_SIZE = 1
ABORT = 2
ACKNOWLEDGEMENT = 3
USER_CONTROL = 4
WINDOW_ACK_SIZE = 5
SET_PEER_BANDWIDTH = 6
AUDIO = 8
VIDEO = 9
DATA_AMF3 = 15
COMMAND_AMF3 = 17
DATA_AMF0 = 18
COMMAND_AMF0 = 20
AGGREGATE = 22

DEFAULT_CHUNK_SIZE = 128
MAX_CHUNK_SIZE = 16 * 1024 * 1024
EXTENDED_TIMESTAMP = 0xFFFFFF
# A peer has no business with more chunk streams than this; each may hold a partial message.
MAX_CHUNK_STREAMS = 64

_HEADER_SIZES = (11, 7, 3, 0)
_U32 = struct.Struct(">I")
_LE32 = struct.Struct("<I")


class ChunkError(ValueError):
    """The peer broke the chunk stream protocol or one of our limits. `reason` labels metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(slots=True)
class Message:
    csid: int
    type_id: int
    stream_id: int
    timestamp: int
    payload: bytes | bytearray


@dataclass(slots=True)
class _ChunkStream:
    timestamp: int = 0
    delta: int = 0
    length: int = 0
    type_id: int = 0
    stream_id: int = 0
    # Value of the last extended timestamp field, or None when the last header had none.
    extended: int | None = None
    # The message being assembled and how much of it has arrived.
    partial: bytearray | None = None
    received: int = 0
    # Set once any header has been seen: a type-1/2/3 header needs a predecessor.
    started: bool = False


class ChunkReader:
    """Incremental parser. `feed()` returns the complete messages the new bytes finish."""

    def __init__(self, max_message_size: int = 8 * 1024 * 1024) -> None:
        self.chunk_size = DEFAULT_CHUNK_SIZE
        self.max_message_size = max_message_size
        self.bytes_received = 0
        self._pending = bytearray()
        # Bytes the parser needs in `_pending` before it can make progress.
        self._need = 1
        # Bytes held in partial messages across all chunk streams.
        self._partial_bytes = 0
        self._streams: dict[int, _ChunkStream] = {}

    def set_chunk_size(self, size: int) -> None:
        # Bit 31 must be zero; anything outside 1..16 MiB is refused rather than trusted.
        if not 1 <= size <= MAX_CHUNK_SIZE:
            raise ChunkError("bad_chunk_size", f"chunk size {size} outside 1..{MAX_CHUNK_SIZE}")
        self.chunk_size = size

    def abort(self, csid: int) -> None:
        stream = self._streams.get(csid)
        if stream is not None and stream.partial is not None:
            self._partial_bytes -= len(stream.partial)
            stream.partial = None
            stream.received = 0

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        self.bytes_received += len(data)
        messages: list[Message] = []
        if not self._pending:
            buf = data if isinstance(data, bytes) else bytes(data)
            pos = self._parse(buf, messages)
            if pos < len(buf):
                self._pending = bytearray(buf[pos:])
            return messages
        # Accumulate until the chunk that stopped the parser is complete: re-parsing a
        # large chunk on every small read would cost quadratic time.
        self._pending += data
        if len(self._pending) < self._need:
            return messages
        buf = bytes(self._pending)
        pos = self._parse(buf, messages)
        self._pending = bytearray(buf[pos:])
        return messages

    def _parse(self, buf: bytes, out: list[Message]) -> int:
        end = len(buf)
        pos = 0
        streams = self._streams
        self._need = 1
        while pos < end:
            # Basic header: 1, 2 or 3 bytes.
            b0 = buf[pos]
            fmt = b0 >> 6
            csid = b0 & 0x3F
            p = pos + 1
            if csid == 0:
                if p + 1 > end:
                    break
                csid = buf[p] + 64
                p += 1
            elif csid == 1:
                if p + 2 > end:
                    break
                csid = buf[p] + (buf[p + 1] << 8) + 64
                p += 2
            hsize = _HEADER_SIZES[fmt]
            if p + hsize > end:
                break
            stream = streams.get(csid)
            if stream is None:
                if fmt != 0:
                    raise ChunkError("bad_chunk_header", f"chunk stream {csid} starts with a type-{fmt} header")
                if len(streams) >= MAX_CHUNK_STREAMS:
                    raise ChunkError("too_many_chunk_streams", f"more than {MAX_CHUNK_STREAMS} chunk streams")
                stream = _ChunkStream()
                streams[csid] = stream
            # Read the message header into locals; state changes only once the whole chunk is here.
            continuing = stream.partial is not None
            ts_field = -1
            length = stream.length
            type_id = stream.type_id
            stream_id = stream.stream_id
            if fmt <= 2:
                if continuing:
                    raise ChunkError("bad_chunk_header", f"type-{fmt} header inside a message on chunk stream {csid}")
                ts_field = (buf[p] << 16) | (buf[p + 1] << 8) | buf[p + 2]
                if fmt <= 1:
                    length = (buf[p + 3] << 16) | (buf[p + 4] << 8) | buf[p + 5]
                    type_id = buf[p + 6]
                    if fmt == 0:
                        stream_id = _LE32.unpack_from(buf, p + 7)[0]
            elif not stream.started:
                raise ChunkError("bad_chunk_header", f"type-3 header with no predecessor on chunk stream {csid}")
            p += hsize
            extended: int | None = None
            if ts_field == EXTENDED_TIMESTAMP:
                if p + 4 > end:
                    break
                extended = _U32.unpack_from(buf, p)[0]
                p += 4
            elif fmt == 3 and stream.extended is not None:
                # The extended field is repeated on type-3 chunks (RTMP 1.0 errata); a few old
                # encoders omit it. Take the 4 bytes only when they repeat the value we expect.
                if p + 4 > end:
                    break
                if _U32.unpack_from(buf, p)[0] == stream.extended:
                    extended = stream.extended
                    p += 4
            if length > self.max_message_size:
                raise ChunkError(
                    "message_too_large", f"message of {length} bytes exceeds limit {self.max_message_size}"
                )
            received = stream.received if continuing else 0
            take = min(self.chunk_size, length - received)
            if p + take > end:
                self._need = p + take - pos
                break
            # The whole chunk is available: commit the header.
            if not continuing:
                if fmt == 0:
                    stream.timestamp = extended if extended is not None else ts_field
                    stream.delta = stream.timestamp
                elif fmt <= 2:
                    stream.delta = extended if extended is not None else ts_field
                    stream.timestamp = (stream.timestamp + stream.delta) & 0xFFFFFFFF
                else:
                    stream.timestamp = (stream.timestamp + stream.delta) & 0xFFFFFFFF
                stream.length = length
                stream.type_id = type_id
                stream.stream_id = stream_id
                stream.started = True
                if fmt <= 2:
                    stream.extended = extended
            complete: Message | None = None
            if take == length:
                # Single-chunk message: one copy out of the receive buffer.
                complete = Message(csid, type_id, stream_id, stream.timestamp, buf[p : p + take])
            else:
                if not continuing:
                    # Grown as chunks arrive, never allocated from the declared length, so
                    # memory follows what the peer actually sent.
                    stream.partial = bytearray()
                    stream.received = 0
                partial = stream.partial
                assert partial is not None
                self._partial_bytes += take
                if self._partial_bytes > 2 * self.max_message_size:
                    raise ChunkError("buffer_limit", "too many bytes held in unfinished messages")
                partial += buf[p : p + take]
                stream.received = received + take
                if stream.received == length:
                    complete = Message(csid, type_id, stream.stream_id, stream.timestamp, partial)
                    self._partial_bytes -= length
                    stream.partial = None
                    stream.received = 0
            pos = p + take
            if complete is not None:
                out.append(complete)
                # These two change how the very next chunk is read, which may already be in
                # this buffer, so they take effect here rather than in the session.
                if type_id == SET_CHUNK_SIZE:
                    if length < 4:
                        raise ChunkError("bad_control_message", "Set Chunk Size shorter than 4 bytes")
                    self.set_chunk_size(_U32.unpack_from(complete.payload, 0)[0])
                elif type_id == ABORT and length >= 4:
                    self.abort(_U32.unpack_from(complete.payload, 0)[0])
        return pos


def _basic_header(fmt: int, csid: int) -> bytes:
    if csid < 64:
        return bytes(((fmt << 6) | csid,))
    if csid < 320:
        return bytes((fmt << 6, csid - 64))
    rest = csid - 64
    return bytes(((fmt << 6) | 1, rest & 0xFF, rest >> 8))


def encode_message(
    csid: int,
    type_id: int,
    stream_id: int,
    timestamp: int,
    payload: bytes | bytearray | memoryview,
    chunk_size: int,
) -> bytes:
    """Serialise one message: a type-0 chunk, then type-3 continuations.

    Always starting with a type-0 header (absolute timestamp) makes the bytes independent of
    what was sent before on the connection, so one encoding serves every player of a stream.
    """
    timestamp &= 0xFFFFFFFF
    length = len(payload)
    extended = timestamp >= EXTENDED_TIMESTAMP
    ts_field = EXTENDED_TIMESTAMP if extended else timestamp
    header = (
        _basic_header(0, csid)
        + ts_field.to_bytes(3, "big")
        + length.to_bytes(3, "big")
        + bytes((type_id,))
        + _LE32.pack(stream_id)
    )
    ext = _U32.pack(timestamp) if extended else b""
    if length <= chunk_size:
        return b"".join((header, ext, payload))
    continuation = _basic_header(3, csid) + ext
    view = memoryview(payload)
    parts: list[bytes | memoryview] = [header, ext, view[:chunk_size]]
    for start in range(chunk_size, length, chunk_size):
        parts.append(continuation)
        parts.append(view[start : start + chunk_size])
    return b"".join(parts)
