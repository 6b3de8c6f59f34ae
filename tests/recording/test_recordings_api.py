"""The recordings API against a real server: ffmpeg publishes two cameras, one recorded by its setting and
one started and stopped by hand, then the index, coverage, the VOD playlist (fetched segment by segment and
played in hls.js in a real Chromium), exports, downloads and deletes are checked on what was recorded."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import struct
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin

import pytest
from playwright.sync_api import sync_playwright

from tests.conftest import ServerProcess, ffmpeg_publish, require, start_server, wait_for_stream
from tests.e2e.test_browser_hls import CHROMIUM_ARGS, chromium_path
from tests.recording.helpers import Answer, bad_ranges, call, create_camera, iso, parse_iso, wait_until

FPS = 25
SECONDS = 14
# One GOP a second, one HLS segment (the unit recordings are cut at) per GOP, a file every 4 s.
ENV = {
    "MEDIASERVER_AUTH_PUBLISH_MODE": "database",
    "MEDIASERVER_RECORDING_FILE_DURATION": "4",
    "MEDIASERVER_HLS_SEGMENT_DURATION": "1",
}
GOP = 1.0


def top_boxes(data: bytes) -> list[bytes]:
    kinds, offset = [], 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, offset)
        if size < 8:
            break
        kinds.append(kind)
        offset += size
    return kinds


@dataclass
class Recorded:
    server: ServerProcess
    token: str
    camera: dict[str, Any]  # recording_enabled
    manual: dict[str, Any]  # recorded by hand only
    observed: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.server.data_dir / "recordings"

    def get(self, path: str, **kwargs: Any) -> Answer:
        return call(self.server, "GET", path, self.token, **kwargs)

    def rows(self, camera_id: str) -> list[dict[str, Any]]:
        answer = self.get(f"/api/v1/recordings?camera_id={camera_id}&limit=500")
        assert answer.status == 200, answer.body
        return list(answer.json()["items"])


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    server = start_server(tmp_path_factory.mktemp("recordings-api"), ENV)
    publishers: list[subprocess.Popen[bytes]] = []
    try:
        token = server.admin_token()
        ctx = Recorded(
            server, token, create_camera(server, token, "Dock", True), create_camera(server, token, "Gate", False)
        )
        for camera in (ctx.camera, ctx.manual):
            url = server.rtmp_url(f"live/{camera['stream_key']}")
            publishers.append(ffmpeg_publish(url, SECONDS, gop=FPS, rate=FPS))
        for camera in (ctx.camera, ctx.manual):
            wait_for_stream(server, "live", camera["id"])
        manual_id = ctx.manual["id"]
        time.sleep(1.5)
        ctx.observed["before_start"] = len(ctx.rows(manual_id))
        ctx.observed["start"] = call(
            server, "POST", f"/api/v1/cameras/{manual_id}/recording", token, {"action": "start"}
        )
        open_row = wait_until("a manual recording", lambda: [r for r in ctx.rows(manual_id) if not r["complete"]])[0]
        # While its file is being written, a recording cannot be deleted.
        ctx.observed["delete_open"] = call(server, "DELETE", f"/api/v1/recordings/{open_row['id']}", token)
        time.sleep(5)
        ctx.observed["stop"] = call(server, "POST", f"/api/v1/cameras/{manual_id}/recording", token, {"action": "stop"})
        time.sleep(1)
        ctx.observed["rows_at_stop"] = len(ctx.rows(manual_id))
        for publisher in publishers:
            assert publisher.wait(timeout=60) == 0
        for camera_id in (ctx.camera["id"], manual_id):
            wait_until("closed recordings", lambda c=camera_id: all(r["complete"] for r in ctx.rows(c)))
        yield ctx
        assert "Traceback" not in server.log(), server.log()[-5000:]
    finally:
        for publisher in publishers:
            publisher.kill()
            publisher.wait()
        server.stop()


def _range(rows: list[dict[str, Any]]) -> tuple[datetime, datetime]:
    return parse_iso(rows[0]["started_at"]), parse_iso(rows[-1]["ended_at"])


def test_list_and_get(recorded: Recorded) -> None:
    rows = recorded.rows(recorded.camera["id"])
    assert len(rows) >= 3  # 14 s in 4 s files
    for row in rows:
        assert row["complete"] and row["tier"] == "hot" and "avc1" in ",".join(row["codecs"])
        assert 3.0 <= row["duration_seconds"] <= 4.5 or row is rows[-1]
    assert [r["started_at"] for r in rows] == sorted(r["started_at"] for r in rows)
    page = recorded.get(f"/api/v1/recordings?camera_id={recorded.camera['id']}&limit=1&offset=1").json()
    assert page["total"] == len(rows) and page["items"] == [rows[1]] and (page["limit"], page["offset"]) == (1, 1)
    # Rows overlapping a time range, and the tier filter.
    middle = parse_iso(rows[1]["started_at"]) + timedelta(seconds=1)
    query = urlencode({"camera_id": recorded.camera["id"], "start": iso(middle), "end": str(middle.timestamp() + 0.5)})
    assert [r["id"] for r in recorded.get(f"/api/v1/recordings?{query}").json()["items"]] == [rows[1]["id"]]
    assert recorded.get("/api/v1/recordings?tier=cold").json()["total"] == 0
    one = recorded.get(f"/api/v1/recordings/{rows[0]['id']}")
    assert one.status == 200 and one.json() == rows[0]
    for bad in ("999999", "abc", "..%2F..%2Fetc%2Fpasswd", "1%2F..", "-1"):
        answer = recorded.get(f"/api/v1/recordings/{bad}")
        assert answer.status == 404 and answer.json()["error"]["code"] == "recording_not_found", bad
    answer = recorded.get("/api/v1/recordings?tier=../..")
    assert answer.status == 422


def test_coverage_is_one_span(recorded: Recorded) -> None:
    rows = recorded.rows(recorded.camera["id"])
    first, last = _range(rows)
    query = urlencode({"start": iso(first - timedelta(seconds=10)), "end": iso(last + timedelta(seconds=10))})
    answer = recorded.get(f"/api/v1/cameras/{recorded.camera['id']}/recordings/coverage?{query}")
    assert answer.status == 200, answer.body
    body = answer.json()
    assert len(body["spans"]) == 1, body  # consecutive files of one publisher join without a gap
    span = body["spans"][0]
    assert abs((parse_iso(span["start"]) - first).total_seconds()) < 0.1
    assert abs((parse_iso(span["end"]) - last).total_seconds()) < 0.5
    assert [(g["start"], g["end"]) for g in body["gaps"]] == [
        (body["start"], span["start"]),
        (span["end"], body["end"]),
    ]
    # Camera ids that are not ids are refused before anything else.
    assert recorded.get(f"/api/v1/cameras/..%2F..%2Fetc/recordings/coverage?{query}").status == 404
    assert recorded.get(f"/api/v1/cameras/{'0' * 32}/recordings/coverage?{query}").json()["error"]["code"] == (
        "camera_not_found"
    )


def _playlist(recorded: Recorded) -> tuple[str, str, list[dict[str, Any]]]:
    rows = recorded.rows(recorded.camera["id"])
    first, last = _range(rows)
    query = urlencode({"start": str(first.timestamp() - 5), "end": str(last.timestamp() + 5)})
    path = f"/api/v1/cameras/{recorded.camera['id']}/playback.m3u8?{query}"
    answer = recorded.get(path)
    assert answer.status == 200, answer.body
    assert answer.headers["Content-Type"].startswith("application/vnd.apple.mpegurl")
    return path, answer.body.decode(), rows


def test_playlist_segments_are_fetchable_byte_ranges(recorded: Recorded) -> None:
    path, text, rows = _playlist(recorded)
    lines = text.splitlines()
    for tag in ("#EXT-X-PLAYLIST-TYPE:VOD", "#EXT-X-ENDLIST", "#EXT-X-VERSION:7", "#EXT-X-INDEPENDENT-SEGMENTS"):
        assert tag in lines, tag
    maps = [line for line in lines if line.startswith("#EXT-X-MAP:")]
    assert len(maps) == len(rows) and lines.count("#EXT-X-DISCONTINUITY") == len(rows) - 1
    base = recorded.server.http_url(path)
    media_tokens: set[str] = set()

    def fetch(uri: str, length: int, offset: int) -> bytes:
        url = urljoin(base, uri)
        media_tokens.add(url.split("token=", 1)[1])
        request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-{offset + length - 1}"})
        with urllib.request.urlopen(request, timeout=10) as response:  # no bearer: the URL's token only
            assert response.status == 206
            assert response.headers["Content-Range"].startswith(f"bytes {offset}-{offset + length - 1}/")
            data = response.read()
        assert len(data) == length
        return data

    for line in maps:
        uri = line.split('URI="', 1)[1].split('"', 1)[0]
        length, offset = (int(x) for x in line.split('BYTERANGE="', 1)[1].rstrip('"').split("@"))
        assert offset == 0 and top_boxes(fetch(uri, length, offset))[:2] == [b"ftyp", b"moov"]
    segments = 0
    total = 0.0
    for index, line in enumerate(lines):
        if line.startswith("#EXTINF:"):
            total += float(line[8:].rstrip(","))
            byterange = lines[index + 1]
            assert byterange.startswith("#EXT-X-BYTERANGE:") and lines[index - 1].startswith("#EXT-X-PROGRAM-DATE")
            length, offset = (int(x) for x in byterange.split(":", 1)[1].split("@"))
            assert fetch(lines[index + 2], length, offset)[4:8] == b"moof"
            segments += 1
    assert segments >= SECONDS - 2
    assert abs(total - sum(r["duration_seconds"] for r in rows)) < 1.0
    # The media route wants a token for that recording, or a bearer; and never writes a token to the log.
    uri = urljoin(base, maps[0].split('URI="', 1)[1].split('"', 1)[0])
    other = f"/api/v1/recordings/{rows[1]['id']}/media?token={uri.split('token=', 1)[1]}"
    assert call(recorded.server, "GET", other).json()["error"]["code"] == "token_not_for_this_recording"
    assert call(recorded.server, "GET", f"/api/v1/recordings/{rows[0]['id']}/media?token=x.y.z").status == 401
    assert call(recorded.server, "GET", f"/api/v1/recordings/{rows[0]['id']}/media").status == 401
    assert recorded.get(f"/api/v1/recordings/{rows[0]['id']}/media", headers={"Range": "bytes=0-7"}).status == 206
    log = recorded.server.log()
    assert media_tokens and not any(t in log for t in media_tokens) and recorded.token not in log


def test_hls_js_plays_the_recording_and_seeks(recorded: Recorded) -> None:
    path, _, rows = _playlist(recorded)
    recorded_from = parse_iso(rows[0]["started_at"])
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, timeout=60_000)
        try:
            page = browser.new_page()
            console: list[str] = []
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
            response = page.goto(recorded.server.http_url("/static/recording.html"))
            assert response is not None and response.status == 200
            page.evaluate("([src, token]) => window.playRecording(src, token)", [path, recorded.token])

            def stats() -> dict[str, Any]:
                value = page.evaluate("() => window.recordingStats")
                assert not value["fatalErrors"], (value, console[-20:])
                return dict(value)

            playing = wait_until("playback", lambda: (s := stats())["currentTime"] > 1.5 and s["readyState"] >= 2 and s)
            assert (playing["videoWidth"], playing["videoHeight"]) == (640, 360)
            assert abs(playing["duration"] - sum(r["duration_seconds"] for r in rows)) < 1.5
            # Seek into the last file (across the discontinuities between files) and play on from there.
            target = playing["duration"] - 3.0
            page.evaluate("t => { document.querySelector('video').currentTime = t; }", target)
            after = wait_until(
                "playback after the seek",
                lambda: (s := stats())["currentTime"] >= target + 1.0 and not s["seeking"] and s["playingDate"] and s,
            )
            # The picture on screen is the one recorded that long after the start (no gap in this recording).
            shown = (parse_iso(after["playingDate"]) - recorded_from).total_seconds()
            assert abs(shown - after["currentTime"]) < 1.5, (shown, after)
            print(
                f"\nhls.js played the recording, seeked to {target:.1f} s of {after['duration']:.1f} s, "
                f"{after['fragmentsLoaded']} fragments, non-fatal errors: {[e['details'] for e in after['errors']]}"
            )
        finally:
            browser.close()


def _probe_duration(path: Path) -> tuple[float, list[tuple[float, bool]]]:
    out = subprocess.run(
        [
            require("ffprobe"),
            "-v",
            "error",
            "-show_entries",
            "format=duration:packet=pts_time,flags,codec_type",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )
    doc = json.loads(out.stdout)
    video = [(float(p["pts_time"]), "K" in p["flags"]) for p in doc["packets"] if p["codec_type"] == "video"]
    return float(doc["format"]["duration"]), video


def test_export_is_one_progressive_mp4_cut_at_keyframes(recorded: Recorded, tmp_path: Path) -> None:
    rows = recorded.rows(recorded.camera["id"])
    first, _ = _range(rows)
    # 6 s across three files, starting and ending half a GOP into one.
    start, end = first + timedelta(seconds=2.5), first + timedelta(seconds=8.5)
    query = urlencode({"start": iso(start), "end": iso(end)})
    started = time.monotonic()
    answer = recorded.get(f"/api/v1/cameras/{recorded.camera['id']}/export.mp4?{query}")
    took = time.monotonic() - started
    assert answer.status == 200, answer.body
    assert answer.headers["Content-Type"] == "video/mp4"
    assert answer.headers["Content-Disposition"].startswith('attachment; filename="')
    assert int(answer.headers["Content-Length"]) == len(answer.body)
    boxes = top_boxes(answer.body)
    assert boxes.index(b"moov") < boxes.index(b"mdat"), boxes  # progressive: moov first
    out = tmp_path / "export.mp4"
    out.write_bytes(answer.body)
    duration, video = _probe_duration(out)
    requested = (end - start).total_seconds()
    assert requested - 0.05 <= duration <= requested + GOP + 0.1, duration
    assert video[0][1], "the export does not start on a keyframe"
    assert abs(len(video) - duration * FPS) <= 2, (len(video), duration)
    print(f"\nexport of {requested:.1f} s: {duration:.2f} s, {len(answer.body)} bytes in {took:.2f} s")
    # Nothing recorded in the range: 404.
    empty = urlencode({"start": iso(first - timedelta(hours=3)), "end": iso(first - timedelta(hours=2))})
    answer = recorded.get(f"/api/v1/cameras/{recorded.camera['id']}/export.mp4?{empty}")
    assert answer.status == 404 and answer.json()["error"]["code"] == "no_recordings"
    wait_until("the export's scratch files to go", lambda: not list((recorded.server.data_dir / "tmp").iterdir()))


def test_download_whole_and_ranges(recorded: Recorded) -> None:
    row = recorded.rows(recorded.camera["id"])[0]
    data = (recorded.root / recorded_path(recorded, row["id"])).read_bytes()
    url = f"/api/v1/recordings/{row['id']}/download"
    whole = recorded.get(url)
    assert whole.status == 200 and whole.body == data and hashlib.sha256(data).hexdigest() == row["checksum"]
    assert whole.headers["Accept-Ranges"] == "bytes" and whole.headers["Content-Disposition"].startswith("attachment")
    assert whole.headers["ETag"] == f'"{row["checksum"]}"'
    part = recorded.get(url, headers={"Range": "bytes=100-1099"})
    assert part.status == 206 and part.body == data[100:1100]
    assert part.headers["Content-Range"] == f"bytes 100-1099/{len(data)}" and part.headers["Content-Length"] == "1000"
    tail = recorded.get(url, headers={"Range": "bytes=-500"})
    assert tail.status == 206 and tail.body == data[-500:]
    # A stale If-Range gets the whole file; a range past the end is 416.
    assert recorded.get(url, headers={"Range": "bytes=0-9", "If-Range": '"other"'}).status == 200
    beyond = recorded.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status == 416 and beyond.headers["Content-Range"] == f"bytes */{len(data)}"
    assert beyond.json()["error"]["code"] == "range_not_satisfiable"


def recorded_path(recorded: Recorded, recording_id: int) -> str:
    with sqlite3.connect(recorded.server.data_dir / "mediaserver.db", timeout=10) as db:
        return str(db.execute("SELECT path FROM recordings WHERE id = ?", (recording_id,)).fetchone()[0])


def test_bad_ranges_are_400_json(recorded: Recorded) -> None:
    now = datetime.now(UTC)
    camera = recorded.camera["id"]
    cases = bad_ranges(now)
    cases_future = {"start": iso(now), "end": iso(now + timedelta(days=2))}
    for route in ("recordings/coverage", "playback.m3u8", "export.mp4"):
        for code, params in [*cases.items(), ("time_out_of_range", cases_future)]:
            answer = recorded.get(f"/api/v1/cameras/{camera}/{route}?{urlencode(params)}")
            assert answer.status == 400 and answer.headers["Content-Type"].startswith("application/json"), (route, code)
            assert answer.json()["error"]["code"] == code and answer.json()["error"]["message"], (route, code)
    answer = recorded.get(f"/api/v1/recordings?{urlencode(cases['range_reversed'])}")
    assert answer.status == 400 and answer.json()["error"]["code"] == "range_reversed"


def test_a_row_naming_a_path_outside_the_root_reads_and_deletes_nothing(recorded: Recorded) -> None:
    canary = recorded.server.data_dir / "canary.mp4"
    canary.write_bytes(b"not a recording")
    started = datetime.now(UTC) - timedelta(hours=6)  # long before anything recorded here
    with sqlite3.connect(recorded.server.data_dir / "mediaserver.db", timeout=10) as db:
        cursor = db.execute(
            "INSERT INTO recordings (camera_id, started_at, ended_at, path, size_bytes, duration_seconds, tier, "
            "codecs, checksum, instance) VALUES (?, ?, ?, ?, 15, 10.0, 'hot', '', 'x', '')",
            (
                recorded.camera["id"],
                started.strftime("%Y-%m-%d %H:%M:%S.%f"),
                (started + timedelta(seconds=10)).strftime("%Y-%m-%d %H:%M:%S.%f"),
                "../canary.mp4",
            ),
        )
        bad_id = cursor.lastrowid
    assert recorded.get(f"/api/v1/recordings/{bad_id}/download").status == 404
    assert recorded.get(f"/api/v1/recordings/{bad_id}/media").status == 404
    query = urlencode({"start": iso(started), "end": iso(started + timedelta(seconds=10))})
    coverage = recorded.get(f"/api/v1/cameras/{recorded.camera['id']}/recordings/coverage?{query}")
    assert coverage.status == 200 and coverage.json()["spans"] == []
    assert call(recorded.server, "DELETE", f"/api/v1/recordings/{bad_id}", recorded.token).status == 204
    assert canary.read_bytes() == b"not a recording"


def test_manual_start_and_stop(recorded: Recorded) -> None:
    observed = recorded.observed
    manual_id = recorded.manual["id"]
    assert observed["before_start"] == 0  # recording_enabled is off: nothing until started by hand
    assert observed["start"].status == 200 and observed["start"].json() == {"camera_id": manual_id, "recording": True}
    assert observed["stop"].status == 200 and observed["stop"].json() == {"camera_id": manual_id, "recording": False}
    rows = recorded.rows(manual_id)
    assert rows and len(rows) == observed["rows_at_stop"]  # no file after the stop
    recorded_seconds = sum(r["duration_seconds"] for r in rows)
    assert 3.0 <= recorded_seconds <= 8.0, recorded_seconds
    assert all((recorded.root / recorded_path(recorded, r["id"])).parent.name == manual_id for r in rows)
    actions = {e["action"] for e in recorded.get(f"/api/v1/audit-logs?resource_id={manual_id}").json()["items"]}
    assert {"recording.start", "recording.stop"} <= actions
    answer = call(recorded.server, "POST", f"/api/v1/cameras/{manual_id}/recording", recorded.token, {"action": "on"})
    assert answer.status == 422


def test_delete_is_refused_while_writing_then_audited_and_removes_the_files(recorded: Recorded) -> None:
    refused = recorded.observed["delete_open"]
    assert refused.status == 409 and refused.json()["error"]["code"] == "recording_in_progress"
    row = recorded.rows(recorded.manual["id"])[0]
    mp4 = recorded.root / recorded_path(recorded, row["id"])
    index = mp4.with_name(mp4.name + ".idx")
    assert mp4.is_file() and index.is_file()
    answer = call(recorded.server, "DELETE", f"/api/v1/recordings/{row['id']}", recorded.token)
    assert answer.status == 204, answer.body
    assert not mp4.exists() and not index.exists()
    assert recorded.get(f"/api/v1/recordings/{row['id']}").status == 404
    assert call(recorded.server, "DELETE", f"/api/v1/recordings/{row['id']}", recorded.token).status == 404
    entries = recorded.get(f"/api/v1/audit-logs?action=recording.delete&resource_id={row['id']}").json()["items"]
    assert len(entries) == 1 and entries[0]["success"] and entries[0]["actor"] == "admin"
    assert entries[0]["details"]["camera_id"] == recorded.manual["id"]
