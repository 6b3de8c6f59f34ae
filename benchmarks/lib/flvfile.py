"""Read an FLV file into a list of tags (type, timestamp, body).

The whole file is read once; headers are unpacked with `struct` over a memoryview, and
each body is copied out exactly once.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

TAG_AUDIO = 8
TAG_VIDEO = 9
TAG_SCRIPT = 18

_FILE_HEADER = struct.Struct(">3sBBI")  # "FLV", version, flags, header size
_TAG_HEADER = struct.Struct(">II")  # type(8) + size(24), timestamp(24) + extension(8); stream id follows
_TAG_HEADER_SIZE = 11
_PREVIOUS_TAG_SIZE = 4


class FlvFileError(ValueError):
    """Not an FLV file, or a tag runs past the end of the file."""


@dataclass(frozen=True, slots=True)
class FlvTag:
    type: int  # 8 audio, 9 video, 18 script data
    timestamp: int  # milliseconds
    body: bytes


def parse_flv(data: bytes | bytearray | memoryview) -> list[FlvTag]:
    view = memoryview(data)
    if len(view) < _FILE_HEADER.size + _PREVIOUS_TAG_SIZE:
        raise FlvFileError("file too short for an FLV header")
    signature, _version, _flags, header_size = _FILE_HEADER.unpack_from(view, 0)
    if signature != b"FLV" or header_size < _FILE_HEADER.size:
        raise FlvFileError("not an FLV file")
    tags: list[FlvTag] = []
    pos = header_size + _PREVIOUS_TAG_SIZE
    end = len(view)
    unpack = _TAG_HEADER.unpack_from
    while pos + _TAG_HEADER_SIZE <= end:
        word0, word1 = unpack(view, pos)
        tag_type = (word0 >> 24) & 0x1F  # the top bits are reserved / the filter flag
        size = word0 & 0xFFFFFF
        timestamp = (word1 >> 8) | ((word1 & 0xFF) << 24)
        start = pos + _TAG_HEADER_SIZE
        stop = start + size
        if stop > end:
            raise FlvFileError(f"tag at offset {pos} runs past the end of the file")
        tags.append(FlvTag(tag_type, timestamp, bytes(view[start:stop])))
        pos = stop + _PREVIOUS_TAG_SIZE
    if pos < end and end - pos < _TAG_HEADER_SIZE:
        raise FlvFileError(f"{end - pos} stray bytes after the last tag")
    return tags


def read_flv(path: str | Path) -> list[FlvTag]:
    return parse_flv(Path(path).read_bytes())
