"""The recording benchmarks at tiny scale: the seeded hourly files are what the recorder leaves, and both tools run
end to end (a 2 MiB tier move to a folder and to moto's S3 server; an hour's coverage and playlist)."""

from __future__ import annotations

import itertools
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.lib.recordings import SampleRecording, check_recording, plan_hourly_files, recording_rows, write_files
from mediaserver.recording import fileformat, layout, repair

REPO = Path(__file__).resolve().parents[2]
CAMERA = "0123456789abcdef0123456789abcdef"


def test_seeded_hourly_files_are_the_recorders_layout(tmp_path: Path) -> None:
    ftyp = struct.pack(">I4s", 16, b"ftyp") + b"isom\0\0\0\0"
    facts = {"codecs": ["avc1.64001f", "mp4a.40.2"], "width": 1280, "height": 720}
    sample = SampleRecording(ftyp, facts, [(500_000, 2000), (520_000, 2000)])
    start = 1_790_000_000.0
    files = plan_hourly_files(sample, CAMERA, start, 26, gap_every=24, gap_seconds=300)
    write_files(tmp_path, files)

    assert sorted(repair.recordings_under(tmp_path)) == sorted(f.relative for f in files)
    for number, (file, after) in enumerate(itertools.pairwise(files)):
        lost = 300.0 if number == 23 else 0.0
        assert len(file.entries) == 1800 - lost / 2
        assert after.started_at - file.ended_at == pytest.approx(lost)  # back to back, one gap a day
        assert after.entries[0].start_ms == file.entries[-1].start_ms + 2000  # the media clock runs on
    first = files[0]
    path = tmp_path / first.relative
    assert check_recording(path) == list(first.entries)  # the index covers the file to its last byte
    assert fileformat.read_header(path)["start"] == start and first.relative == layout.relative_path(CAMERA, start)
    assert path.stat().st_size == first.size > 900_000_000 and path.stat().st_blocks * 512 < 1_000_000  # sparse
    (row,) = recording_rows([first])
    assert row["size_bytes"] == first.size and row["duration_seconds"] == 3600.0 and row["tier"] == "hot"
    assert row["codecs"] == "avc1.64001f,mp4a.40.2" and len(row["checksum"]) == 64


def _run(command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MEDIASERVER_SERVER_LOG_LEVEL": "warning"}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.timeout(120)
def test_tier_move_smoke(small_clip: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    command = [
        sys.executable, "-m", "benchmarks.tier_move", "--size-mb", "2", "--to", "warm,cold", "--part-size-mb", "5",
        "--clip", str(small_clip), "--json", str(report), "--workdir", str(tmp_path),
    ]  # fmt: skip
    completed = _run(command, 110)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    data = json.loads(report.read_text())
    assert [(m["source"], m["target"], m["result"]) for m in data["moves"]] == [
        ("hot", "warm", "ok"),
        ("hot", "cold", "ok"),
    ]
    for move in data["moves"]:
        assert move["verified"] and move["source_deleted"] and move["problems"] == []
        assert move["bytes"] > 2 * 1024 * 1024 and move["cost"]["wall_s"] > 0 and "put_file" in move["calls_s"]
        assert move["readback"]["complete"] and move["readback"]["bytes"] == move["bytes"]
    assert data["moves"][1]["cost"]["server_cpu_s"] > 0  # moto's own CPU, read from its process
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # the run's temp dir is gone


@pytest.mark.timeout(120)
def test_recording_index_smoke(small_clip: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    command = [
        sys.executable, "-m", "benchmarks.recording_index", "--days", "1", "--requests", "6", "--warmup", "0",
        "--concurrency", "2", "--max-query-range", "3600", "--clip", str(small_clip), "--json", str(report),
    ]  # fmt: skip
    completed = _run(command, 110)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    data = json.loads(report.read_text())
    assert data["seeded"]["files"] == 24 and data["seeded"]["rows_listed_first_camera"] == 24
    kinds = {k["label"]: k for k in data["requests"]}
    measured = [k for k in kinds.values() if not k["note"].startswith("skipped")]
    assert [k["label"] for k in measured] == ["coverage 1 d", "playback.m3u8 1 h"]
    assert kinds["coverage 1 d"]["range_s"] == 3600 and "400 range_too_long" in kinds["coverage 1 d"]["note"]
    assert "400 range_too_long" in kinds["playback.m3u8 24 h"]["note"]
    for kind in measured:
        assert kind["requests"] == 6 and kind["errors"] == 0 and kind["p99_ms"] > 0
        assert kind["server_cpu_ms_per_request"] > 0
    assert " segments, " in kinds["playback.m3u8 1 h"]["answer"]
