"""The load benchmark at tiny scale against our server: it runs, and its report makes sense."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(60)
def test_rtmp_load_smoke(small_clip: Path, tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    command = [
        sys.executable, "-m", "benchmarks.rtmp_load",
        "--target", "ours", "--publishers", "2", "--players", "1",
        "--warmup", "2", "--duration", "3", "--player-delay", "0.5",
        "--clip", str(small_clip), "--json", str(report_path),
    ]  # fmt: skip
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=50)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "| ours | 2 | 1 |" in completed.stdout, completed.stdout

    report = json.loads(report_path.read_text())
    (result,) = report["results"]
    assert result["target"] == "ours"
    assert result["publishers_connected_at_end"] == 2
    assert result["publisher_errors"] == 0 and result["player_errors"] == 0, result["error_samples"]
    assert result["players_total"] == 2 and result["players_with_keyframe"] == 2
    # Our server starts a player on its cached GOP: the keyframe comes at once.
    assert 0 <= result["first_keyframe_p99_ms"] < 1000
    assert result["drops"] == 0, result["drops_by_reason"]
    # ~0.4 Mbit/s per stream in, the same out to one player each.
    assert 0.3 < result["in_mbps"] < 2.5
    assert 0.3 < result["out_mbps"] < 2.5
    assert result["server_cpu_pct"] > 0
    assert result["rss_mb"] > 10
    assert result["cpu_pct_per_stream"] == pytest.approx(result["server_cpu_pct"] / 2, abs=0.01)
    assert result["loadgen_cpu_pct"] >= 0
    assert result["window_s"] == pytest.approx(3, abs=0.5)
    assert result["server_log_problems"] == []
