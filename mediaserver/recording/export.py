"""Export: the segments a time range covers, from one or more files, as one progressive MP4 (`moov` first).

No re-encoding: each file's part (its init and header bytes, then the chosen segments) is fetched through its
tier into a temporary fMP4 that plays alone, then PyAV demuxes it and muxes the packets into the output, one
file after the other on one timeline (a gap between files is closed up, as the HLS playlist does). Fetching
runs on the event loop (tiers are async); muxing runs in one worker thread of its own, a file behind, so
neither waits long for the other and at most a few parts sit on the disk at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from mediaserver.recording.storage import Tier
from mediaserver.recording.timeline import Selection, byte_runs

log = logging.getLogger("mediaserver.recording.export")

# Parts fetched ahead of the muxer (each is one file's share of the range).
PARTS_AHEAD = 2
_FINISH = object()
_ABORT = object()


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


def _signature(stream: Any) -> tuple[Any, ...]:
    """What must not change between files for their packets to share one output stream."""
    ctx = stream.codec_context
    extradata = bytes(ctx.extradata or b"")
    if stream.type == "video":
        return ("video", ctx.name, ctx.width, ctx.height, extradata)
    return ("audio", ctx.name, ctx.sample_rate, ctx.channels, extradata)


class Remuxer:
    """Packets of consecutive fMP4 parts into one MP4; blocking, used by one thread at a time."""

    def __init__(self, out: Path) -> None:
        # +faststart: the muxer moves `moov` before `mdat` once it is written (it re-reads the file by name).
        self._out: Any = av.open(str(out), "w", format="mp4", options={"movflags": "+faststart"})
        self._streams: list[tuple[tuple[Any, ...], Any]] = []
        self._offset = Fraction(0)  # where the next part starts on the output timeline, seconds
        self._last_dts: dict[int, int] = {}
        self.packets = 0
        self._closed = False

    def add(self, part: Path) -> None:
        with av.open(str(part), "r", format="mp4") as source:
            inputs = [s for s in source.streams if s.type in ("video", "audio")]
            signatures = [_signature(s) for s in inputs]
            if not self._streams:
                self._streams = [
                    (sig, self._out.add_stream_from_template(s)) for sig, s in zip(signatures, inputs, strict=True)
                ]
            elif signatures != [sig for sig, _ in self._streams]:
                raise ExportError(
                    "codec_changed", "the stream's codecs or picture size change within the range: export it in parts"
                )
            outputs = {s.index: out for s, (_, out) in zip(inputs, self._streams, strict=True)}
            starts = [
                Fraction(s.start_time) * s.time_base
                for s in inputs
                if s.start_time is not None and s.time_base is not None
            ]
            base = min(starts, default=Fraction(0))
            end = self._offset
            for packet in source.demux(*inputs):
                if packet.dts is None or packet.time_base is None:
                    continue  # the demuxer's flush packets
                out = outputs[packet.stream.index]
                time_base = packet.time_base
                shift = round((self._offset - base) / time_base)
                dts = packet.dts + shift
                pts = (packet.pts if packet.pts is not None else packet.dts) + shift
                last = self._last_dts.get(out.index)
                if last is not None and dts <= last:
                    # Rounding at a join must not make decode times go backwards (the muxer refuses that).
                    pts += last + 1 - dts
                    dts = last + 1
                packet.dts, packet.pts = dts, pts
                self._last_dts[out.index] = dts
                end = max(end, Fraction(max(pts, dts) + (packet.duration or 0)) * time_base)
                packet.stream = out
                self._out.mux(packet)
                self.packets += 1
            self._offset = end

    def finish(self) -> float:
        """Write the `moov` (first) and close; the output's length in seconds."""
        if not self.packets:
            self.close()
            raise ExportError("export_failed", "the recordings held no packets")
        self._closed = True
        self._out.close()
        return float(self._offset)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                self._out.close()


def _mux_parts(parts: queue.SimpleQueue[object], out: Path) -> float:
    """The worker thread: mux parts as they arrive until told to finish (or abort)."""
    remuxer = Remuxer(out)
    try:
        while True:
            item = parts.get()
            if item is _FINISH:
                return remuxer.finish()
            if item is _ABORT:
                raise ExportError("export_failed", "the export was abandoned")
            assert isinstance(item, Path)
            try:
                remuxer.add(item)
            finally:
                item.unlink(missing_ok=True)
    except av.FFmpegError as exc:
        raise ExportError("export_failed", f"the recordings could not be remuxed: {exc}") from exc
    finally:
        remuxer.close()


async def export_mp4(sources: Sequence[Source], workdir: Path) -> tuple[Path, float]:
    """Make `workdir/export.mp4` from the sources, in order; returns it and its length in seconds."""
    out = workdir / "export.mp4"
    parts: queue.SimpleQueue[object] = queue.SimpleQueue()
    worker = asyncio.get_running_loop().run_in_executor(None, _mux_parts, parts, out)
    try:
        for number, source in enumerate(sources):
            while parts.qsize() >= PARTS_AHEAD and not worker.done():
                await asyncio.sleep(0.02)
            if worker.done():
                break  # it failed: its error is raised below
            part = workdir / f"part-{number}.mp4"
            await fetch(source, part)
            parts.put(part)
        parts.put(_FINISH)
        duration = await worker
    except BaseException:
        parts.put(_ABORT)
        # Let the thread let go of the files before the caller removes them.
        with contextlib.suppress(BaseException):
            await asyncio.shield(worker)
        raise
    log.info("event=recording_exported parts=%d seconds=%.1f", len(sources), duration)
    return out, duration
