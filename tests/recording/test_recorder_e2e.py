"""Recording with real clients: ffmpeg publishes, the server records, ffprobe reads every file back."""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.conftest import ServerProcess, ffmpeg_publish, require, start_server, wait_for_stream

FPS = 25
SECONDS = 12


def recordings(root: Path) -> list[Path]:
    return sorted(root.glob("*/*/*/*/*.mp4"))


def probe_video(path: Path) -> list[tuple[float, bool]]:
    """(pts seconds, keyframe) of every video packet, in decode order; fails on an unreadable file."""
    out = subprocess.run(
        [
            require("ffprobe"),
            "-v",
            "error",
            "-select_streams",
            "v",
            "-show_entries",
            "packet=pts_time,flags",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )
    packets = json.loads(out.stdout)["packets"]
    return [(float(p["pts_time"]), "K" in p["flags"]) for p in packets]


def wait_files_closed(root: Path, count: int, timeout: float = 15) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = recordings(root)
        if len(files) >= count:
            return files
        time.sleep(0.2)
    raise AssertionError(f"expected {count} recordings, found {recordings(root)}")


def test_rollover_on_keyframes_loses_and_repeats_no_frame(tmp_path: Path) -> None:
    server = start_server(
        tmp_path,
        {
            "MEDIASERVER_API_ENABLED": "false",
            "MEDIASERVER_RECORDING_STREAMS": "live/*",
            "MEDIASERVER_RECORDING_FILE_DURATION": "4",
        },
    )
    try:
        publisher = ffmpeg_publish(server.rtmp_url("live/door"), SECONDS, gop=FPS, rate=FPS)
        assert publisher.wait(timeout=60) == 0
        root = server.data_dir / "recordings"
        time.sleep(2)
        files = wait_files_closed(root, 3)
    finally:
        server.stop()
    assert all(f.parent.name == "door" for f in files)
    everything: list[float] = []
    for path in files:
        packets = probe_video(path)
        assert packets and packets[0][1], f"{path.name} does not start on a keyframe"
        everything.extend(pts for pts, _ in packets)
        index = (path.parent / (path.name + ".idx")).read_text().splitlines()
        assert index, path
        offsets = [int(line.split()[0]) for line in index]
        sizes = [int(line.split()[1]) for line in index]
        assert offsets[0] + sum(sizes) == path.stat().st_size  # the index covers the file, segment by segment
    # Every frame published is in exactly one file, on one continuous timeline.
    assert len(everything) == SECONDS * FPS
    ordered = sorted(everything)
    assert len(set(round(p, 3) for p in ordered)) == len(ordered)
    steps = {round(b - a, 3) for a, b in itertools.pairwise(ordered)}
    assert steps == {round(1 / FPS, 3)}, steps
    assert "recording_closed" in server.log()


def _sqlite_rows(data_dir: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(data_dir / "mediaserver.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM recordings ORDER BY started_at")]


def _camera(server: ServerProcess) -> dict[str, Any]:
    import urllib.request

    body = json.dumps({"name": "Loading dock", "recording_enabled": True}).encode()
    request = urllib.request.Request(
        server.http_url("/api/v1/cameras"),
        body,
        {"Content-Type": "application/json", "Authorization": f"Bearer {server.admin_token()}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.loads(response.read()))


def test_sigkill_leaves_every_file_playable_and_the_index_follows(tmp_path: Path) -> None:
    env = {"MEDIASERVER_AUTH_PUBLISH_MODE": "database", "MEDIASERVER_RECORDING_FILE_DURATION": "4"}
    server = start_server(tmp_path, env)
    root = server.data_dir / "recordings"
    publisher = None
    try:
        camera = _camera(server)
        publisher = ffmpeg_publish(server.rtmp_url(f"live/{camera['stream_key']}"), 30, gop=FPS, rate=FPS)
        wait_for_stream(server, "live", camera["id"])
        time.sleep(7.2)  # one file closed, the next one open mid-fragment
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=10)
    finally:
        if publisher is not None:
            publisher.kill()
            publisher.wait()
    files = recordings(root)
    assert len(files) >= 2
    open_rows = [r for r in _sqlite_rows(server.data_dir) if r["checksum"] is None]
    assert open_rows, "the file being written when the server died has no checksum yet"

    # Restart on the same data: the index is repaired from the disk before anything records.
    restarted = start_server(tmp_path, {**env, "MEDIASERVER_ADMIN_PASSWORD": server.env["MEDIASERVER_ADMIN_PASSWORD"]})
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and "recordings_reconciled" not in restarted.log():
            time.sleep(0.2)
        assert "recordings_reconciled" in restarted.log()
    finally:
        restarted.stop()
    rows = {r["path"]: r for r in _sqlite_rows(server.data_dir)}
    assert set(rows) == {f.relative_to(root).as_posix() for f in recordings(root)}
    for path in recordings(root):
        row = rows[path.relative_to(root).as_posix()]
        packets = probe_video(path)  # ffprobe reads every file to its end without an error
        assert packets[0][1]
        probed = max(p for p, _ in packets) - min(p for p, _ in packets) + 1 / FPS
        # The index's duration is within one fragment (an LL-HLS part, 1/3 s) of what the file holds.
        assert abs(row["duration_seconds"] - probed) <= 0.4, (path.name, row["duration_seconds"], probed)
        assert row["checksum"] and row["size_bytes"] == path.stat().st_size
        assert row["camera_id"] == camera["id"] and row["tier"] == "hot" and "avc1" in row["codecs"]
