"""Thumbnails along recordings with real things: libx264 pictures through the hub, the LL-HLS segmenter and the
recorder into JPEGs decoded back with PyAV; the folder layout against the recordings' own walks; and a real server
that ffmpeg publishes to, whose thumbnails are listed, fetched, and deleted with their recording."""

from __future__ import annotations

import asyncio
import fractions
import io
import itertools
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin

import av
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from mediaserver.config import ConfigError, load_config
from mediaserver.formats.flv import aac_frame, aac_sequence_header, parse_audio
from mediaserver.fragments import CmafFragment, CmafInit
from mediaserver.hls.segmenter import HlsSettings
from mediaserver.hls.service import HlsService
from mediaserver.hub import Hub
from mediaserver.media import Packet
from mediaserver.recording import fileformat, layout, repair, thumbnails
from mediaserver.recording.thumbnails import Thumbnailer, ThumbnailError
from tests.conftest import ServerProcess, ffmpeg_publish, start_server, wait_for_stream
from tests.recording.helpers import Answer, bad_ranges, call, create_camera, iso, parse_iso, wait_until
from tests.recording.test_recorder_unit import rig
from tests.snapshot.media import LEFT, RIGHT, FakePublisher, flv_packets, h264

FRAMES = 150  # 6 s at 25 fps, a keyframe every second


def decoded(jpeg: bytes) -> np.ndarray[Any, Any]:
    """A JPEG read back with PyAV, as RGB."""
    with av.open(io.BytesIO(jpeg), "r") as container:
        frame = next(container.decode(video=0))
    return frame.to_ndarray(format="rgb24")


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


# ----- real fragments from the project's own segmenter ----------------------------------------------------------


class Captured:
    """A FragmentListener that keeps what the segmenter hands the recorder."""

    def __init__(self) -> None:
        self.inits: list[CmafInit] = []
        self.fragments: list[CmafFragment] = []

    def on_init(self, app: str, name: str, init: CmafInit) -> None:
        self.inits.append(init)

    def on_fragment(self, app: str, name: str, fragment: CmafFragment) -> None:
        self.fragments.append(fragment)

    def on_timeline_end(self, app: str, name: str) -> None:
        pass


async def segmented(packets: list[Packet]) -> Captured:
    hub = Hub()
    hls = HlsService(hub, HlsSettings(1.0, 0.333, 6), CollectorRegistry(), 1.0)
    captured = Captured()
    hls.fragment_listeners.append(captured)
    stream = hub.publish("live", "cam", FakePublisher())
    for packet in packets:
        stream.push(packet)
    hub.unpublish(stream)
    await asyncio.sleep(0)
    return captured


@pytest.fixture(scope="module")
def video_packets() -> list[Packet]:
    config, units = h264(640, 360, FRAMES, gop=25)
    return flv_packets("h264", config, units)


def aac_packets(seconds: float) -> list[Packet]:
    """Real AAC from PyAV's encoder, in the FLV bodies RTMP carries."""
    encoder = av.CodecContext.create("aac", "w")
    assert isinstance(encoder, av.AudioCodecContext)
    encoder.sample_rate, encoder.layout, encoder.format = 44100, "stereo", "fltp"
    encoder.bit_rate = 64000
    encoder.time_base = fractions.Fraction(1, 44100)
    raw: list[bytes] = []
    for index in range(int(seconds * 44100 / 1024)):
        tone = np.sin(np.arange(index * 1024, (index + 1) * 1024) * 2 * np.pi * 440 / 44100).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
        frame.sample_rate, frame.pts = 44100, index * 1024
        raw += [bytes(p) for p in encoder.encode(frame)]
    raw += [bytes(p) for p in encoder.encode(None)]
    config = parse_audio(aac_sequence_header(bytes(encoder.extradata or b"")), 0)
    assert config is not None
    packets = [config]
    for index, data in enumerate(raw):
        packet = parse_audio(aac_frame(data), round(index * 1024 * 1000 / 44100))
        assert packet is not None
        packets.append(packet)
    return packets


