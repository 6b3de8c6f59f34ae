"""WebRTC (WHEP) load benchmark: one RTMP publisher, N aiortc WHEP viewers on 127.0.0.1.

    python -m benchmarks.webrtc_load --viewers 10,25,50,100 --workers 2 --warmup 4 --duration 10

The tool starts the server (`python -m mediaserver serve` on free loopback ports, ICE host candidates on
127.0.0.1), publishes the reference clip over RTMP at real-time pace from this process, and adds viewers
level by level (10, then 25, ... in total), measuring each level over a window. Viewers run in `--workers`
separate processes (`benchmarks.webrtc_viewers`; this machine's cores are shared by the server and the
load generator: the viewers' own CPU, and everything else the machine ran, are reported so a saturated
machine shows). The first `--full-viewers` viewers are complete aiortc receivers; the others are "light":
same ICE, DTLS, RTCP and consent as a full one, so the server does the same work for them, but they count
the SRTP packets instead of decrypting them (half the load-generator CPU per viewer).

Measured per level, over the window:
- server CPU: utime+stime of the server process tree from /proc, % of one core; per viewer: the increase
  over the level with 0 viewers (publisher only), divided by the viewers;
- set-up time: from the WHEP POST to the first complete video frame received by that viewer (the viewers
  that joined at this level);
- the server's event-loop lag: `mediaserver_event_loop_lag_max_seconds` scraped every second (worst
  oversleep of a 100 ms sleep since the previous scrape), and the mean oversleep over the window; the p99 of
  the per-second maxima is an upper bound of the p99 of the 100 ms samples (use --duration 30 or more);
- how far the send path fell behind: `mediaserver_webrtc_send_queue_delay_seconds` (the oldest waiting send
  batch) sampled every second, its maximum; past 0.25 s delta frames are dropped;
- what the send path had to repair over the window: RTP packets viewers asked again (NACK) and those resent,
  keyframe requests answered with the cached GOP, frames dropped for viewers that fell behind;
- delivery latency: every video frame the publisher sends carries its send time (wall clock) in an SEI NAL
  unit (user data unregistered) inserted into the AVCC payload; the server forwards it untouched; each viewer
  takes the encoded frame as soon as aiortc has re-assembled it (its decoder queue is tapped, nothing is
  decoded); the time is taken when the frame's last RTP packet (marker bit) arrives, now - send time. This
  is publisher-send to viewer-receive latency (RTMP in, hub, RTP packetising, SRTP, UDP, SRTP), on one
  machine and one clock. It leaves out
  the camera's encoder and the player's jitter buffer, decoder and display, which depend on the client, not
  the server; the browser test prints the receive-to-display time Chromium adds (20-100 ms).
Percentiles are `benchmarks.lib.stats.percentile` (nearest rank), as in every tool.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.lib.clip import CHUNK_SIZE, Clip, ensure_clip
from benchmarks.lib.flvfile import TAG_SCRIPT, TAG_VIDEO
from benchmarks.lib.procfs import cpu_use, read_cpu, rss_bytes
from benchmarks.lib.report import format_table, write_report
from benchmarks.lib.runner import log
from benchmarks.lib.servers import OurServer
from benchmarks.lib.stats import percentile, percentiles
from benchmarks.webrtc_viewers import Worker, sei_nal
from mediaserver.rtmp.client import RtmpClient

APP, STREAM = "live", "webrtc-bench"
LOOP_LAG_MAX = "mediaserver_event_loop_lag_max_seconds"
OVERSLEEP_TOTAL = "mediaserver_event_loop_oversleep_seconds_total"
LAG_SAMPLES_TOTAL = "mediaserver_event_loop_lag_samples_total"
SEND_QUEUE_DELAY = "mediaserver_webrtc_send_queue_delay_seconds"
# Send-path repairs, counted over a level's window.
REPAIRS = {
    "nack_packets": "mediaserver_webrtc_nack_requested_packets_total",
    "retransmitted": "mediaserver_webrtc_rtp_retransmitted_packets_total",
    "gop_resends": "mediaserver_webrtc_gop_resends_total",
    "frames_dropped": "mediaserver_webrtc_frames_dropped_total",
}


def webrtc_server(keep_temp: bool, max_sessions: int, log_level: str) -> OurServer:
    env = {
        "MEDIASERVER_WEBRTC_HOST_ADDRESSES": "127.0.0.1",
        "MEDIASERVER_WEBRTC_MAX_SESSIONS": str(max_sessions),
        "MEDIASERVER_WEBRTC_SESSION_TIMEOUT": "20",
    }
    return OurServer(keep_temp, prefix="webrtc-bench", env=env, log_level=log_level)


class Publisher:
    """Replays the clip's audio/video tags over RTMP at real-time pace, looping, SEI send times in video."""

    def __init__(self, clip: Path) -> None:
        messages = Clip.read(clip)
        self.config = [(m.type_id, m.payload) for m in messages.messages if m.config and m.type_id != TAG_SCRIPT]
        # (type, timestamp, body, is_avc_frame): legacy AVC frames get the SEI after their 5-byte header.
        self.media = [
            (m.type_id, m.timestamp, m.payload, m.type_id == TAG_VIDEO and m.media_offset == 5) for m in messages.media
        ]
        self.duration_ms = messages.duration_ms
        self.client = RtmpClient()
        self.sent_frames = 0
        self.max_late = 0.0
        self._task: asyncio.Task[None] | None = None

    async def start(self, port: int) -> None:
        await self.client.connect("127.0.0.1", port, APP)
        self.client.set_chunk_size(CHUNK_SIZE)
        await self.client.publish(STREAM)
        for type_id, body in self.config:
            self.client.write_message(type_id, 0, body)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        loops = 0
        while True:
            base = loops * self.duration_ms
            for type_id, timestamp, body, avc in self.media:
                due = start + (base + timestamp) / 1000
                delay = due - loop.time()
                if delay > 0.001:
                    await asyncio.sleep(delay)
                else:
                    self.max_late = max(self.max_late, -delay)
                if avc:
                    sei = sei_nal(int(time.time() * 1e6))
                    body = body[:5] + len(sei).to_bytes(4, "big") + sei + body[5:]
                    self.sent_frames += 1
                self.client.write_message(type_id, base + timestamp, body)
            loops += 1

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.client.close()


