"""Exports checked sample by sample: real libx264 video and AAC audio recorded by the recorder into several
files, laid out as one progressive MP4 and read back with PyAV and ffprobe. Every media byte of the chosen
segments is in the output once, in order, with its keyframe flag; audio stays with video; a second take
joins where the first ended; a change of codec, a file cut short and a cold (S3) source are handled."""

from __future__ import annotations

import asyncio
import fractions
import itertools
import json
import subprocess
from pathlib import Path
from typing import Any

import av
import pytest

from mediaserver.formats.flv import parse_audio
from mediaserver.formats.fmp4_read import iter_boxes
from mediaserver.media import Packet, TrackKind
from mediaserver.recording import fileformat, layout
from mediaserver.recording.export import ExportError, Source, plan_export
from mediaserver.recording.storage import LocalTier, Tier
from mediaserver.recording.timeline import IndexedFile, Selection
from tests.recording.test_recorder_unit import rig
from tests.recording.test_tiers import bucket, cold_tier, moto_endpoint  # noqa: F401 (fixtures)
from tests.snapshot.media import FakePublisher, flv_packets, h264

FRAMES = 150  # 6 s at 25 fps, a keyframe every second
RATE = 48000


def _aac(seconds: float) -> list[Packet]:
    """AAC frames as RTMP carries them (sequence header first), 1024 samples each."""
    encoder = av.CodecContext.create("aac", "w")
    encoder.sample_rate, encoder.layout, encoder.format = RATE, "stereo", "fltp"
    encoder.time_base = fractions.Fraction(1, RATE)
    encoder.open()
    frames = []
    for index in range(int(seconds * RATE / 1024)):
        frame = av.AudioFrame(format="fltp", layout="stereo", samples=1024)
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.sample_rate, frame.pts = RATE, index * 1024
        frames += [bytes(p) for p in encoder.encode(frame)]
    frames += [bytes(p) for p in encoder.encode(None)]
    config = bytes(encoder.extradata or b"")
    bodies = [b"\xaf\x00" + config] + [b"\xaf\x01" + f for f in frames]
    packets = []
    for index, body in enumerate(bodies):
        packet = parse_audio(body, max(0, index - 1) * 1024 * 1000 // RATE)
        assert packet is not None
        packets.append(packet)
    return packets


def _interleaved(width: int = 320) -> list[Packet]:
    config, units = h264(width, 240, FRAMES, gop=25)
    video = flv_packets("h264", config, units)
    audio = _aac(FRAMES / 25)
    # Configuration first, then by decode time (as a publisher sends them).
    return sorted(video + audio, key=lambda p: (not p.is_config, p.dts, p.kind is TrackKind.AUDIO))


async def _record(root: Path, takes: list[list[Packet]]) -> list[Path]:
    hub, recorder, sink, _ = rig(root, file_duration=2.0)
    recorder.start()
    try:
        for packets in takes:
            stream = hub.publish("live", "cam", FakePublisher())
            await asyncio.sleep(0.01)  # the policy answers
            for packet in packets:
                stream.push(packet)
            hub.unpublish(stream)
        await asyncio.sleep(0.05)
    finally:
        await recorder.stop()
    return [root / f.path for f in sink.closed_list]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("recordings")
    take = _interleaved()
    return root, asyncio.run(_record(root, [take, take]))


def _sources(tier: Tier, root: Path, files: list[Path]) -> list[Source]:
    sources = []
    for number, path in enumerate(files):
        entries = tuple(fileformat.read_index(layout.index_path(path)))
        sources.append(Source(tier, str(path.relative_to(root)), Selection(IndexedFile(number, entries), entries)))
    return sources


async def _export(sources: list[Source], workdir: Path) -> tuple[bytes, float]:
    plan = await plan_export(sources, workdir)
    try:
        body = plan.header + b"".join([chunk async for chunk in plan.body()])
    finally:
        plan.close()
    assert len(body) == plan.size
    return body, plan.duration


def _packets(path: Path) -> dict[str, list[tuple[float, bool, bytes]]]:
    """(pts seconds, keyframe, payload) per stream type, in decode order."""
    found: dict[str, list[tuple[float, bool, bytes]]] = {"video": [], "audio": []}
    with av.open(str(path)) as container:
        for packet in container.demux():
            if packet.size and packet.pts is not None and packet.time_base is not None:
                found[packet.stream.type].append(
                    (float(packet.pts * packet.time_base), packet.is_keyframe, bytes(packet))
                )
    return found


def _ffprobe(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
        capture_output=True,
        check=True,
        timeout=60,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


async def test_every_sample_of_every_file_is_exported_once_in_order(
    recorded: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    root, files = recorded
    assert len(files) >= 4, files  # two takes of 6 s, in 2 s files
    body, duration = await _export(_sources(LocalTier("hot", root), root, files), tmp_path)
    out = tmp_path / "export.mp4"
    out.write_bytes(body)

    assert [kind for kind, _, _ in iter_boxes(body)][:3] == ["ftyp", "moov", "mdat"]
    exported = _packets(out)
    sources: dict[str, list[tuple[float, bool, bytes]]] = {"video": [], "audio": []}
    first_take_audio = 0
    for path in files:
        for kind, packets in _packets(path).items():
            sources[kind] += packets
        if len(sources["video"]) == FRAMES:
            first_take_audio = len(sources["audio"])
    assert first_take_audio, "the first take ends with a file"
    for kind in ("video", "audio"):
        assert [p[2] for p in exported[kind]] == [p[2] for p in sources[kind]], kind
        assert [p[1] for p in exported[kind]] == [p[1] for p in sources[kind]], kind
    video, audio = exported["video"], exported["audio"]
    assert video[0][1] and video[0][0] == pytest.approx(0, abs=0.001)
    assert all(b[0] > a[0] for a, b in itertools.pairwise(video)), "video times must increase"
    # Two takes of 6 s each: the second starts where the first ended (the gap between takes is closed up).
    assert duration == pytest.approx(12.0, abs=0.1)
    assert video[FRAMES][0] == pytest.approx(6.0, abs=0.05)
    # Audio stays with video at the start and at the join.
    assert audio[0][0] == pytest.approx(video[0][0], abs=0.03)
    assert audio[first_take_audio][0] == pytest.approx(video[FRAMES][0], abs=0.05)

    probe = _ffprobe(out)
    assert float(probe["format"]["duration"]) == pytest.approx(12.0, abs=0.1)
    assert {s["codec_name"] for s in probe["streams"]} == {"h264", "aac"}
    decoded = subprocess.run(
        ["ffmpeg", "-v", "error", "-xerror", "-i", str(out), "-f", "null", "-"], capture_output=True, timeout=120
    )
    assert decoded.returncode == 0 and not decoded.stderr, decoded.stderr


async def test_a_change_of_codec_settings_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "rec"
    files = await _record(root, [_interleaved(320)[:200], _interleaved(640)[:200]])
    with pytest.raises(ExportError) as caught:
        await _export(_sources(LocalTier("hot", root), root, files), tmp_path)
    assert caught.value.code == "codec_changed"


async def test_a_file_shorter_than_its_index_is_unavailable(recorded: tuple[Path, list[Path]], tmp_path: Path) -> None:
    root, files = recorded
    copy_root = tmp_path / "copy"
    relative = files[0].relative_to(root)
    (copy_root / relative).parent.mkdir(parents=True)
    data = files[0].read_bytes()
    (copy_root / relative).write_bytes(data[: len(data) // 2])
    layout.index_path(copy_root / relative).write_bytes(layout.index_path(files[0]).read_bytes())
    with pytest.raises(ExportError) as caught:
        await _export(_sources(LocalTier("hot", copy_root), copy_root, [copy_root / relative]), tmp_path)
    assert caught.value.code in ("recording_unavailable", "export_failed")


async def test_a_cold_recording_is_exported_from_s3(
    recorded: tuple[Path, list[Path]],
    tmp_path: Path,
    moto_endpoint: str,  # noqa: F811
    bucket: str,  # noqa: F811
) -> None:
    root, files = recorded
    cold = cold_tier(moto_endpoint, bucket)
    hot = LocalTier("hot", root)
    relative = str(files[1].relative_to(root))
    workdir = tmp_path / "cold"
    workdir.mkdir()
    await cold.put_file(files[1], relative, await hot.sha256(relative))
    try:
        from_cold, _ = await _export(_sources(cold, root, [files[1]]), workdir)
    finally:
        await cold.close()
    from_hot, _ = await _export(_sources(hot, root, [files[1]]), tmp_path)
    assert from_cold == from_hot
    # What was fetched from S3 went through the scratch folder (the API removes the folder afterwards).
    assert [p.name for p in workdir.iterdir()] == ["part-0.mp4"]