async def test_a_keyframe_fragment_becomes_a_jpeg_of_the_configured_width(video_packets: list[Packet]) -> None:
    captured = await segmented(video_packets[:60])
    [init] = captured.inits
    first = next(f for f in captured.fragments if f.segment_start and f.independent)
    jpeg, width, height = thumbnails.render_thumbnail(init.data, first.data, 320)
    assert jpeg[:2] == b"\xff\xd8" and (width, height) == (320, 180)
    picture = decoded(jpeg)
    assert picture.shape == (180, 320, 3)
    # The two halves of the source picture, colours kept (away from the marker in the top-left corner).
    assert np.abs(picture[120, 60].astype(int) - LEFT).max() < 24
    assert np.abs(picture[120, 260].astype(int) - RIGHT).max() < 24
    # An odd width lands on an even one; a width larger than the picture does not enlarge it.
    assert thumbnails.render_thumbnail(init.data, first.data, 161)[1:] == (160, 90)
    assert thumbnails.render_thumbnail(init.data, first.data, 4000)[1:] == (640, 360)


async def test_audio_only_fragments_make_no_thumbnail() -> None:
    captured = await segmented(aac_packets(2.0))
    [init] = captured.inits
    assert init.width == 0 and init.codecs == ("mp4a.40.2",)
    with pytest.raises(ThumbnailError):
        thumbnails.render_thumbnail(init.data, captured.fragments[0].data, 320)


# ----- the recorder makes them ----------------------------------------------------------------------------------


async def record_paced(hub: Hub, recorder: Any, packets: list[Packet], name: str) -> None:
    """Publish as fast as the loop goes, but let each thumbnail finish before the next keyframe, so that none is
    skipped because the worker was still busy (that case has a test of its own)."""
    stream = hub.publish("live", name, FakePublisher())
    await asyncio.sleep(0.01)  # the policy answers
    for packet in packets:
        if packet.keyframe and not packet.is_config:
            await recorder.thumbnails.idle()
        stream.push(packet)
    hub.unpublish(stream)


def thumbnails_on_disk(root: Path) -> list[Path]:
    return sorted(root.glob("thumbnails/*/[0-9][0-9][0-9][0-9]/[0-9][0-9]/[0-9][0-9]/*.jpg"))


