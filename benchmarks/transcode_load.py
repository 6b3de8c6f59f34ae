"""Transcoding cost per ABR rung: one 1080p30 source, one ladder worker, CPU per rung.

A clip (`--size`, `--rate`, H.264 veryfast + AAC, made once with ffmpeg and cached) is published in a loop with
`ffmpeg -re -c copy` (no encode on our side of the window), and our server transcodes it with `[transcode]` on.
Each run (`--runs`, e.g. `720p,480p,720p+480p`) configures the ladder with those rungs only and keeps each rung
watched by an RTMP reader (`ffmpeg -c copy -f null`), so the worker runs; the window measures the worker
process (decode once + scale + encode each rung), the server process (ingest, the feed to the worker, the rungs'
fan-out), the rungs' frame rates from `mediaserver_transcode_frames_total` and the skipped packets. The cost of
decoding alone follows from the runs: (720p alone + 480p alone) - (720p+480p). Bounded in time; stops by itself.

    python -m benchmarks.transcode_load --runs 720p,480p,720p+480p --duration 20
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.lib.clip import make_clip
from benchmarks.lib.metrics import family
from benchmarks.lib.procfs import cpu_use, process_tree, read_cpu, rss_bytes
from benchmarks.lib.report import format_table, write_report
from benchmarks.lib.runner import log
from benchmarks.lib.servers import OurServer, stop_process
from mediaserver.transcode.ladder import DEFAULT_LADDER, parse_ladder

CACHE = Path(__file__).resolve().parent / ".cache"


@dataclass
class RungRun:
    rungs: str
    worker_cpu_pct: float
    server_cpu_pct: float
    worker_rss_mb: float
    fps_by_rung: dict[str, float]
    dropped: int
    restarts: int


def _clip(size: str, rate: int, seconds: int) -> Path:
    path = CACHE / f"transcode-{size}-{rate}.flv"
    if not path.exists():
        log(f"making the {size}@{rate} clip {path}")
        make_clip(
            path,
            [
                "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}",
                "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
                "-t", str(seconds),
                "-c:v", "libx264", "-preset", "veryfast", "-g", str(2 * rate), "-b:v", "4M", "-pix_fmt", "yuv420p",
                "-c:a", "aac", "-b:a", "128k", "-ac", "2",
                "-f", "flv",
            ],
        )  # fmt: skip
    return path


def _ffmpeg(*args: str) -> subprocess.Popen[bytes]:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise SystemExit("ffmpeg is not installed")
    command = [ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", *args]
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)


def _workers(server: OurServer) -> list[int]:
    found = []
    for pid in process_tree(server.pid):
        try:
            if b"mediaserver.transcode.worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def run_level(names: list[str], args: argparse.Namespace, clip: Path) -> RungRun:
    ladder = {rung.name: rung for rung in parse_ladder(args.ladder.split(";"))}
    specs = [ladder[name].spec() for name in names]
    server = OurServer(
        args.keep_temp,
        prefix="transcode-bench",
        env={
            "MEDIASERVER_TRANSCODE_STREAMS": json.dumps(["live/*"]),
            "MEDIASERVER_TRANSCODE_LADDER": json.dumps(specs),
            "MEDIASERVER_TRANSCODE_PRESET": args.preset,
            "MEDIASERVER_TRANSCODE_THREADS": str(args.threads),
        },
    )
    server.start()
    children: list[subprocess.Popen[bytes]] = []
    try:
        rtmp = f"rtmp://127.0.0.1:{server.rtmp_port}/live"
        children.append(_ffmpeg("-re", "-stream_loop", "-1", "-i", str(clip), "-c", "copy", "-f", "flv", f"{rtmp}/cam"))
        time.sleep(2)
        for name in names:
            children.append(_ffmpeg("-i", f"{rtmp}/cam_{name}", "-c", "copy", "-f", "null", "-"))
        deadline = time.monotonic() + 30
        while not _workers(server) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(args.warmup)
        workers = _workers(server)
        if not workers:
            raise RuntimeError("no transcoding worker came up; see the server log")
        before_metrics = server.scrape()
        before = read_cpu(process_tree(server.pid))
        time.sleep(args.duration)
        after = read_cpu(process_tree(server.pid))
        after_metrics = server.scrape()
        use = cpu_use(before, after)
        frames_before = family(before_metrics, "mediaserver_transcode_frames_total")
        frames_after = family(after_metrics, "mediaserver_transcode_frames_total")
        fps = {
            name: round(
                (frames_after.get(f'rung="{name}"', 0) - frames_before.get(f'rung="{name}"', 0)) / use.elapsed, 1
            )
            for name in names
        }
        return RungRun(
            "+".join(names),
            round(use.pct(workers), 1),
            round(use.pct([server.pid]), 1),
            round(rss_bytes(workers) / 2**20, 1),
            fps,
            int(after_metrics.get("mediaserver_transcode_dropped_total", 0)),
            int(after_metrics.get("mediaserver_transcode_restarts_total", 0)),
        )
    finally:
        for child in children:
            stop_process(child, [])
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="720p,480p,720p+480p", help="comma-separated runs, rungs joined by +")
    parser.add_argument("--ladder", default=";".join(DEFAULT_LADDER), help="rung specs, ';'-separated")
    parser.add_argument("--size", default="1920x1080", help="the source's picture size")
    parser.add_argument("--rate", type=int, default=30, help="the source's frame rate")
    parser.add_argument("--preset", default="veryfast")
    parser.add_argument("--threads", type=int, default=2, help="[transcode] threads")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep-temp", action="store_true")
    args = parser.parse_args()
    runs = [[name for name in run.split("+") if name] for run in args.runs.split(",") if run]
    known = {rung.name for rung in parse_ladder(args.ladder.split(";"))}
    if not runs or any(not run or set(run) - known for run in runs):
        parser.error(f"--runs must name rungs of --ladder ({', '.join(sorted(known))})")
    if not 1 <= args.duration <= 600 or not 0 <= args.warmup <= 120:
        parser.error("--duration must be within 1..600 s and --warmup within 0..120 s")
    started = time.monotonic()
    clip = _clip(args.size, args.rate, 20)
    results: list[RungRun] = []
    for run in runs:
        log(f"rungs {'+'.join(run)} from {args.size}@{args.rate}")
        results.append(run_level(run, args, clip))
        time.sleep(2)
    print()
    print(
        format_table(
            results,
            [
                ("rungs", lambda r: r.rungs),
                ("worker CPU %", lambda r: f"{r.worker_cpu_pct}"),
                ("server CPU %", lambda r: f"{r.server_cpu_pct}"),
                ("worker RSS MB", lambda r: f"{r.worker_rss_mb}"),
                ("fps by rung", lambda r: " ".join(f"{k}={v}" for k, v in r.fps_by_rung.items())),
                ("dropped", lambda r: str(r.dropped)),
                ("restarts", lambda r: str(r.restarts)),
            ],
        )
    )
    if args.json is not None:
        write_report(args.json, args, started, results)


if __name__ == "__main__":
    main()
