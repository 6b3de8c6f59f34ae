"""Export: the segments a time range covers, from one or more files, as one progressive MP4 streamed while
it is built.

Two passes, no re-encoding and no temporary copy of local files. The plan reads each file's init segment and
the `moof` of every chosen fragment (a few kilobytes per second of video) and lays out the output with
`formats.progressive`: its `ftyp` + `moov` (so it plays and seeks in any player) and the list of byte ranges
its `mdat` is made of. The body then copies those ranges from the files, a megabyte at a time with the next
read already under way, so the answer starts as soon as the plan is made and its length is exact.

Local tiers are read in place, through descriptors opened by the plan: a tier move that deletes the hot copy
in the meantime does not cut the export. Other tiers (S3) are first fetched, the file's head and chosen
segments only, into the export's scratch folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mediaserver.formats.fmp4_read import MAX_HEADER_BOX, Fmp4ReadError, parse_init, parse_moof
from mediaserver.formats.progressive import Chunk, Progressive, ProgressiveError, ProgressiveLayout, TracksChanged
from mediaserver.recording.storage import LocalTier, Tier, TierError
from mediaserver.recording.timeline import Selection, byte_runs

log = logging.getLogger("mediaserver.recording.export")

# One read while scanning: a box header and, nearly always, the whole moof after it.
SCAN_READ = 16 * 1024
# One read of media while streaming; neighbouring chunks closer than MERGE_GAP (the moof between two
# fragments' data) are read together.
BODY_READ = 1 << 20
MERGE_GAP = 64 * 1024
_BOX = struct.Struct(">I4s")


class ExportError(Exception):
    """An export that cannot be made: `code` is `codec_changed`, `recording_unavailable` or `export_failed`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Source:
    """One file's share of an export: where it is stored and which of its segments are wanted."""

    tier: Tier
    relative: str
    selection: Selection


@dataclass(frozen=True, slots=True)
class _Read:
    """One read of the body: [start, end) of source `source`, and the (offset, size) slices of it to send."""

    source: int
    start: int
    end: int
    slices: tuple[tuple[int, int], ...]


async def fetch(source: Source, dest: Path) -> None:
    """Write the file's head and chosen segments to `dest`: an fMP4 that plays on its own."""
    handle = await asyncio.to_thread(dest.open, "wb")
    try:
        for start, end in [(0, source.selection.head), *byte_runs(source.selection)]:
            got = 0
            async for chunk in source.tier.read(source.relative, start, end):
                got += len(chunk)
                await asyncio.to_thread(handle.write, chunk)
            if got != end - start:
                raise ExportError("recording_unavailable", "a recording is shorter than its index says")
    finally:
        await asyncio.to_thread(handle.close)


def _scan(fd: int, head: int, runs: list[tuple[int, int]], layout: ProgressiveLayout, source: int) -> None:
    """Blocking: read the file's init segment and the moof of every fragment in `runs` into the layout."""
    init = parse_init(os.pread(fd, head, 0))
    layout.begin(source, init)
    for start, end in runs:
        pos = start
        while pos < end:
            block = os.pread(fd, min(SCAN_READ, end - pos), pos)
            if len(block) < 8:
                raise ExportError("recording_unavailable", "a recording is shorter than its index says")
            size, kind = _BOX.unpack_from(block)
            if size == 1 and len(block) >= 16:
                size = int.from_bytes(block[8:16], "big")
            if size < 8 or pos + size > end:
                raise ExportError("export_failed", "a recording's fragments do not match its index")
            if kind == b"moof":
                if size > MAX_HEADER_BOX:
                    raise ExportError("export_failed", "a recording holds an oversized moof")
                if size > len(block):
                    block = os.pread(fd, size, pos)
                moof_runs = parse_moof(memoryview(block)[:size], pos, init)
                for run in moof_runs:
                    if run.offset < pos + size or run.offset + run.size > end:
                        raise ExportError("export_failed", "a fragment's samples lie outside its segment")
                layout.add(moof_runs)
            pos += size