async def test_the_recorder_makes_one_every_interval_at_keyframes_on_the_index_clock(
    tmp_path: Path, video_packets: list[Packet]
) -> None:
    hub, recorder, sink, registry = rig(tmp_path, thumbnail_interval=2.0, thumbnail_width=160)
    recorder.start()
    await record_paced(hub, recorder, video_packets, "cam")
    await recorder.stop()
    [mp4] = sorted(tmp_path.glob("*/*/*/cam/*.mp4"))
    entries = fileformat.read_index(layout.index_path(mp4))
    made = thumbnails_on_disk(tmp_path)
    times = [int(p.stem) for p in made]
    # 6 s of video, a keyframe (and segment) a second, a thumbnail every 2 s: at 0, 2 and 4 s.
    assert times == [entries[i].wallclock_ms for i in (0, 2, 4)], (times, entries)
    assert times[0] == round(sink.closed_list[0].started_at * 1000)
    for path, ms in zip(made, times, strict=True):
        assert path.relative_to(tmp_path).as_posix() == thumbnails.relative_path("cam", ms)
        assert path.parent.as_posix().endswith(time.strftime("%Y/%m/%d", time.gmtime(ms // 1000)))
        assert decoded(path.read_bytes()).shape == (90, 160, 3)
    assert not [p for p in tmp_path.rglob("*.tmp")]  # written through a temporary file, renamed
    assert sample(registry, "mediaserver_recording_thumbnails_made_total") == 3
    assert sample(registry, "mediaserver_recording_thumbnail_seconds_count") == 3
    assert sample(registry, "mediaserver_recording_thumbnails_failed_total", stage="decode") == 0
    assert thumbnails.list_between(tmp_path, "cam", times[0], times[-1]) == times


async def test_audio_only_streams_and_a_zero_interval_get_none(tmp_path: Path, video_packets: list[Packet]) -> None:
    hub, recorder, _, registry = rig(tmp_path / "audio", thumbnail_interval=1.0)
    recorder.start()
    await record_paced(hub, recorder, aac_packets(3.0), "radio")
    await recorder.stop()
    assert list((tmp_path / "audio").glob("*/*/*/radio/*.mp4"))  # recorded, but no picture to make
    assert not (tmp_path / "audio" / thumbnails.FOLDER).exists()
    assert sample(registry, "mediaserver_recording_thumbnails_made_total") == 0
    hub, recorder, _, _ = rig(tmp_path / "off", thumbnail_interval=0.0)
    recorder.start()
    await record_paced(hub, recorder, video_packets, "cam")
    await recorder.stop()
    assert list((tmp_path / "off").glob("*/*/*/cam/*.mp4")) and not (tmp_path / "off" / thumbnails.FOLDER).exists()


async def test_a_busy_stream_or_worker_skips_rather_than_queues(tmp_path: Path, video_packets: list[Packet]) -> None:
    captured = await segmented(video_packets[:60])
    init, fragment = captured.inits[0], captured.fragments[0]
    registry = CollectorRegistry()
    maker = Thumbnailer(tmp_path, registry, interval=1.0, width=160, max_pending=2)
    base = 1_796_000_000_000
    assert maker.submit("live/a", "a", init.data, fragment.data, base)
    # Still being made (nothing yielded to the worker's answer yet): the same stream's next one is skipped.
    assert not maker.submit("live/a", "a", init.data, fragment.data, base + 1000)
    assert maker.submit("live/b", "b", init.data, fragment.data, base)
    # Two in hand: the worker is busy, a third stream waits for its next keyframe.
    assert not maker.submit("live/c", "c", init.data, fragment.data, base)
    assert sample(registry, "mediaserver_recording_thumbnails_skipped_total", reason="stream_busy") == 1
    assert sample(registry, "mediaserver_recording_thumbnails_skipped_total", reason="pool_busy") == 1
    await maker.idle()
    assert maker.submit("live/c", "c", init.data, fragment.data, base)
    await maker.stop()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in thumbnails_on_disk(tmp_path)) == sorted(
        thumbnails.relative_path(f, base) for f in "abc"
    )
    assert not maker.submit("live/d", "d", init.data, fragment.data, base)  # stopped
    assert maker.due(None, base) is False
    running = Thumbnailer(tmp_path, CollectorRegistry(), interval=2.0, width=160)
    assert running.due(None, base) and not running.due(base, base + 1999) and running.due(base, base + 2000)
    assert running.due(base, base - 5000)  # the wall clock was set back
    await running.stop()


async def test_failures_are_counted_and_logged(
    tmp_path: Path, video_packets: list[Packet], caplog: pytest.LogCaptureFixture
) -> None:
    captured = await segmented(video_packets[:60])
    init, fragment = captured.inits[0], captured.fragments[0]
    registry = CollectorRegistry()
    maker = Thumbnailer(tmp_path, registry, interval=1.0, width=160)
    caplog.set_level(logging.WARNING, "mediaserver.recording")
    assert maker.submit("live/a", "a", init.data, b"\x00\x00\x00\x10moofnot-a-moof", 1_796_000_000_000)
    await maker.idle()
    # A root the worker cannot write under (a file where its folder would be).
    (tmp_path / thumbnails.FOLDER).write_bytes(b"in the way")
    assert maker.submit("live/a", "a", init.data, fragment.data, 1_796_000_001_000)
    await maker.idle()
    await maker.stop()
    assert sample(registry, "mediaserver_recording_thumbnails_failed_total", stage="decode") == 1
    assert sample(registry, "mediaserver_recording_thumbnails_failed_total", stage="write") == 1
    assert sample(registry, "mediaserver_recording_thumbnails_made_total") == 0
    lines = [r.getMessage() for r in caplog.records if "event=thumbnail_failed" in r.getMessage()]
    assert len(lines) == 2 and "stage=decode camera=a" in lines[0] and "stage=write camera=a" in lines[1]


# ----- the folder: listing, deleting, and never taken for recordings --------------------------------------------


def _place(root: Path, folder: str, *times: int) -> None:
    for ms in times:
        thumbnails.write_atomic(thumbnails.path_of(root, folder, ms), b"\xff\xd8 not decoded here")


def test_listing_and_deleting_by_time_across_days(tmp_path: Path) -> None:
    midnight = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp() * 1000)
    times = [midnight - 120_000, midnight - 60_000, midnight, midnight + 60_000, midnight + 120_000]
    _place(tmp_path, "cam", *times)
    _place(tmp_path, "other", midnight)
    (tmp_path / "thumbnails/cam/2026/03/01/.123.jpg.abcd.tmp").write_bytes(b"half")  # a write cut short
    (tmp_path / "thumbnails/cam/2026/03/01/notes.txt").write_text("not ours")
    assert thumbnails.list_between(tmp_path, "cam", times[0], times[-1]) == times
    assert thumbnails.list_between(tmp_path, "cam", times[1], times[3]) == times[1:4]
    assert thumbnails.list_between(tmp_path, "cam", times[3], times[1]) == []
    assert thumbnails.list_between(tmp_path, "nobody", times[0], times[-1]) == []
    # A recording from 23:59 to 00:01 takes what starts within it; the next file's first thumbnail (at its end)
    # belongs to that file.
    assert thumbnails.delete_between(tmp_path, "cam", times[1], times[3]) == 2
    assert thumbnails.list_between(tmp_path, "cam", times[0], times[-1]) == [times[0], times[3], times[4]]
    assert thumbnails.list_between(tmp_path, "other", times[0], times[-1]) == [midnight]
    assert thumbnails.delete_between(tmp_path, "cam", times[0], times[-1] + 1) == 3
    # Folders left empty go (these days are long past); the camera's own folder stays.
    assert not (tmp_path / "thumbnails/cam/2026/02").exists()
    assert (tmp_path / "thumbnails/cam/2026/03/01/notes.txt").exists()


async def test_one_deletion_function_takes_a_recordings_half_open_range(tmp_path: Path) -> None:
    start = datetime(2026, 3, 1, 12, tzinfo=UTC)
    ms = round(start.timestamp() * 1000)
    _place(tmp_path, "cam", ms - 1, ms, ms + 2000, ms + 4000)
    assert await thumbnails.delete_recording_thumbnails(tmp_path, "cam", start, start + timedelta(seconds=4)) == 2
    assert thumbnails.list_between(tmp_path, "cam", 0, ms + 10_000) == [ms - 1, ms + 4000]
    # No end known (a row that never progressed): the thumbnail at its start.
    assert await thumbnails.delete_recording_thumbnails(tmp_path, "cam", start - timedelta(milliseconds=1), None) == 1
    # A camera id that is not a folder name deletes nothing (and raises nothing).
    assert await thumbnails.delete_recording_thumbnails(tmp_path, "../cam", start, None) == 0
    assert thumbnails.list_between(tmp_path, "cam", 0, ms + 10_000) == [ms + 4000]


@pytest.mark.parametrize("bad", ["..", "../x", "a/b", "", ".hidden", "x" * 80, "a\x00b"])
def test_paths_never_leave_the_thumbnail_folder(tmp_path: Path, bad: str) -> None:
    with pytest.raises(layout.LayoutError):
        thumbnails.path_of(tmp_path, bad, 1)
    with pytest.raises(layout.LayoutError):
        thumbnails.list_between(tmp_path, bad, 0, 1)
    with pytest.raises(layout.LayoutError):
        thumbnails.path_of(tmp_path, "cam", -1)


def test_a_link_out_of_the_folder_is_not_followed(tmp_path: Path) -> None:
    ms = 1_796_000_000_000
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / f"{ms}.jpg").write_bytes(b"secret")
    root = tmp_path / "root"
    link = root / thumbnails.relative_path("cam", ms)
    link.parent.mkdir(parents=True)
    os.symlink(outside / f"{ms}.jpg", link)
    os.symlink(outside, root / "thumbnails/evil")
    assert thumbnails.list_between(root, "cam", 0, ms + 1) == []
    with pytest.raises(layout.LayoutError):
        thumbnails.path_of(root, "cam", ms)
    with pytest.raises(layout.LayoutError):
        thumbnails.list_between(root, "evil", 0, ms + 1)


