"""benchmarks.ws_fanout end to end, small: every change reaches every client, and the report is written."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import ws_fanout


def test_ws_fanout_smoke(tmp_path: Path) -> None:
    report = tmp_path / "ws.json"
    code = ws_fanout.main(
        ["--clients", "20", "--cameras", "10", "--rate", "20", "--seconds", "2", "--sample-every", "2",
         "--dashboard-requests", "50", "--json", str(report)]
    )  # fmt: skip
    assert code == 0
    result = json.loads(report.read_text())["results"][0]
    assert result["changes_made"] == 40 and result["change_errors"] == 0
    assert result["events_received"] == result["events_expected"] == 40 * 20
    assert result["clients_dropped"] == 0 and result["latency_p99_ms"] is not None
    assert result["dashboard_requests"] == 50