@dataclass
class Level:
    viewers: int
    receiving: int = 0
    server_cpu_pct: float = 0.0
    cpu_per_viewer_pct: float | None = None
    viewers_cpu_pct: float = 0.0
    # Everything else on the machine (other users' work included), % of one core: a noisy machine shows here.
    others_cpu_pct: float = 0.0
    server_rss_mb: float = 0.0
    setup_ms_p50: float | None = None
    setup_ms_p95: float | None = None
    setup_ms_max: float | None = None
    # Light viewers: POST to the first RTP packet.
    first_packet_ms_p50: float | None = None
    failed: list[str] = field(default_factory=list)
    loop_lag_ms_mean: float | None = None
    loop_lag_ms_p50_of_max: float | None = None
    loop_lag_ms_p99_of_max: float | None = None
    loop_lag_ms_max: float | None = None
    # The send queue's oldest batch, sampled every second: how far the send path fell behind.
    send_delay_ms_max: float | None = None
    # Over the window: packets asked again (NACK), resent, cached GOPs resent on PLI, frames dropped.
    repairs: dict[str, int] = field(default_factory=dict)
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    latency_ms_p99: float | None = None
    latency_ms_max: float | None = None
    frames_per_viewer_per_s: float | None = None
    publisher_max_late_ms: float = 0.0


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def _ms_percentiles(seconds: list[float], pcts: tuple[float, ...]) -> dict[str, float | None]:
    return percentiles([s * 1000 for s in seconds], pcts)