async def test_a_camera_named_thumbnails_and_the_folder_are_apart(tmp_path: Path, video_packets: list[Packet]) -> None:
    hub, recorder, _, _ = rig(tmp_path, thumbnail_interval=2.0, thumbnail_width=160)
    recorder.start()
    await record_paced(hub, recorder, video_packets[:80], "thumbnails")
    await recorder.stop()
    found = list(repair.recordings_under(tmp_path))
    # The recording of the camera named "thumbnails" is under its day; nothing of the thumbnail folder is listed.
    assert len(found) == 1 and found[0].split("/")[3] == "thumbnails" and found[0].endswith(".mp4")
    assert len(thumbnails_on_disk(tmp_path)) == 2
    assert all(p.relative_to(tmp_path).parts[:2] == ("thumbnails", "thumbnails") for p in thumbnails_on_disk(tmp_path))
    assert repair.repair_file(tmp_path, found[0]).segments >= 3


# ----- settings -------------------------------------------------------------------------------------------------


def test_settings_defaults_environment_and_limits() -> None:
    config = load_config(environ={})
    assert (config.recording.thumbnail_interval, config.recording.thumbnail_width) == (60.0, 320)
    env = {"MEDIASERVER_RECORDING_THUMBNAIL_INTERVAL": "2.5", "MEDIASERVER_RECORDING_THUMBNAIL_WIDTH": "480"}
    config = load_config(environ=env)
    assert (config.recording.thumbnail_interval, config.recording.thumbnail_width) == (2.5, 480)
    assert load_config(environ={"MEDIASERVER_RECORDING_THUMBNAIL_INTERVAL": "0"}).recording.thumbnail_interval == 0
    for key, value in (("INTERVAL", "-1"), ("WIDTH", "8"), ("WIDTH", "10000"), ("WIDTH", "wide")):
        with pytest.raises(ConfigError):
            load_config(environ={f"MEDIASERVER_RECORDING_THUMBNAIL_{key}": value})


