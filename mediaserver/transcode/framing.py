"""The framing between the server and a transcoding worker, over the worker's stdin and stdout.

Every message is one fixed header, then `length` bytes of payload:

    kind u8 | rung u8 | flags u8 | pts i64 ms | dts i64 ms | length u32

Server -> worker: SETUP (JSON: the rungs and encoder settings) once, then the source's CONFIG (avcC) and VIDEO
(AVCC access units) in decoding order. Worker -> server: per rung, CONFIG (its avcC) before its first VIDEO,
then VIDEO (AVCC access units); end of file on either side ends the session. Lengths are checked against a hard
limit before anything is read, so a confused peer fails the session, never the process.
"""

from __future__ import annotations

import asyncio
import enum
import json
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

HEADER = struct.Struct(">BBBqqI")
# Larger than any access unit a camera sends (a 4K keyframe is a few MB).
MAX_PAYLOAD = 32 * 1024 * 1024
FLAG_KEYFRAME = 0x01


class Kind(enum.IntEnum):
    SETUP = 1
    CONFIG = 2
    VIDEO = 3


class FramingError(ValueError):
    """A message that cannot be from a well-behaved peer."""


@dataclass(frozen=True, slots=True)
class Message:
    kind: Kind
    payload: bytes = b""
    rung: int = 0
    pts: int = 0
    dts: int = 0
    keyframe: bool = False

    def json(self) -> Any:
        return json.loads(self.payload)


def header(kind: Kind, length: int, rung: int = 0, pts: int = 0, dts: int = 0, keyframe: bool = False) -> bytes:
    """The header of a message whose payload (`length` bytes) the caller writes after it, uncopied."""
    if length > MAX_PAYLOAD:
        raise FramingError(f"payload of {length} bytes is over the {MAX_PAYLOAD} limit")
    return HEADER.pack(kind, rung, FLAG_KEYFRAME if keyframe else 0, pts, dts, length)


def encode(message: Message) -> bytes:
    return (
        header(message.kind, len(message.payload), message.rung, message.pts, message.dts, message.keyframe)
        + message.payload
    )


def setup(settings: dict[str, Any]) -> bytes:
    return encode(Message(Kind.SETUP, json.dumps(settings).encode()))


def parse_header(data: bytes) -> tuple[Kind, int, int, int, bool, int]:
    """(kind, rung, pts, dts, keyframe, length) of a header."""
    kind, rung, flags, pts, dts, length = HEADER.unpack(data)
    try:
        known = Kind(kind)
    except ValueError:
        raise FramingError(f"unknown message kind {kind}") from None
    if length > MAX_PAYLOAD:
        raise FramingError(f"payload of {length} bytes is over the {MAX_PAYLOAD} limit")
    return known, rung, pts, dts, bool(flags & FLAG_KEYFRAME), length


async def read_message(reader: asyncio.StreamReader) -> Message | None:
    """The next message, or None at a clean end of file (between messages)."""
    try:
        raw = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise FramingError("end of file inside a message header") from exc
        return None
    kind, rung, pts, dts, keyframe, length = parse_header(raw)
    try:
        payload = await reader.readexactly(length) if length else b""
    except asyncio.IncompleteReadError as exc:
        raise FramingError("end of file inside a message") from exc
    return Message(kind, payload, rung, pts, dts, keyframe)


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_message_sync(stream: BinaryIO) -> Message | None:
    """As `read_message`, from a blocking binary stream (the worker's stdin)."""
    raw = _read_exactly(stream, HEADER.size)
    if not raw:
        return None
    if len(raw) < HEADER.size:
        raise FramingError("end of file inside a message header")
    kind, rung, pts, dts, keyframe, length = parse_header(raw)
    payload = _read_exactly(stream, length)
    if len(payload) < length:
        raise FramingError("end of file inside a message")
    return Message(kind, payload, rung, pts, dts, keyframe)
