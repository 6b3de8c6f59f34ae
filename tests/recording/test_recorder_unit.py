"""The recorder in process: real libx264 frames through the hub and the LL-HLS segmenter into files, the index
beside each file, repair of a torn file, the overflow gap, and the checks on paths."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import av
import pytest
from prometheus_client import CollectorRegistry

from mediaserver.hls.segmenter import HlsSettings
from mediaserver.hls.service import HlsService
from mediaserver.hub import Hub
from mediaserver.media import Packet
from mediaserver.recording import fileformat, layout, repair
from mediaserver.recording.recorder import PatternPolicy, Recorder, RecordingFile
from tests.snapshot.media import FakePublisher, flv_packets, h264

FRAMES = 150  # 6 s at 25 fps, a keyframe every second


class Sink:
    """What the recorder tells the index, kept for the assertions."""

    def __init__(self) -> None:
        self.opened_files: list[RecordingFile] = []
        self.closed_list: list[RecordingFile] = []
        self.alerts: list[str] = []

    def opened(self, file: RecordingFile) -> None:
        self.opened_files.append(file)

    def progressed(self, file: RecordingFile) -> None:
        pass

    def closed(self, file: RecordingFile) -> None:
        self.closed_list.append(file)

    def alert(self, app: str, name: str, reason: str, detail: str) -> None:
        self.alerts.append(reason)


@pytest.fixture(scope="module")
def packets() -> list[Packet]:
    config, units = h264(320, 240, FRAMES, gop=25)
    return flv_packets("h264", config, units)


def rig(root: Path, **settings: float) -> tuple[Hub, Recorder, Sink, CollectorRegistry]:
    hub = Hub()
    registry = CollectorRegistry()
    hls = HlsService(hub, HlsSettings(segment_duration=1.0), registry, 1.0)
    sink = Sink()
    recorder = Recorder(root, PatternPolicy(["live/*"]), sink, registry, **settings)  # type: ignore[arg-type]
    hls.fragment_listeners.append(recorder)
    hub.listen(recorder.on_hub_event)
    return hub, recorder, sink, registry


async def record(hub: Hub, packets: list[Packet], name: str = "cam") -> None:
    stream = hub.publish("live", name, FakePublisher())
    await asyncio.sleep(0.01)  # the policy answers
    for packet in packets:
        stream.push(packet)
    hub.unpublish(stream)


def frames_in(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for packet in container.demux(video=0) if packet.size)


async def test_files_roll_over_and_the_index_matches_the_file(tmp_path: Path, packets: list[Packet]) -> None:
    hub, recorder, sink, registry = rig(tmp_path, file_duration=2.0)
    recorder.start()
    await record(hub, packets)
    await recorder.stop()
    await asyncio.sleep(0)
    files = sorted(tmp_path.glob("*/*/*/cam/*.mp4"))
    assert len(files) == 3 and len(sink.closed_list) == 3
    assert sum(frames_in(f) for f in files) == FRAMES
    for path, closed in zip(files, sorted(sink.closed_list, key=lambda f: f.path), strict=True):
        entries = fileformat.read_index(layout.index_path(path))
        header = fileformat.read_header(path)
        assert header["name"] == "cam" and header["codecs"][0].startswith("avc1")
        # What the writer wrote line by line is what a repair would rebuild from the file's own boxes.
        rebuilt = fileformat.rebuild_index(path, path.stat().st_size, round(header["start"] * 1000), header["start_ms"])
        assert entries == rebuilt
        assert entries[-1].offset + entries[-1].size == path.stat().st_size == closed.size
        assert abs(closed.duration - 2.0) < 0.05
        assert closed.checksum == repair.sha256_of(path, path.stat().st_size)
    assert registry.get_sample_value("mediaserver_recording_open_files") == 0
    assert registry.get_sample_value("mediaserver_recording_written_bytes_total") == sum(
        f.stat().st_size for f in files
    )


async def test_a_torn_file_is_cut_after_its_last_whole_fragment(tmp_path: Path, packets: list[Packet]) -> None:
    hub, recorder, _, _ = rig(tmp_path, file_duration=3600.0)
    recorder.start()
    await record(hub, packets)
    await recorder.stop()
    [path] = list(tmp_path.glob("*/*/*/cam/*.mp4"))
    entries = fileformat.read_index(layout.index_path(path))
    torn = tmp_path / "torn"
    torn.mkdir()
    relative = path.relative_to(tmp_path).as_posix()
    copy = torn / relative
    copy.parent.mkdir(parents=True)
    # A crash in the middle of the last segment's bytes, with its index line not yet written.
    cut = entries[-1].offset + entries[-1].size // 2
    copy.write_bytes(path.read_bytes()[:cut])
    layout.index_path(copy).write_text("".join(e.line() for e in entries[:-1]) + "123 4")
    facts = repair.repair_file(torn, relative)
    assert entries[-2].offset + entries[-2].size <= facts.size < cut
    assert facts.truncated_bytes == cut - facts.size
    repaired = fileformat.read_index(layout.index_path(copy))
    # Whole segments are kept as they were; the torn one keeps its whole fragments.
    assert repaired[:-1] == entries[:-1]
    assert repaired[-1].offset == entries[-1].offset and repaired[-1].size < entries[-1].size
    assert repaired[-1].offset + repaired[-1].size == facts.size
    assert 0 < frames_in(copy) < FRAMES  # plays, up to its last whole fragment
    assert repair.repair_file(torn, relative).truncated_bytes == 0  # a second repair finds nothing to do


async def test_a_full_buffer_records_a_gap_and_leaves_the_live_stream_alone(
    tmp_path: Path, packets: list[Packet]
) -> None:
    hub, recorder, sink, registry = rig(tmp_path, max_buffer_bytes=1024 * 1024)
    recorder.writer.max_buffer_bytes = 20_000  # far less than the clip: the writer thread is not running yet
    stream = hub.publish("live", "cam", FakePublisher())
    await asyncio.sleep(0.01)
    for packet in packets:
        stream.push(packet)
    assert len(stream.gop) > 0 and stream.video_frames == FRAMES  # the stream itself lost nothing
    assert "recorder_overflow" in sink.alerts
    assert (registry.get_sample_value("mediaserver_recording_gaps_total", {"reason": "buffer_full"}) or 0) >= 1
    recorder.start()  # the disk comes back: what was queued is written, and the files read
    hub.unpublish(stream)
    await recorder.stop()
    files = sorted(tmp_path.glob("*/*/*/cam/*.mp4"))
    assert files and all(frames_in(f) > 0 for f in files)


@pytest.mark.parametrize(
    "bad", ["../etc/passwd", "/etc/passwd", "2026/../../x.mp4", "a//b.mp4", "a/./b.mp4", "a\\..\\b", "", "a\x00b"]
)
def test_paths_that_leave_the_root_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(layout.LayoutError):
        layout.resolve(tmp_path, bad)


def test_folder_names_are_safe() -> None:
    assert layout.stream_folder("live", "0123abcd") == "0123abcd"
    assert layout.stream_folder("other", "cam") == "other.cam"
    for hostile in ("..", "../x", "a/b", "x" * 80, ".hidden"):
        assert layout.stream_folder("live", hostile).startswith("s-")
    assert layout.start_stamp(1796155693.4789) == "20261201T200813.479Z"
    assert shutil.which("ffprobe") is not None
