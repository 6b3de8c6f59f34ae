"""A full disk under a recording: live streaming goes on, the failure is logged and counted, the file that hit
the wall still plays up to its last whole fragment. The disk is a real 512 KiB tmpfs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ffmpeg_publish, start_server, wait_for_stream
from tests.recording.test_recorder_e2e import probe_video, recordings


def _as_root(*command: str) -> list[str]:
    if os.geteuid() == 0:
        return list(command)
    sudo = shutil.which("sudo")
    if sudo is None:
        pytest.fail("mounting a tmpfs needs root or sudo (as .ci/run has)")
    return [sudo, "-n", *command]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    uid = os.getuid()
    subprocess.run(_as_root("mount", "-t", "tmpfs", "-o", f"size=512k,uid={uid}", "tmpfs", str(mount)), check=True)
    try:
        yield mount
    finally:
        subprocess.run(_as_root("umount", "-l", str(mount)), check=False)


def test_disk_full_keeps_live_going_and_the_file_playable(tmp_path: Path, small_disk: Path) -> None:
    server = start_server(
        tmp_path,
        {
            "MEDIASERVER_API_ENABLED": "false",
            "MEDIASERVER_RECORDING_STREAMS": "live/*",
            "MEDIASERVER_RECORDING_ROOT": str(small_disk),
        },
    )
    publisher = ffmpeg_publish(server.rtmp_url("live/yard"), 14, size="1280x720", extra=["-b:v", "2M"])
    try:
        wait_for_stream(server, "live", "yard")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "reason=disk_full" not in server.log():
            time.sleep(0.2)
        assert "recording_write_failed" in server.log() and "reason=disk_full" in server.log()
        # Live HLS goes on after the disk filled up.
        first = server.get_text("/hls/live/yard/index.m3u8")
        time.sleep(2.5)
        later = server.get_text("/hls/live/yard/index.m3u8")
        segments = re.compile(r"^seg-(\d+)\.m4s$", re.M)
        assert max(map(int, segments.findall(later))) > max(map(int, segments.findall(first)))
        metrics = server.get_text("/metrics")
        gaps = re.search(r'^mediaserver_recording_gaps_total\{reason="disk_full"\} (\S+)$', metrics, re.M)
        assert gaps is not None and float(gaps.group(1)) >= 1
    finally:
        publisher.kill()
        publisher.wait()
        server.stop()
    files = recordings(small_disk)
    assert files
    for path in files:
        packets = probe_video(path)  # repaired: reads to its end
        assert packets and packets[0][1]
    assert "recording_repair_failed" not in server.log()
