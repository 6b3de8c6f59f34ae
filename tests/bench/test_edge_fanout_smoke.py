"""The edge fan-out benchmark at tiny scale: every player on the edge node is fed through an edge copy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
def test_edge_fanout_smoke(small_clip: Path, tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    command = [
        sys.executable, "-m", "benchmarks.edge_fanout", "--streams", "2", "--warmup", "2", "--duration", "3",
        "--clip", str(small_clip), "--json", str(report_path),
    ]  # fmt: skip
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=110)
    assert completed.returncode == 0, completed.stderr[-3000:]
    figures = json.loads(report_path.read_text())
    assert figures["edge_players_up"] == 2 and figures["local_players_up"] == 2
    assert figures["edge_received_mbps"] > 0 and figures["edge_cpu_pct"] > 0
