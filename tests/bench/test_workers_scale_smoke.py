"""The worker-scaling benchmark at tiny scale: one and two workers each carry the streams, and the two-worker
server's figures cover its whole process tree and both workers' event loops."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
def test_workers_scale_smoke(small_clip: Path, tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    command = [
        sys.executable, "-m", "benchmarks.workers_scale", "--workers", "1,2", "--levels", "2,4",
        "--warmup", "2", "--duration", "3", "--clip", str(small_clip), "--json", str(report_path),
        "--lag-limit", "5000",  # a busy CI machine: the lag limit is the real runs' business
    ]  # fmt: skip
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=110)
    assert completed.returncode == 0, completed.stderr[-3000:]
    one, two = json.loads(report_path.read_text())
    assert (one["workers"], two["workers"]) == (1, 2)
    for ladder in (one, two):
        assert [level["streams"] for level in ladder["levels"]] == [2, 4]
        assert all(level["passed"] for level in ladder["levels"]), ladder
        assert all(level["lag_p99_ms"] is not None for level in ladder["levels"])
    assert two["levels"][0]["server_processes"] >= 3  # the parent and both workers were measured
    assert "ours x2: carried **4** streams" in completed.stdout
