"""Memory per stream: each media byte held once, older segments out of memory, the same bytes served as before.

The segmenter is fed a real H.264/AAC clip made by ffmpeg (in process, faster than real time); the served bytes
are checked against a real server publishing with ffmpeg and read with plain HTTP and ffprobe.
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import tracemalloc
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pytest

from mediaserver.formats.flv import parse_audio, parse_video
from mediaserver.fragments import CmafFragment, CmafInit
from mediaserver.hls.segmenter import HlsSettings, HlsStream, SegmenterStats
from mediaserver.hls.spill import SpillWriter
from mediaserver.hub import Hub
from mediaserver.media import Packet, TrackKind
from tests.conftest import ServerProcess, ffmpeg_publish, wait_for_stream
from tests.e2e.test_hls import http_get, wait_playlist
from tests.hls.media import decoded_frames, make_clip

CLIP_SECONDS = 21
WINDOW = 4


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """21 s of 640x360 H.264 at 1.5 Mbit/s (1 s GOP) and AAC, as FLV: RTMP's message bodies."""
    return make_clip(tmp_path_factory.mktemp("clip") / "clip.flv", CLIP_SECONDS)


def flv_tags(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(tag type, timestamp, body) of every tag; each body its own bytes object, as the RTMP reader makes."""
    data = path.read_bytes()
    i = 13
    while i + 11 <= len(data):
        kind, size = data[i], int.from_bytes(data[i + 1 : i + 4], "big")
        timestamp = int.from_bytes(data[i + 4 : i + 7], "big") | data[i + 7] << 24
        yield kind, timestamp, data[i + 11 : i + 11 + size]
        i += 15 + size


class Capture:
    """A fragment listener, as the recorder is: the parts exactly as the segmenter built them."""

    def __init__(self) -> None:
        # The newest ones only (a window's worth and some), so that the test itself holds little media.
        self.fragments: deque[CmafFragment] = deque(maxlen=48)

    def on_init(self, app: str, name: str, init: CmafInit) -> None:
        pass

    def on_fragment(self, app: str, name: str, fragment: CmafFragment) -> None:
        self.fragments.append(fragment)

    def on_timeline_end(self, app: str, name: str) -> None:
        pass


class _Publisher:
    peer = "test"
    protocol = "test"

    def stop(self, reason: str) -> None:
        pass


async def run_clip(
    clip: Path, settings: HlsSettings, writer: SpillWriter | None
) -> tuple[HlsStream, Capture, int, list[Packet]]:
    """Push the clip through a hub stream into a segmenter; returns it, the fragments, tracemalloc's growth and
    the packets pushed."""
    packets: list[Packet] = []
    for kind, timestamp, body in flv_tags(clip):
        packet = parse_video(body, timestamp) if kind == 9 else parse_audio(body, timestamp) if kind == 8 else None
        if packet is not None:
            packets.append(packet)
    hub = Hub(join_min_video_frames=45)
    stream = hub.publish("live", "mem", _Publisher())
    capture = Capture()
    hls = HlsStream("live", "mem", settings, SegmenterStats(), [capture], writer)
    gc.collect()
    tracemalloc.start()
    try:
        started = tracemalloc.get_traced_memory()[0]
        for packet in packets:
            stream.push(packet)
            if packet.is_config and not stream.subscribers:
                hls.attach(stream.video, stream.audio)
                stream.subscribe(hls)
            if packet.keyframe and packet.kind is TrackKind.VIDEO:
                # Let finished writes hand their segments over, as the event loop does between packets.
                await asyncio.sleep(0.02 if writer is not None else 0)
        await asyncio.sleep(0.2)
        gc.collect()
        # The packets themselves were allocated before: what remains is what the segmenter keeps.
        grown = tracemalloc.get_traced_memory()[0] - started
    finally:
        tracemalloc.stop()
    return hls, capture, grown, packets


def concatenated_parts(capture: Capture, hls: HlsStream) -> dict[int, bytes]:
    """Each segment's bytes as the join of the fragments the listener got, by sequence number."""
    segments = list(hls.segments)
    total = sum(len(s.parts) for s in segments) + (len(hls.current.parts) if hls.current else 0)
    # Fragments come in order, one per part: the newest ones belong to the window.
    fragments = iter(list(capture.fragments)[-total:])
    return {s.msn: b"".join(next(fragments).data for _ in s.parts) for s in segments}


async def test_window_in_memory_holds_each_byte_once(clip: Path) -> None:
    """Without spilling, a segment is its parts and a part is its boxes followed by the packets' own payloads:
    the segmenter copies no media byte (tracemalloc agrees), so the open segment shares them with the GOP cache."""
    settings = HlsSettings(2.0, 0.333, WINDOW, spill=False)
    hls, capture, grown, packets = await run_clip(clip, settings, None)
    assert len(hls.segments) == WINDOW
    largest = max(s.size for s in hls.segments)
    payloads = {id(p.flv) for p in packets}
    for segment in hls.segments:
        chunks = segment.chunks()
        # The segment's bytes are the parts' own buffers, the very objects, not copies.
        flat = [chunk for part in segment.parts for chunk in part.chunks or ()]
        assert len(chunks) == len(flat) > 2 * len(segment.parts)
        assert all(a is b for a, b in zip(chunks, flat, strict=True))
        assert segment.size == sum(p.size for p in segment.parts) == sum(map(len, chunks))
        for part in segment.parts:
            assert part.chunks is not None
            # After the boxes, every chunk is a view of a packet's own buffer.
            samples = part.chunks[1:]
            assert all(isinstance(c, memoryview) and id(c.obj) in payloads for c in samples)
    held = hls.memory_bytes()
    media = sum(s.size for s in hls.segments) + (hls.current.size if hls.current else 0)
    assert held == media + sum(len(i) for i in hls.inits.values())
    assert held <= (WINDOW + 1) * largest
    # What Python really allocated for it: boxes and small objects, no media (the fragments the listener got are
    # one joined buffer each, and the test's own).
    ours = sum(len(f.data) for f in capture.fragments)
    assert 0 < grown - ours <= held * 0.1 + 256 * 1024, (held, grown, ours)


async def test_spilled_window_holds_only_the_open_segment(clip: Path, tmp_path: Path) -> None:
    writer = SpillWriter(str(tmp_path))
    try:
        settings = HlsSettings(2.0, 0.333, WINDOW, memory_segments=0)
        hls, capture, grown, _ = await run_clip(clip, settings, writer)
        assert len(hls.segments) == WINDOW and writer.errors == 0
        largest = max(s.size for s in hls.segments)
        assert all(s.spilled is not None and s.held == 0 for s in hls.segments)
        assert all(p.chunks is None for s in hls.segments for p in s.parts)
        assert hls.spilled_bytes() == sum(s.size for s in hls.segments)
        current = hls.current.size if hls.current else 0
        inits = sum(len(i) for i in hls.inits.values())
        assert hls.memory_bytes() == current + inits
        # Real allocations stay within the open segment and small objects, whatever the window (the listener's
        # fragments are the test's own).
        ours = sum(len(f.data) for f in capture.fragments)
        assert grown - ours <= largest + 256 * 1024, (grown, ours, largest)
        # What was written out is byte for byte the parts as they were built.
        expected = concatenated_parts(capture, hls)
        assert len(expected) == WINDOW
        for segment in hls.segments:
            data = b"".join(await hls.read(segment, 0, segment.size))
            assert data == expected[segment.msn]
            part = segment.parts[1]
            piece = b"".join(await hls.read(segment, part.offset, part.offset + part.size))
            assert piece == data[part.offset : part.offset + part.size]
        # Read back once, then kept while viewers fetch it: counted in the gauge, not read again.
        newest = hls.segments[-1]
        first = await hls.read(newest, 0, newest.size)
        again = await hls.read(newest, 0, newest.size)
        assert first[0] is again[0]
        assert current + inits + newest.size <= hls.memory_bytes() <= current + inits + 2 * largest
    finally:
        hls.close()
        await asyncio.sleep(0.1)
        writer.close()


async def test_spill_files_are_closed_and_failures_keep_segments_in_memory(clip: Path, tmp_path: Path) -> None:
    fds_before = len(os.listdir("/proc/self/fd"))
    writer = SpillWriter(str(tmp_path))
    hls, _, _, _ = await run_clip(clip, HlsSettings(2.0, 0.333, WINDOW, memory_segments=1), writer)
    # The newest complete segment stays in memory, the others are written out.
    assert [s.spilled is None for s in hls.segments] == [False] * (WINDOW - 1) + [True]
    # Files live as long as segments of theirs are in the window: at most two per stream.
    assert len(os.listdir("/proc/self/fd")) - fds_before <= 2 + 1
    hls.close()
    await asyncio.sleep(0.1)
    writer.close()
    assert len(os.listdir("/proc/self/fd")) <= fds_before
    assert not list(tmp_path.iterdir()), "spill files must be anonymous"

    # A directory that cannot be made (its parent is a file): every write fails.
    (tmp_path / "a-file").write_bytes(b"")
    broken = SpillWriter(str(tmp_path / "a-file" / "hls"))
    try:
        hls, capture, _, _ = await run_clip(clip, HlsSettings(2.0, 0.333, WINDOW, memory_segments=0), broken)
        assert broken.errors >= WINDOW
        assert all(s.spilled is None and s.held == s.size for s in hls.segments)
        expected = concatenated_parts(capture, hls)
        for segment in hls.segments:
            assert b"".join(await hls.read(segment, 0, segment.size)) == expected[segment.msn]
    finally:
        broken.close()


def _metric(metrics: str, name: str, stream: str) -> float:
    match = re.search(rf'^{name}\{{stream="{re.escape(stream)}"\}} (\S+)$', metrics, re.M)
    assert match is not None, name
    return float(match.group(1))


def test_served_segments_are_their_parts_and_decode(server: ServerProcess, tmp_path: Path) -> None:
    """Over HTTP: every segment of the window (written out or not) is byte for byte the join of its parts, ranges
    are slices of it, ffprobe reads a served segment, and the gauges say where the bytes are."""
    publisher = ffmpeg_publish(server.rtmp_url("live/mem1"), 25, size="640x360", rate=25, gop=25)
    try:
        wait_for_stream(server, "live", "mem1")
        wait_playlist(server, "/hls/live/mem1/index.m3u8", segments=4, timeout=30)
        # Parts are listed for the newest segments only: take a playlist and check those.
        status, _, body = http_get(server, "/hls/live/mem1/index.m3u8")
        assert status == 200
        lines = body.decode().splitlines()
        parts: dict[int, list[str]] = {}
        segments: list[int] = []
        for line in lines:
            found = re.search(r'URI="part-(\d+)-(\d+)\.m4s"', line)
            if line.startswith("#EXT-X-PART:") and found:
                parts.setdefault(int(found.group(1)), []).append(f"part-{found.group(1)}-{found.group(2)}.m4s")
            elif line.startswith("seg-"):
                segments.append(int(line[4:-4]))
        checked = [msn for msn in segments if msn in parts]
        assert len(segments) >= 4 and len(checked) >= 2
        for msn in checked:
            status, headers, segment = http_get(server, f"/hls/live/mem1/seg-{msn}.m4s")
            assert status == 200 and headers["Content-Length"] == str(len(segment))
            assert headers["Content-Type"] == "video/iso.segment" and "immutable" in headers["Cache-Control"]
            joined = b""
            for uri in parts[msn]:
                status, _, part = http_get(server, f"/hls/live/mem1/{uri}")
                assert status == 200
                joined += part
            assert joined == segment
            middle = len(segment) // 2
            status, headers, piece = http_get(
                server, f"/hls/live/mem1/seg-{msn}.m4s", {"Range": f"bytes={middle - 1000}-{middle + 999}"}
            )
            assert status == 206 and piece == segment[middle - 1000 : middle + 1000]
            assert headers["Content-Range"] == f"bytes {middle - 1000}-{middle + 999}/{len(segment)}"
            status, _, tail = http_get(server, f"/hls/live/mem1/seg-{msn}.m4s", {"Range": "bytes=-100"})
            assert status == 206 and tail == segment[-100:]
        oldest = segments[0]
        status, _, first = http_get(server, f"/hls/live/mem1/seg-{oldest}.m4s")
        assert status == 200
        status, _, init = http_get(server, "/hls/live/mem1/init-1.mp4")
        assert status == 200
        media = tmp_path / "served.mp4"
        media.write_bytes(init + first)
        video, audio = decoded_frames(media)
        # A 2 s segment: 25 fps video and 44.1 kHz AAC (43 frames a second).
        assert video[0] == "h264" and int(video[1]) >= 45
        assert audio[0] == "aac" and int(audio[1]) >= 80

        metrics = server.get_text("/metrics")
        spilled = _metric(metrics, "mediaserver_hls_spilled_bytes", "live/mem1")
        held = _metric(metrics, "mediaserver_hls_memory_bytes", "live/mem1")
        # Most of the window is written out; what is held is the open segment and the segments just read back.
        assert spilled >= 2 * len(first)
        assert 0 < held < spilled
        assert re.search(r"^mediaserver_hls_spill_errors_total 0\.0$", metrics, re.M)
    finally:
        publisher.terminate()
        publisher.wait(10)