async def measure(
    server: OurServer, workers: list[Worker], publisher: Publisher, viewers: int, warmup: float, duration: float
) -> Level:
    level = Level(viewers)
    await asyncio.sleep(warmup)
    await asyncio.to_thread(lambda: [w.call({"cmd": "reset"}) for w in workers])
    worker_pids = [w.process.pid for w in workers]
    before = read_cpu(server.pids() + worker_pids)
    metrics = server.scrape()
    lag_before = (metrics.get(OVERSLEEP_TOTAL, 0.0), metrics.get(LAG_SAMPLES_TOTAL, 0.0))
    repairs_before = {name: metrics.get(metric, 0.0) for name, metric in REPAIRS.items()}
    lag_max: list[float] = []
    send_delays: list[float] = []
    end = time.monotonic() + duration
    while time.monotonic() < end:
        await asyncio.sleep(1.0)
        sample = server.scrape()
        lag_max.append(sample.get(LOOP_LAG_MAX, 0.0))
        send_delays.append(sample.get(SEND_QUEUE_DELAY, 0.0))
    server_pids = server.pids()
    use = cpu_use(before, read_cpu(server_pids + worker_pids))
    metrics = server.scrape()
    level.server_cpu_pct = round(use.pct(server_pids), 1)
    level.viewers_cpu_pct = round(use.pct(worker_pids), 1)
    level.others_cpu_pct = round(use.other_pct(use.pct(server_pids), use.pct(worker_pids)), 1)
    level.server_rss_mb = round(rss_bytes(server.pids()) / 1e6, 1)
    oversleep = metrics.get(OVERSLEEP_TOTAL, 0.0) - lag_before[0]
    samples = metrics.get(LAG_SAMPLES_TOTAL, 0.0) - lag_before[1]
    level.loop_lag_ms_mean = _ms(oversleep / samples) if samples else None
    level.loop_lag_ms_p50_of_max = _ms(percentile(lag_max, 50))
    level.loop_lag_ms_p99_of_max = _ms(percentile(lag_max, 99))
    level.send_delay_ms_max = _ms(max(send_delays)) if send_delays else None
    level.repairs = {name: int(metrics.get(metric, 0.0) - repairs_before[name]) for name, metric in REPAIRS.items()}
    level.loop_lag_ms_max = _ms(max(lag_max)) if lag_max else None
    reports = await asyncio.to_thread(lambda: [w.call({"cmd": "report"}) for w in workers])
    latency = _ms_percentiles([x for r in reports for x in r["latency"]], (50, 95, 99, 100))
    level.receiving = sum(r["receiving"] for r in reports)
    level.latency_ms_p50, level.latency_ms_p95 = latency["p50"], latency["p95"]
    level.latency_ms_p99, level.latency_ms_max = latency["p99"], latency["max"]
    full = sum(r["full"] for r in reports)
    if full:
        level.frames_per_viewer_per_s = round(sum(r["frames"] for r in reports) / full / use.elapsed, 1)
    level.publisher_max_late_ms = round(publisher.max_late * 1000, 1)
    publisher.max_late = 0.0
    return level