def _reads(chunks: Sequence[Chunk]) -> list[_Read]:
    """The chunks grouped into reads of about BODY_READ bytes."""
    reads: list[_Read] = []
    group: list[Chunk] = []

    def flush() -> None:
        if group:
            start = group[0].offset
            reads.append(
                _Read(
                    group[0].source,
                    start,
                    group[-1].offset + group[-1].size,
                    tuple((c.offset - start, c.size) for c in group),
                )
            )
            group.clear()

    for chunk in chunks:
        if group:
            last = group[-1]
            joined = chunk.offset + chunk.size - group[0].offset
            if (
                chunk.source != last.source
                or not 0 <= chunk.offset - (last.offset + last.size) <= MERGE_GAP
                or joined > BODY_READ
            ):
                flush()
        group.append(chunk)
    flush()
    return reads


def _read(fd: int, read: _Read) -> bytes:
    block = os.pread(fd, read.end - read.start, read.start)
    if len(block) != read.end - read.start:
        raise ExportError("recording_unavailable", "a recording got shorter during the export")
    if len(read.slices) == 1 and read.slices[0] == (0, len(block)):
        return block
    view = memoryview(block)
    return b"".join(view[offset : offset + size] for offset, size in read.slices)


class ExportPlan:
    """An export laid out and ready to stream: `size` bytes, `header` first, then `body()`."""

    def __init__(self, layout: Progressive, fds: list[int], sources: int) -> None:
        self.layout = layout
        self._fds = fds
        self._reads = _reads(layout.chunks)
        self.files = sources

    @property
    def size(self) -> int:
        return self.layout.size

    @property
    def duration(self) -> float:
        return self.layout.duration

    @property
    def header(self) -> bytes:
        return self.layout.header

    async def body(self) -> AsyncIterator[bytes]:
        """The mdat's content, about a megabyte at a time; the next read runs while this one is sent."""
        if not self._reads:
            return
        pending = asyncio.ensure_future(asyncio.to_thread(_read, self._fds[self._reads[0].source], self._reads[0]))
        try:
            for index in range(len(self._reads)):
                data = await pending
                if index + 1 < len(self._reads):
                    following = self._reads[index + 1]
                    pending = asyncio.ensure_future(asyncio.to_thread(_read, self._fds[following.source], following))
                yield data
        finally:
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending

    def close(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []


def _open(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


async def plan_export(sources: Sequence[Source], workdir: Path) -> ExportPlan:
    """Lay out the export of `sources` (in time order); files not on a local disk are fetched into `workdir`."""
    layout = ProgressiveLayout()
    fds: list[int] = []
    try:
        for number, source in enumerate(sources):
            runs = byte_runs(source.selection)
            if isinstance(source.tier, LocalTier):
                try:
                    fd = await asyncio.to_thread(_open, source.tier.path(source.relative))
                except FileNotFoundError as exc:
                    raise TierError(f"{source.tier.name}: no such recording") from exc
            else:
                spool = workdir / f"part-{number}.mp4"
                await fetch(source, spool)
                fd = await asyncio.to_thread(_open, spool)
                # The spool holds the head, then the chosen segments back to back.
                spooled = sum(end - start for start, end in runs)
                runs = [(source.selection.head, source.selection.head + spooled)]
            fds.append(fd)
            await asyncio.to_thread(_scan, fd, source.selection.head, runs, layout, number)
        laid_out = layout.finish()
    except TracksChanged as exc:
        _close_all(fds)
        raise ExportError("codec_changed", str(exc)) from exc
    except (ProgressiveError, Fmp4ReadError) as exc:
        _close_all(fds)
        raise ExportError("export_failed", f"the recordings cannot be exported: {exc}") from exc
    except (TierError, ExportError):
        _close_all(fds)
        raise
    except OSError as exc:
        _close_all(fds)
        raise ExportError("recording_unavailable", "a recording in the range cannot be read") from exc
    except BaseException:
        _close_all(fds)
        raise
    log.info(
        "event=recording_export_planned files=%d seconds=%.1f bytes=%d samples=%d",
        len(sources),
        laid_out.duration,
        laid_out.size,
        laid_out.samples,
    )
    return ExportPlan(laid_out, fds, len(sources))


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
