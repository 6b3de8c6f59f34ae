"""Where recording files are kept: storage tiers behind one small interface.

`hot` and `warm` are folders on local disks; `cold` is S3-compatible object storage (see `s3.py` when it is
configured). Playback, export and download read through `Tier.read`, so they work the same from every tier.
Paths are always relative to the tier's root (`<yyyy>/<mm>/<dd>/<camera>/<start>.mp4`) and checked by
`layout.resolve`, so no request can leave a root.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from mediaserver.recording import layout

READ_CHUNK = 256 * 1024


class TierError(OSError):
    """A tier that cannot be read or written right now (a missing file, an unreachable S3)."""


class Tier(Protocol):
    name: str

    async def size(self, relative: str) -> int:
        """The stored size in bytes; TierError when the object is missing."""

    def read(self, relative: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes [start, end) of a stored file, in chunks."""

    async def read_all(self, relative: str) -> bytes:
        """A small object whole (the `.idx` beside a recording)."""


class LocalTier:
    """A folder on a local disk; blocking file calls run in threads."""

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = root

    def path(self, relative: str) -> Path:
        return layout.resolve(self.root, relative)

    async def size(self, relative: str) -> int:
        try:
            return (await asyncio.to_thread(os.stat, self.path(relative))).st_size
        except FileNotFoundError as exc:
            raise TierError(f"{self.name}: no such recording") from exc

    async def read(self, relative: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        path = self.path(relative)
        try:
            stream = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError as exc:
            raise TierError(f"{self.name}: no such recording") from exc
        try:
            await asyncio.to_thread(stream.seek, start)
            remaining = None if end is None else max(end - start, 0)
            while remaining is None or remaining > 0:
                want = READ_CHUNK if remaining is None else min(READ_CHUNK, remaining)
                chunk = await asyncio.to_thread(stream.read, want)
                if not chunk:
                    return
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        finally:
            await asyncio.to_thread(stream.close)

    async def read_all(self, relative: str) -> bytes:
        try:
            return await asyncio.to_thread(self.path(relative).read_bytes)
        except FileNotFoundError as exc:
            raise TierError(f"{self.name}: no such object") from exc