# ----- against a real server ------------------------------------------------------------------------------------

INTERVAL = 2.0
WIDTH = 256
ENV = {
    "MEDIASERVER_AUTH_PUBLISH_MODE": "database",
    "MEDIASERVER_RECORDING_FILE_DURATION": "4",
    "MEDIASERVER_HLS_SEGMENT_DURATION": "1",
    "MEDIASERVER_RECORDING_THUMBNAIL_INTERVAL": str(INTERVAL),
    "MEDIASERVER_RECORDING_THUMBNAIL_WIDTH": str(WIDTH),
}


@dataclass
class Published:
    server: ServerProcess
    token: str
    camera: dict[str, Any]

    def get(self, path: str) -> Answer:
        return call(self.server, "GET", path, self.token)

    def rows(self) -> list[dict[str, Any]]:
        answer = self.get(f"/api/v1/recordings?camera_id={self.camera['id']}&limit=500")
        assert answer.status == 200, answer.body
        return list(answer.json()["items"])

    def listed(self, start: float, end: float) -> tuple[str, list[dict[str, Any]]]:
        path = f"/api/v1/cameras/{self.camera['id']}/thumbnails?{urlencode({'start': start, 'end': end})}"
        answer = self.get(path)
        assert answer.status == 200 and answer.headers["Content-Type"].startswith("application/json"), answer.body
        return path, list(answer.json())

    @property
    def folder(self) -> Path:
        return self.server.data_dir / "recordings" / "thumbnails" / self.camera["id"]


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Published]:
    server = start_server(tmp_path_factory.mktemp("thumbnails-api"), ENV)
    publisher: subprocess.Popen[bytes] | None = None
    try:
        token = server.admin_token()
        ctx = Published(server, token, create_camera(server, token, "Yard", True))
        publisher = ffmpeg_publish(server.rtmp_url(f"live/{ctx.camera['stream_key']}"), 10, gop=25, rate=25)
        wait_for_stream(server, "live", ctx.camera["id"])
        assert publisher.wait(timeout=60) == 0
        wait_until("closed recordings", lambda: (rows := ctx.rows()) and all(r["complete"] for r in rows))
        yield ctx
        assert "Traceback" not in server.log(), server.log()[-5000:]
    finally:
        if publisher is not None:
            publisher.kill()
            publisher.wait()
        server.stop()


