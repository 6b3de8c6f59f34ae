"""RTMP load benchmark: N publishers replaying the reference clip, M players per stream.

    python -m benchmarks.rtmp_load --target both --publishers 10 --players 1 --warmup 5 --duration 12

The tool starts the server under test itself (ours: `python -m mediaserver serve` on free
loopback ports; nginx: nginx-rtmp with /work/shared/bench/nginx-rtmp-anchor.conf), drives it
from this one process, measures, and stops everything it started, on errors and Ctrl-C too.

Publishers replay the clip's FLV tags at real-time pace, pre-chunked at chunk size 4096 (one
encoding per clip loop, shared by all publishers, timestamps carried forward loop after loop).
Players `play` each stream, read and discard, time the first video keyframe after `play`,
and in the window time each video message from when its publisher was due to send it to its
arrival (delivery latency: it grows when the server falls behind).

Over the measurement window: the server's CPU (utime+stime of the server process and its
children from /proc, % of one core), its VmRSS at the end, bytes in and out as seen by the
publishers and players, this process's own CPU and how late its publishers send (if it
saturates, the figures measure the load generator, not the server), disconnects and errors,
and packet drops (ours: `mediaserver_packets_dropped` from /metrics; nginx: `dropped` in /stat).
The shared pieces (servers, publishers, measurement, report) are in `benchmarks.lib`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks.lib.clip import EncodedClip
from benchmarks.lib.measure import LOADGEN_COLUMNS, TargetResult, WindowMeter
from benchmarks.lib.metrics import server_figures
from benchmarks.lib.procfs import rss_bytes
from benchmarks.lib.publish import APP, Publisher, PublisherFleet, Window
from benchmarks.lib.report import ms, print_summary, ratios, write_report
from benchmarks.lib.runner import add_target_arguments, log, raise_fd_limit, run_interruptible, run_targets
from benchmarks.lib.servers import NginxServer, make_server
from benchmarks.lib.stats import percentiles
from mediaserver.formats.flv import FlvError, parse_video
from mediaserver.rtmp import chunk
from mediaserver.rtmp.chunk import Message
from mediaserver.rtmp.client import RtmpClient


class Player:
    def __init__(self, publisher: Publisher, index: int, window: Window) -> None:
        self.publisher = publisher
        self.index = index
        self.window = window
        self.client = RtmpClient(self._on_message, on_close=self._on_close)
        self.first_keyframe_ms: float | None = None
        self.playing = False
        self.error: str | None = None
        self.stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def _on_message(self, message: Message) -> None:
        if message.type_id != chunk.VIDEO or self.first_keyframe_ms is not None:
            return
        try:
            packet = parse_video(message.payload, message.timestamp)
        except FlvError:
            return
        if packet is not None and packet.keyframe and not packet.is_config:
            sent = self.client.play_sent_at
            if sent is not None and self._loop is not None:
                self.first_keyframe_ms = (self._loop.time() - sent) * 1000
            # From here on the player reads and discards, timing video messages in the window.
            self.client.on_message = self._on_media

    def _on_media(self, message: Message) -> None:
        if message.type_id == chunk.VIDEO and self.window.active and self._loop is not None:
            due = self.publisher.t0 + message.timestamp / 1000
            self.window.latency_ms.append((self._loop.time() - due) * 1000)

    def _on_close(self, exc: Exception | None) -> None:
        if self.playing and not self.stopping:
            self.error = f"disconnected: {exc}" if exc else "disconnected by the server"
        self.playing = False

    async def start(self, host: str, port: int) -> bool:
        self._loop = asyncio.get_running_loop()
        try:
            await self.client.connect(host, port, APP)
            await self.client.play(self.publisher.name)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self.client.abort()
            return False
        self.playing = not self.client.closed
        return self.playing

    def stop(self) -> None:
        self.stopping = True
        self.client.abort()


@dataclass(kw_only=True)
class RunResult(TargetResult):
    publishers: int = 0
    players_per_stream: int = 0
    rss_mb_per_stream: float = 0.0
    first_keyframe_p50_ms: float | None = None
    first_keyframe_p99_ms: float | None = None
    first_keyframe_max_ms: float | None = None
    first_keyframe_ms_by_join: list[float | None] = field(default_factory=list)
    players_with_keyframe: int = 0
    players_total: int = 0
    player_errors: int = 0
    drops_by_reason: dict[str, int] = field(default_factory=dict)
    delivery_latency_p50_ms: float = 0.0
    delivery_latency_p99_ms: float = 0.0
    delivery_latency_max_ms: float = 0.0
    publisher_max_backlog_bytes: int = 0
    hls_segments: int | None = None
    # From our server's /metrics over the window: event-loop lag, GC, HLS memory.
    server_metrics: dict[str, float] = field(default_factory=dict)


async def run_target(target: str, args: argparse.Namespace, clip: EncodedClip) -> RunResult:
    n, m = args.publishers, args.players
    result = RunResult(target=target, publishers=n, players_per_stream=m, players_total=n * m)
    server = make_server(target, args.keep_temp)
    loop = asyncio.get_running_loop()
    window = Window()
    fleet = PublisherFleet(clip, window)
    players: list[Player] = []
    log(f"[{target}] starting the server (temp {server.root})")
    try:
        server.start()  # blocking on purpose: nothing else runs yet, and Ctrl-C waits for it
        result.rss_idle_mb = round(rss_bytes(server.pids()) / 1e6, 1)
        log(f"[{target}] starting {n} publishers, {args.start_interval * 1000:.0f} ms apart")
        live = await fleet.start(n, server.rtmp_port, args.start_interval)
        log(f"[{target}] {live}/{n} publishers live")
        await asyncio.sleep(args.player_delay)
        # Spread the joins over at least one GOP so that they sample every point of it.
        interval = max(args.player_interval, args.join_spread / max(1, n * m))
        log(f"[{target}] starting {n * m} players, {interval * 1000:.0f} ms apart")
        plays: list[asyncio.Task[bool]] = []
        for j in range(m):
            for publisher in fleet.publishers:
                player = Player(publisher, j, window)
                players.append(player)
                plays.append(loop.create_task(player.start("127.0.0.1", server.rtmp_port)))
                await asyncio.sleep(interval)
        playing = sum(await asyncio.gather(*plays))
        log(f"[{target}] {playing}/{n * m} players playing; warm-up {args.warmup} s")
        await asyncio.sleep(args.warmup)

        log(f"[{target}] measuring for {args.duration} s")
        try:  # also starts a new "worst event-loop lag" period in our server
            metrics0 = await asyncio.to_thread(server.scrape)
        except OSError:
            metrics0 = {}
        meter = WindowMeter(server, fleet)
        received0 = sum(p.client.bytes_received for p in players)
        meter.open()
        await asyncio.sleep(args.duration)
        meter.close()
        received1 = sum(p.client.bytes_received for p in players)

        meter.fill(result, n)
        result.rss_mb_per_stream = round(meter.rss / 1e6 / n, 3)
        result.out_mbps = meter.mbps(received1 - received0)
        result.publisher_max_backlog_bytes = max((p.max_backlog for p in fleet.publishers), default=0)
        latency = percentiles(window.latency_ms, (50, 99, 100))
        result.delivery_latency_p50_ms = latency["p50"] or 0.0
        result.delivery_latency_p99_ms = latency["p99"] or 0.0
        result.delivery_latency_max_ms = latency["max"] or 0.0
        result.first_keyframe_ms_by_join = [
            None if p.first_keyframe_ms is None else round(p.first_keyframe_ms, 1) for p in players
        ]
        keyframes = [p.first_keyframe_ms for p in players if p.first_keyframe_ms is not None]
        result.players_with_keyframe = len(keyframes)
        first = percentiles(keyframes, (50, 99, 100))
        result.first_keyframe_p50_ms, result.first_keyframe_p99_ms = first["p50"], first["p99"]
        result.first_keyframe_max_ms = first["max"]
        result.player_errors = sum(1 for p in players if p.error is not None)
        result.error_samples = fleet.errors()[:5]
        result.error_samples += [
            f"player {p.index} of {p.publisher.name}: {p.error}" for p in players if p.error is not None
        ][:5]
        try:
            metrics1 = await asyncio.to_thread(server.scrape)
            result.drops, result.drops_by_reason = await asyncio.to_thread(server.drops)
        except OSError as exc:
            metrics1 = {}
            log(f"[{target}] could not read the server's counters: {exc}")
        if metrics0 and metrics1:
            result.server_metrics = server_figures(metrics0, metrics1)
        if isinstance(server, NginxServer):
            result.hls_segments = server.hls_segments()
        result.server_log_problems = server.log_problems()
        log(f"[{target}] done: server CPU {result.server_cpu_pct}%, generator CPU {result.loadgen_cpu_pct}%")
        return result
    finally:
        for player in players:
            player.stop()
        await fleet.stop()
        await asyncio.sleep(0.2)
        log(f"[{target}] stopping the server")
        server.stop()


COLUMNS: list[tuple[str, Callable[[RunResult], str]]] = [
    ("target", lambda r: r.target),
    ("N", lambda r: str(r.publishers)),
    ("M", lambda r: str(r.players_per_stream)),
    ("server CPU %", lambda r: f"{r.server_cpu_pct:.1f}"),
    ("CPU %/stream", lambda r: f"{r.cpu_pct_per_stream:.3f}"),
    ("RSS MB", lambda r: f"{r.rss_mb:.1f}"),
    ("RSS MB/stream", lambda r: f"{r.rss_mb_per_stream:.2f}"),
    ("1st key p50 ms", lambda r: ms(r.first_keyframe_p50_ms)),
    ("1st key p99 ms", lambda r: ms(r.first_keyframe_p99_ms)),
    ("pubs up", lambda r: f"{r.publishers_connected_at_end}/{r.publishers}"),
    ("errors pub/play", lambda r: f"{r.publisher_errors}/{r.player_errors}"),
    ("drops", lambda r: "n/a" if r.drops is None else str(r.drops)),
    ("in Mbit/s", lambda r: f"{r.in_mbps:.0f}"),
    ("out Mbit/s", lambda r: f"{r.out_mbps:.0f}"),
    ("latency p99 ms", lambda r: f"{r.delivery_latency_p99_ms:.0f}"),
    *LOADGEN_COLUMNS,
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.rtmp_load",
        description="RTMP publish/play load against our server and/or nginx-rtmp, one after the other.",
    )
    add_target_arguments(parser)
    parser.add_argument("--publishers", "-n", type=int, default=10, help="streams, one publisher each")
    parser.add_argument("--players", "-m", type=int, default=1, help="RTMP players per stream")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds after the last player starts")
    parser.add_argument("--player-interval", type=float, default=0.01, help="seconds between player starts")
    parser.add_argument(
        "--join-spread", type=float, default=2.0, help="spread the player joins over at least this many seconds"
    )
    parser.add_argument("--player-delay", type=float, default=1.0, help="seconds between the publishers and players")
    args = parser.parse_args(argv)
    if args.publishers < 1 or args.players < 0 or args.duration <= 0 or args.warmup < 0:
        parser.error("need --publishers >= 1, --players >= 0, --duration > 0, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_fd_limit(2 * (args.publishers * (1 + args.players)) + 512)
    started = time.monotonic()
    results = run_interruptible(run_targets(args, run_target))
    if results is None:
        return 130
    ratio = ratios(results)
    print_summary(results, COLUMNS, ratio)
    if args.json is not None:
        write_report(args.json, args, started, results, ratio)
    return 0


if __name__ == "__main__":
    sys.exit(main())
