"""The HLS load benchmark at tiny scale against our server: LL and plain viewers, no failures, latency measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["ll", "plain"])
def test_hls_load_smoke(mode: str, small_clip: Path, tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    command = [
        sys.executable, "-m", "benchmarks.hls_load",
        "--target", "ours", "--mode", mode, "--streams", "1", "--viewers", "3",
        "--warmup", "2", "--duration", "4", "--join-spread", "0.5",
        "--clip", str(small_clip), "--json", str(report_path),
    ]  # fmt: skip
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=80)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert f"| ours | {mode} | 1 | 3 |" in completed.stdout, completed.stdout

    (result,) = json.loads(report_path.read_text())["results"]
    assert result["failures"] == 0, (result["failures_by_kind"], result["error_samples"])
    assert result["viewers_started"] == 3 and result["viewers_stalled"] == 0
    assert result["publishers_connected_at_end"] == 1 and result["publisher_errors"] == 0
    assert result["requests_per_s"] > 0 and result["bytes_per_s"] > 0
    # Latency was measured, from PROGRAM-DATE-TIME and from the publisher's clock, and is sane.
    assert result["latency_samples"] > 0 and result["e2e_samples"] > 0
    assert 0 <= result["latency_p50_ms"] <= result["latency_p95_ms"] < 5000
    assert result["e2e_p95_ms"] < 5000
    if mode == "ll":
        # A part is served as soon as it is cut: well under a part's duration after its end.
        assert result["latency_p50_ms"] < 300
    assert result["ingest_lag_samples"] > 0
    assert result["server_cpu_pct"] > 0 and result["rss_mb"] > 10
    assert result["window_s"] == pytest.approx(4, abs=0.5)
    assert result["server_log_problems"] == []