def test_thumbnails_of_a_real_recording_through_the_api_and_deleted_with_it(published: Published) -> None:
    rows = published.rows()
    assert len(rows) >= 2
    first, last = parse_iso(rows[0]["started_at"]).timestamp(), parse_iso(rows[-1]["ended_at"]).timestamp()
    path, items = published.listed(first - 5, last + 5)
    times = [item["time"] for item in items]
    # 10 s at one keyframe a second and one thumbnail every 2 s.
    assert 4 <= len(items) <= 6 and times == sorted(times), items
    assert all(b - a >= INTERVAL - 0.001 for a, b in itertools.pairwise(times)), times
    assert abs(times[0] - first) < 0.002  # the first keyframe recorded
    on_disk = sorted(int(p.stem) for p in published.folder.glob("[0-9]*/[0-9]*/[0-9]*/*.jpg"))
    assert on_disk == [round(t * 1000) for t in times]
    spans = [(parse_iso(r["started_at"]).timestamp(), parse_iso(r["ended_at"]).timestamp()) for r in rows]
    for moment in times:
        assert any(start - 0.001 <= moment < end for start, end in spans), (moment, spans)
    base = published.server.http_url(path)
    pictures = []
    for item in items:
        assert item["url"].startswith("thumbnail.jpg?at=")  # relative to the list's URL
        request_path = urljoin(base, item["url"]).removeprefix(published.server.http_url(""))
        answer = published.get(request_path)
        assert answer.status == 200 and answer.headers["Content-Type"] == "image/jpeg", answer.body
        assert answer.headers["Cache-Control"].startswith("private, max-age=")
        picture = decoded(answer.body)
        assert picture.shape == (WIDTH * 360 // 640, WIDTH, 3)
        pictures.append(answer.body)
    assert len(set(pictures)) == len(pictures)  # testsrc moves: each one is its own picture
    camera = published.camera["id"]
    # The nearest at or before a time, within two intervals.
    halfway = published.get(f"/api/v1/cameras/{camera}/thumbnail.jpg?at={times[1] + 1.5:.3f}")
    assert halfway.status == 200 and halfway.body == pictures[1]
    assert int(halfway.headers["Cache-Control"].rsplit("=", 1)[1]) < 60
    at_iso = urlencode({"at": iso(datetime.fromtimestamp(times[2], UTC))})
    iso_at = published.get(f"/api/v1/cameras/{camera}/thumbnail.jpg?{at_iso}")
    assert iso_at.status == 200 and iso_at.body == pictures[2]
    for moment in (times[0] - 0.5, times[-1] + 2 * INTERVAL + 1):
        answer = published.get(f"/api/v1/cameras/{camera}/thumbnail.jpg?at={moment:.3f}")
        assert answer.status == 404 and answer.json()["error"]["code"] == "thumbnail_not_found", moment
    metrics = published.server.get_text("/metrics")
    made = [line for line in metrics.splitlines() if line.startswith("mediaserver_recording_thumbnails_made_total")]
    assert made and float(made[0].split()[-1]) == len(items)

    # Deleting the first recording takes its thumbnails, and only those.
    doomed = rows[0]
    start, end = parse_iso(doomed["started_at"]).timestamp(), parse_iso(doomed["ended_at"]).timestamp()
    inside = [t for t in times if start <= t < end]
    assert inside and len(inside) < len(times)
    assert call(published.server, "DELETE", f"/api/v1/recordings/{doomed['id']}", published.token).status == 204
    _, after = published.listed(first - 5, last + 5)
    assert [item["time"] for item in after] == [t for t in times if t not in inside]
    assert sorted(int(p.stem) for p in published.folder.glob("*/*/*/*.jpg")) == [
        round(t * 1000) for t in times if t not in inside
    ]
    gone = published.get(f"/api/v1/cameras/{camera}/thumbnail.jpg?at={inside[0]:.3f}")
    assert gone.status == 404


def test_bad_ranges_times_and_cameras(published: Published) -> None:
    now = datetime.now(UTC)
    camera = published.camera["id"]
    cases = bad_ranges(now)
    for code, params in cases.items():
        answer = published.get(f"/api/v1/cameras/{camera}/thumbnails?{urlencode(params)}")
        assert answer.status == 400 and answer.headers["Content-Type"].startswith("application/json"), code
        assert answer.json()["error"]["code"] == code and answer.json()["error"]["message"], code
    for at, code in (
        ("", "invalid_time"),
        ("soon", "invalid_time"),
        ("1e12", "invalid_time"),
        ("../../etc/passwd", "invalid_time"),
        ("946684799", "time_out_of_range"),
        (str(time.time() + 3 * 86400), "time_out_of_range"),
    ):
        answer = published.get(f"/api/v1/cameras/{camera}/thumbnail.jpg?{urlencode({'at': at})}")
        assert answer.status == 400 and answer.json()["error"]["code"] == code, (at, answer.body)
    answer = published.get(f"/api/v1/cameras/{camera}/thumbnail.jpg")
    assert answer.status == 400 and answer.json()["error"]["code"] == "time_required"
    span = urlencode({"start": iso(now - timedelta(minutes=5)), "end": iso(now)})
    for bad in ("0" * 32, "..%2F..%2Fetc", "thumbnails"):
        for route in (f"thumbnails?{span}", f"thumbnail.jpg?at={now.timestamp():.3f}"):
            answer = published.get(f"/api/v1/cameras/{bad}/{route}")
            assert answer.status == 404 and answer.json()["error"]["code"] == "camera_not_found", (bad, route)
    # Nothing was recorded an hour ago: an empty list, and no picture.
    empty = urlencode({"start": iso(now - timedelta(hours=2)), "end": iso(now - timedelta(hours=1))})
    answer = published.get(f"/api/v1/cameras/{camera}/thumbnails?{empty}")
    assert answer.status == 200 and answer.json() == []
    # Without a token: 401.
    assert call(published.server, "GET", f"/api/v1/cameras/{camera}/thumbnails?{empty}").status == 401


def test_long_lists_are_thinned_evenly() -> None:
    times = list(range(0, 86_400_000, 1000))  # a day at one a second
    kept = thumbnails.thinned(times, 2000)
    assert len(kept) <= 2000 and kept[0] == 0
    assert len({b - a for a, b in itertools.pairwise(kept)}) == 1  # evenly spaced
    assert thumbnails.thinned(times[:10], 2000) == times[:10]
