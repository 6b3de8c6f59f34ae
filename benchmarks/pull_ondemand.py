"""Time from the first viewer to the first frame for an on-demand pulled camera, against the same camera live.

    python -m benchmarks.pull_ondemand --joins 6

The camera is the stand-in of tests/pull/rtsp_camera.py (GStreamer's RTSP server, Debian's /usr/bin/python3;
25 fps, a keyframe every 2 s). Our server pulls it on demand (`[pull] on_demand`, `on_demand_idle`), and each
round times `ffmpeg -i rtmp://.../live/gate -frames:v 1 -f null -` once with the source stopped (cold: the
player's request starts it) and once right after, with it live (warm), then waits until the idle source has
stopped. Bounded in count and time; stops by itself.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.lib.runner import log
from benchmarks.lib.servers import OurServer, free_port, http_get

CAMERA = Path(__file__).resolve().parents[1] / "tests" / "pull" / "rtsp_camera.py"


def first_frame(url: str) -> float:
    started = time.monotonic()
    subprocess.run(["ffmpeg", "-v", "error", "-i", url, "-frames:v", "1", "-f", "null", "-"], check=True, timeout=60)
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--joins", type=int, default=6, help="rounds (one cold and one warm join each), 1..50")
    parser.add_argument("--idle", type=float, default=2.0, help="on_demand_idle of the server, seconds")
    args = parser.parse_args(argv)
    if not 1 <= args.joins <= 50:
        parser.error("--joins 1..50")
    port = free_port()
    camera = subprocess.Popen(["/usr/bin/python3", str(CAMERA), str(port)], stdout=subprocess.PIPE, text=True)
    assert camera.stdout is not None
    if camera.stdout.readline().strip() != "ready":
        camera.kill()
        sys.exit("the stand-in camera did not start (python3-gi, gir1.2-gst-rtsp-server-1.0)")
    server = OurServer(
        prefix="ondemand-bench",
        env={
            "MEDIASERVER_PULL_SOURCES": json.dumps([f"live/gate=rtsp://127.0.0.1:{port}/cam"]),
            "MEDIASERVER_PULL_ALLOW_LOOPBACK": "true",
            "MEDIASERVER_PULL_ON_DEMAND": '["live/*"]',
            "MEDIASERVER_PULL_ON_DEMAND_IDLE": str(args.idle),
        },
    )
    cold: list[float] = []
    warm: list[float] = []
    try:
        server.start()
        url = f"rtmp://127.0.0.1:{server.rtmp_port}/live/gate"
        for round_number in range(args.joins):
            cold.append(first_frame(url))
            warm.append(first_frame(url))
            log(f"round {round_number + 1}: cold {cold[-1]:.2f} s, warm {warm[-1]:.2f} s")
            deadline = time.monotonic() + args.idle + 20
            while time.monotonic() < deadline and json.loads(http_get(server.url("/api/v1/streams")))["streams"]:
                time.sleep(0.2)
            time.sleep(0.5)
    finally:
        server.stop()
        camera.kill()
        camera.wait()
    print(f"cold (source stopped): median {statistics.median(cold):.2f} s, max {max(cold):.2f} s")
    print(f"warm (source live):    median {statistics.median(warm):.2f} s, max {max(warm):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
