"""How long a viewer waits for the first frame of a live RTMP stream, as users measure it, and how far behind live
it starts.

One publisher (ffmpeg: testsrc2 1280x720 at `--fps`, libx264 with a keyframe every `--gop` frames, AAC), then
`--joins` joins per client, each at a different point of the GOP (seeded, spread over it):
- `ffmpeg`: `ffmpeg -nostdin -v error -i URL -frames:v 1 -f null -` from start to exit (FFmpeg's default probing,
  as ffplay, VLC and OBS's media source do it);
- `gst`: `gst-launch-1.0 rtmp2src ! flvdemux ! h264parse ! avdec_h264 ! fakesink num-buffers=1` from start to exit;
- `rtmpdump`: `rtmpdump --live -o -` until the first H.264 picture arrives on its output (it does not decode);
- `behind`: our RTMP client; the media time the first second of data spans beyond what arrived at once, i.e. how
  far behind the live edge the player starts (the burst's length).
The same for nginx-rtmp in the same run (`--target both`). p50, p95 and max per client.

    python -m benchmarks.rtmp_join --target both --joins 20
    python -m benchmarks.rtmp_join --target ours --server-env MEDIASERVER_HUB_JOIN_MIN_VIDEO_FRAMES=0
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.lib.report import format_table, ms, write_report
from benchmarks.lib.runner import log
from benchmarks.lib.servers import NginxServer, OurServer, Server
from benchmarks.lib.stats import percentile
from mediaserver.rtmp.client import RtmpClient

CLIENTS = ("ffmpeg", "gst", "rtmpdump", "behind")
FLV_VIDEO = 9
# Messages arriving within this long of the first picture count as the join burst (live ones come 1/fps apart).
BURST_WINDOW = 0.15


@dataclass
class ClientFigures:
    target: str
    client: str
    joins: int
    p50_ms: float | None
    p95_ms: float | None
    max_ms: float | None
    failures: int
    samples_ms: list[float] = field(default_factory=list)


def _publisher(url: str, args: argparse.Namespace, seconds: float) -> subprocess.Popen[bytes]:
    command = [
        "ffmpeg", "-nostdin", "-v", "error", "-re",
        "-f", "lavfi", "-i", f"testsrc2=size=1280x720:rate={args.fps}",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
        "-t", str(seconds),
        "-c:v", "libx264", "-preset", "veryfast", "-g", str(args.gop), "-b:v", "2M", "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-b:a", "128k", "-f", "flv", url,
    ]  # fmt: skip
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _timed(command: list[str], timeout: float) -> float | None:
    started = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return None
    return time.monotonic() - started if done.returncode == 0 else None


def _rtmpdump_first_picture(url: str, timeout: float) -> float | None:
    """Seconds from starting rtmpdump to the first H.264 picture (not the sequence header) on its output."""
    started = time.monotonic()
    process = subprocess.Popen(
        ["rtmpdump", "-q", "--live", "-r", url, "-o", "-"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert process.stdout is not None
    try:
        head = process.stdout.read(13)  # FLV header and the first PreviousTagSize
        if len(head) < 13:
            return None
        while time.monotonic() - started < timeout:
            tag = process.stdout.read(11)
            if len(tag) < 11:
                return None
            size = int.from_bytes(tag[1:4], "big")
            body = process.stdout.read(size + 4)
            if tag[0] == FLV_VIDEO and len(body) > 1 and body[1] == 1:
                return time.monotonic() - started
        return None
    finally:
        process.kill()
        process.wait()


async def _behind_live(host: str, port: int, name: str) -> float | None:
    """Milliseconds of media a new player gets at once: how far behind the live edge it starts."""
    async with RtmpClient() as player:
        await player.connect(host, port, "live")
        await player.play(name)
        first: tuple[float, int] | None = None
        newest = 0
        while True:
            message = await asyncio.wait_for(player.read_message(), 10)
            if message is None:
                return None
            if message.type_id != FLV_VIDEO or len(message.payload) < 2 or message.payload[1] != 1:
                continue
            now = time.monotonic()
            if first is None:
                first = (now, message.timestamp)
            elif now - first[0] > BURST_WINDOW:
                return float(newest - first[1])
            newest = message.timestamp


def _join(client: str, url: str, port: int, name: str) -> float | None:
    if client == "ffmpeg":
        return _timed(["ffmpeg", "-nostdin", "-v", "error", "-i", url, "-frames:v", "1", "-f", "null", "-"], 20)
    if client == "gst":
        pipeline = [
            "gst-launch-1.0", "-q", "rtmp2src", f"location={url}", "!", "flvdemux", "name=d",
            "d.video", "!", "queue", "!", "h264parse", "!", "avdec_h264", "!", "fakesink", "num-buffers=1",
        ]  # fmt: skip
        return _timed(pipeline, 20)
    if client == "rtmpdump":
        return _rtmpdump_first_picture(url, 20)
    behind = asyncio.run(_behind_live("127.0.0.1", port, name))
    return None if behind is None else behind / 1000


def _available(client: str) -> bool:
    tool = {"ffmpeg": "ffmpeg", "gst": "gst-launch-1.0", "rtmpdump": "rtmpdump"}.get(client)
    return tool is None or shutil.which(tool) is not None


def run_target(target: str, args: argparse.Namespace) -> list[ClientFigures]:
    server: Server = (
        OurServer(args.keep_temp, env=dict(args.server_env)) if target == "ours" else NginxServer(args.keep_temp)
    )
    clients = [c for c in args.clients.split(",") if c]
    gop_seconds = args.gop / args.fps
    seconds = 8 + len(clients) * args.joins * (gop_seconds + 2.5)
    server.start()
    rng = random.Random(args.seed)
    results: list[ClientFigures] = []
    try:
        name = "join"
        url = f"rtmp://127.0.0.1:{server.rtmp_port}/live/{name}"
        publisher = _publisher(url, args, seconds)
        try:
            time.sleep(args.warmup)
            for client in clients:
                if not _available(client):
                    log(f"{target}: {client} is not installed, skipped")
                    continue
                samples: list[float] = []
                failures = 0
                for index in range(args.joins):
                    # Spread the joins over the GOP: the wait before each lands on a different phase of it.
                    time.sleep((index / args.joins) * gop_seconds + rng.uniform(0.05, 0.3))
                    took = _join(client, url, server.rtmp_port, name)
                    if took is None:
                        failures += 1
                    else:
                        samples.append(round(took * 1000, 1))
                results.append(
                    ClientFigures(
                        target,
                        client,
                        args.joins,
                        percentile(samples, 50),
                        percentile(samples, 95),
                        max(samples, default=None),
                        failures,
                        samples,
                    )
                )
                log(f"{target} {client}: p50 {ms(results[-1].p50_ms)} ms, p95 {ms(results[-1].p95_ms)} ms")
        finally:
            publisher.kill()
            publisher.wait()
    finally:
        server.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=("ours", "nginx", "both"), default="both")
    parser.add_argument("--joins", type=int, default=20, help="joins per client")
    parser.add_argument("--clients", default=",".join(CLIENTS), help=f"comma-separated, of {', '.join(CLIENTS)}")
    parser.add_argument("--gop", type=int, default=50, help="frames between the publisher's keyframes")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of publishing before the first join")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--keep-temp", action="store_true")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        type=lambda text: tuple(text.split("=", 1)),
        metavar="NAME=VALUE",
        help="a setting for our server, e.g. MEDIASERVER_HUB_JOIN_MIN_VIDEO_FRAMES=0 (repeatable)",
    )
    args = parser.parse_args()
    if args.joins < 1 or args.joins > 200:
        parser.error("--joins must be within 1..200")
    started = time.monotonic()
    targets = ["ours", "nginx"] if args.target == "both" else [args.target]
    results: list[ClientFigures] = []
    for target in targets:
        results += run_target(target, args)
    print()
    print(
        format_table(
            results,
            [
                ("target", lambda r: r.target),
                ("client", lambda r: r.client),
                ("joins", lambda r: f"{r.joins - r.failures}/{r.joins}"),
                ("p50 ms", lambda r: ms(r.p50_ms)),
                ("p95 ms", lambda r: ms(r.p95_ms)),
                ("max ms", lambda r: ms(r.max_ms)),
            ],
        )
    )
    print("\n(`behind`: how far behind live a new player starts, ms of media; the others: time to the first frame)")
    if args.json is not None:
        write_report(args.json, args, started, results)
    sys.exit(0 if all(not r.failures for r in results) else 1)


if __name__ == "__main__":
    main()
