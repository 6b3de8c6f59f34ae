"""How many pulled cameras one server process carries: N sources pulled from a stand-in RTSP camera.

The camera is GStreamer's RTSP server (tests/pull/rtsp_camera.py, run by Debian's /usr/bin/python3) with one
shared live encode (`--size`, `--kbps`, 25 fps, a keyframe every 2 s, AAC), so every session gets the same
stream and the camera's cost does not grow with N. Our server pulls it `--sources` times (`live/cam-<i>`, HLS on
as by default) and the window measures its CPU per source, RSS, and how many sources stayed online. Bounded in
count and time; stops by itself.

    python -m benchmarks.pull_load --sources 10,50 --size 1280x720 --kbps 2000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.lib.metrics import family
from benchmarks.lib.procfs import cpu_use, process_tree, read_cpu, rss_bytes
from benchmarks.lib.report import format_table, write_report
from benchmarks.lib.runner import log
from benchmarks.lib.servers import OurServer, free_port

CAMERA = Path(__file__).resolve().parents[1] / "tests" / "pull" / "rtsp_camera.py"


@dataclass
class PullFigures:
    sources: int
    online: int
    sessions: int
    server_cpu_pct: float
    cpu_pct_per_source: float
    rss_mb: float
    camera_cpu_pct: float
    other_cpu_pct: float


def run_level(count: int, args: argparse.Namespace, port: int) -> PullFigures:
    sources = [f"live/cam-{i}=rtsp://127.0.0.1:{port}/cam" for i in range(count)]
    server = OurServer(
        args.keep_temp,
        prefix="pull-bench",
        env={"MEDIASERVER_PULL_SOURCES": json.dumps(sources), "MEDIASERVER_PULL_ALLOW_LOOPBACK": "true"},
    )
    server.start()
    try:
        deadline = time.monotonic() + args.settle
        online = 0
        while time.monotonic() < deadline:
            online = int(family(server.scrape(), "mediaserver_pull_sources").get('state="online"', 0))
            if online >= count:
                break
            time.sleep(0.5)
        time.sleep(args.warmup)
        pids = process_tree(server.pid)
        before = read_cpu([*pids, args.camera_pid])
        time.sleep(args.duration)
        after = read_cpu([*process_tree(server.pid), args.camera_pid])
        use = cpu_use(before, after)
        server_pct = use.pct(process_tree(server.pid))
        camera_pct = use.pct([args.camera_pid])
        metrics = server.scrape()
        online = int(family(metrics, "mediaserver_pull_sources").get('state="online"', 0))
        sessions = int(sum(family(metrics, "mediaserver_pull_sessions_total").values()))
        return PullFigures(
            count,
            online,
            sessions,
            round(server_pct, 1),
            round(server_pct / count, 3),
            round(rss_bytes(process_tree(server.pid)) / 2**20, 1),
            round(camera_pct, 1),
            round(use.other_pct(server_pct, camera_pct), 1),
        )
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", default="10,50", help="comma-separated source counts, one run each")
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--kbps", type=int, default=2000)
    parser.add_argument("--settle", type=float, default=30.0, help="seconds to wait for every source to be online")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep-temp", action="store_true")
    args = parser.parse_args()
    counts = [int(c) for c in args.sources.split(",") if c]
    if not counts or min(counts) < 1 or max(counts) > 1000:
        parser.error("--sources must be counts within 1..1000")
    port = free_port()
    env = {**os.environ, "CAMERA_SIZE": args.size, "CAMERA_KBPS": str(args.kbps)}
    camera = subprocess.Popen(["/usr/bin/python3", str(CAMERA), str(port)], stdout=subprocess.PIPE, text=True, env=env)
    assert camera.stdout is not None
    if camera.stdout.readline().strip() != "ready":
        camera.kill()
        sys.exit("the stand-in camera did not start (python3-gi, gir1.2-gst-rtsp-server-1.0)")
    args.camera_pid = camera.pid
    started = time.monotonic()
    results: list[PullFigures] = []
    try:
        for count in counts:
            log(f"{count} pulled sources")
            results.append(run_level(count, args, port))
            time.sleep(2)
    finally:
        camera.kill()
        camera.wait()
    print()
    print(
        format_table(
            results,
            [
                ("sources", lambda r: str(r.sources)),
                ("online", lambda r: f"{r.online}/{r.sources}"),
                ("sessions", lambda r: str(r.sessions)),
                ("server CPU %", lambda r: f"{r.server_cpu_pct}"),
                ("CPU %/source", lambda r: f"{r.cpu_pct_per_source}"),
                ("RSS MB", lambda r: f"{r.rss_mb}"),
                ("camera CPU %", lambda r: f"{r.camera_cpu_pct}"),
                ("other CPU %", lambda r: f"{r.other_cpu_pct}"),
            ],
        )
    )
    if args.json is not None:
        del args.camera_pid
        write_report(args.json, args, started, results)


if __name__ == "__main__":
    main()
