"""Where recording files are kept: storage tiers behind one small interface.

`hot` and `warm` are folders on local disks; `cold` is S3-compatible object storage (see `s3.py` when it is
configured). Playback, export and download read through `Tier.read`, so they work the same from every tier.
Paths are always relative to the tier's root (`<yyyy>/<mm>/<dd>/<camera>/<start>.mp4`) and checked by
`layout.resolve`, so no request can leave a root.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import shutil
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

    async def delete(self, relative: str) -> None:
        """Remove a recording and its `.idx`; one already gone is no error (a delete may be retried)."""


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

    # ----- writing (tier moves, retention) ---------------------------------------------------------------------

    async def delete(self, relative: str) -> None:
        """Remove a recording and its `.idx`; a file already gone is not an error."""
        path = self.path(relative)

        def remove() -> None:
            for target in (path, layout.index_path(path)):
                target.unlink(missing_ok=True)

        try:
            await asyncio.to_thread(remove)
        except OSError as exc:
            raise TierError(f"{self.name}: cannot delete: {exc.strerror}") from exc

    async def put_file(self, local: Path, relative: str, checksum: str) -> None:
        """Copy a local file in under `relative`: written beside as a hidden `.part`, synced, then renamed, so the
        name never shows a partial file. (`checksum` is for tiers that keep it with the object; a file has none.)"""
        target = self.path(relative)
        try:
            await asyncio.to_thread(_copy_in, local, target)
        except OSError as exc:
            raise TierError(f"{self.name}: cannot write: {exc.strerror or exc}") from exc

    async def sha256(self, relative: str) -> str:
        """The SHA-256 of the stored file, read from the device rather than from what the page cache holds."""
        try:
            return await asyncio.to_thread(_digest_uncached, self.path(relative))
        except FileNotFoundError as exc:
            raise TierError(f"{self.name}: no such recording") from exc
        except OSError as exc:
            raise TierError(f"{self.name}: cannot read: {exc.strerror}") from exc


def _copy_in(local: Path, target: Path) -> None:
    if target.exists() and os.path.samefile(local, target):
        # Two tiers on one folder: a "move" would end by deleting the only copy.
        raise OSError(f"{target} is the source itself")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
    try:
        shutil.copyfile(local, temporary)
        with temporary.open("rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _digest_uncached(path: Path) -> str:
    with path.open("rb") as stream:
        # The pages are clean after fsync: dropping them makes the hash read what the disk holds.
        with contextlib.suppress(OSError, AttributeError):
            os.posix_fadvise(stream.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        return hashlib.file_digest(stream, "sha256").hexdigest()