def _shares(count: int, workers: int, full_left: int) -> tuple[list[int], list[int]]:
    """`count` new viewers spread over the workers, and how many of each share are full viewers."""
    shares = [count // workers + (1 if i < count % workers else 0) for i in range(workers)]
    fulls: list[int] = []
    for share in shares:
        fulls.append(min(share, (full_left + workers - 1) // workers, full_left - sum(fulls)))
    return shares, fulls


async def run(args: argparse.Namespace) -> list[Level]:
    targets = sorted({int(v) for v in args.viewers.split(",") if v.strip()})
    clip = ensure_clip(args.clip)
    server = webrtc_server(args.keep_temp, max(targets) + 10, args.server_log_level)
    workers: list[Worker] = []
    publisher = Publisher(clip)
    levels: list[Level] = []
    try:
        server.start()
        log(f"server pid {server.pid} http :{server.http_port}")
        await publisher.start(server.rtmp_port)
        workers = [Worker() for _ in range(args.workers)]
        url = server.url(f"/whep/{APP}/{STREAM}")
        await asyncio.sleep(2.5)  # a GOP in the cache
        baseline = await measure(server, workers, publisher, 0, 0.5, args.duration)
        levels.append(baseline)
        log(f"0 viewers: server {baseline.server_cpu_pct}% cpu")
        current = 0
        full_left = args.full_viewers
        for target in targets:
            setups: list[float] = []
            first_packets: list[float] = []
            failed: list[str] = []
            shares, fulls = _shares(target - current, len(workers), full_left)

            def add(worker: Worker, count: int, full: int) -> dict[str, Any]:
                command = {"cmd": "add", "count": count, "full": full, "url": url, "interval": args.join_interval}
                return worker.call(command)

            results = await asyncio.gather(
                *(asyncio.to_thread(add, w, n, f) for w, n, f in zip(workers, shares, fulls, strict=True) if n)
            )
            full_left -= sum(fulls)
            for result in results:
                setups.extend(result["setup"])
                first_packets.extend(result["setup_light"])
                failed.extend(result["failed"])
            current = target
            level = await measure(server, workers, publisher, target, args.warmup, args.duration)
            setup = _ms_percentiles(setups, (50, 95, 100))
            level.setup_ms_p50, level.setup_ms_p95, level.setup_ms_max = setup["p50"], setup["p95"], setup["max"]
            level.first_packet_ms_p50 = _ms_percentiles(first_packets, (50,))["p50"]
            level.failed = failed[:5] + ([f"... {len(failed) - 5} more"] if len(failed) > 5 else [])
            if target:
                level.cpu_per_viewer_pct = round((level.server_cpu_pct - baseline.server_cpu_pct) / target, 3)
            levels.append(level)
            log(
                f"{target} viewers ({level.receiving} receiving): server {level.server_cpu_pct}% cpu "
                f"({level.cpu_per_viewer_pct}%/viewer), viewers {level.viewers_cpu_pct}% cpu, "
                f"others {level.others_cpu_pct}% cpu, "
                f"setup p50 {level.setup_ms_p50} ms, latency p50/p95 {level.latency_ms_p50}/{level.latency_ms_p95} ms, "
                f"loop lag mean/p99/max {level.loop_lag_ms_mean}/{level.loop_lag_ms_p99_of_max}/"
                f"{level.loop_lag_ms_max} ms, repairs {level.repairs}, failed {len(failed)}"
            )
            if len(failed) > target // 2:
                log("more than half of the new viewers failed: stopping here")
                break
    finally:
        for worker in workers:
            worker.stop()
        await publisher.stop()
        server.stop()
    return levels


def _show(value: object) -> str:
    return "-" if value is None else str(value)


COLUMNS: list[tuple[str, Callable[[Level], str]]] = [
    ("viewers", lambda lv: str(lv.viewers)),
    ("receiving", lambda lv: str(lv.receiving)),
    ("server CPU %", lambda lv: str(lv.server_cpu_pct)),
    ("CPU %/viewer", lambda lv: _show(lv.cpu_per_viewer_pct)),
    ("viewers' CPU %", lambda lv: str(lv.viewers_cpu_pct)),
    ("others' CPU %", lambda lv: str(lv.others_cpu_pct)),
    ("RSS MB", lambda lv: str(lv.server_rss_mb)),
    ("set-up p50/p95 ms (first frame)", lambda lv: f"{_show(lv.setup_ms_p50)} / {_show(lv.setup_ms_p95)}"),
    ("first packet p50 ms", lambda lv: _show(lv.first_packet_ms_p50)),
    (
        "loop lag mean / p50, p99 of 1 s max / max ms",
        lambda lv: (
            f"{_show(lv.loop_lag_ms_mean)} / {_show(lv.loop_lag_ms_p50_of_max)}, {_show(lv.loop_lag_ms_p99_of_max)}"
            f" / {_show(lv.loop_lag_ms_max)}"
        ),
    ),
    ("send queue delay max ms", lambda lv: _show(lv.send_delay_ms_max)),
    (
        "NACKed / resent / GOP resends / dropped",
        lambda lv: " / ".join(str(lv.repairs.get(name, 0)) for name in REPAIRS),
    ),
    (
        "latency p50/p95/p99 ms",
        lambda lv: f"{_show(lv.latency_ms_p50)} / {_show(lv.latency_ms_p95)} / {_show(lv.latency_ms_p99)}",
    ),
    ("fps/viewer", lambda lv: _show(lv.frames_per_viewer_per_s)),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--viewers", default="10,25,50,100", help="viewer totals to measure, comma-separated")
    parser.add_argument("--workers", type=int, default=2, help="viewer processes")
    parser.add_argument("--warmup", type=float, default=4.0, help="seconds after a level's viewers joined")
    parser.add_argument("--duration", type=float, default=10.0, help="measurement window, seconds")
    parser.add_argument(
        "--full-viewers",
        type=int,
        default=20,
        help="viewers that decrypt and re-assemble frames (latency, set-up, fps); the rest count packets only",
    )
    parser.add_argument("--join-interval", type=float, default=0.05, help="seconds between joins in a worker")
    parser.add_argument("--clip", type=Path, default=None, help="FLV clip (default: the reference clip)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures there")
    parser.add_argument("--keep-temp", action="store_true", help="keep the server's temp dir (its log)")
    parser.add_argument("--server-log-level", default="warning")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    levels = asyncio.run(run(args))
    print(format_table(levels, COLUMNS))
    if args.json is not None:
        write_report(args.json, args, started, levels, key="levels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
