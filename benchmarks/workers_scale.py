"""Worker processes: how many ingest+HLS streams one machine carries with 1, 2 ... workers, against nginx-rtmp.

For each server (ours with each `--workers` count, then nginx-rtmp with `hls on`) the tool adds publishers of the
reference clip level by level (`--levels`, in streams; publishers stay connected from one level to the next),
lets each level settle (`--warmup`) and measures a window (`--duration`):

- the server's CPU (every process of its tree: the parent and its workers), per stream;
- for ours, the event-loop lag p99 over the window, the worst worker's (from each worker's
  `mediaserver_event_loop_lag_sample_seconds` histogram: the upper bound of the bucket the 99th percentile falls
  in) and the packets dropped in the window (`mediaserver_packets_dropped_total`, every worker);
- the publishers still connected and the load generator's own CPU and send lateness (it runs on the same cores).

A level passes when every publisher is connected, nothing was dropped, the lag p99 is under `--lag-limit` and the
generator kept its pace (send lateness p99 under 100 ms); the server's figure is the largest level that passed.
nginx has no loop-lag figure: its levels pass on publishers and pace alone. The tool stops a server's ladder at
its first failed level.

    python -m benchmarks.workers_scale --workers 1,2 --levels 100,200,300,400,500,600 --nginx
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.lib.clip import EncodedClip, ensure_clip
from benchmarks.lib.measure import SATURATED_LAG_MS, TargetResult, WindowMeter
from benchmarks.lib.publish import PublisherFleet, Window
from benchmarks.lib.runner import log, raise_fd_limit, run_interruptible
from benchmarks.lib.servers import NginxServer, OurServer, Server, http_get

LAG_METRIC = "mediaserver_event_loop_lag_sample_seconds_bucket"


@dataclass
class Level(TargetResult):
    streams: int = 0
    lag_p99_ms: float | None = None
    drops_in_window: int = 0
    # How SO_REUSEPORT spread the publishers: streams held by each worker.
    streams_by_worker: dict[str, int] = field(default_factory=dict)
    passed: bool = False


@dataclass
class Ladder:
    server: str
    workers: int
    levels: list[Level] = field(default_factory=list)

    @property
    def carried(self) -> int:
        passed = [level.streams for level in self.levels if level.passed]
        return max(passed, default=0)


def lag_p99_ms(before: dict[str, float], after: dict[str, float]) -> float | None:
    """The worst worker's lag p99 over the window, from the histogram buckets' growth."""
    by_worker: dict[str, list[tuple[float, float]]] = {}
    for key, value in after.items():
        if not key.startswith(LAG_METRIC + "{"):
            continue
        labels = dict(part.split("=", 1) for part in key[len(LAG_METRIC) + 1 : -1].split(","))
        upper = float(labels["le"].strip('"'))
        by_worker.setdefault(labels.get("worker", '"0"'), []).append((upper, value - before.get(key, 0.0)))
    worst: float | None = None
    for buckets in by_worker.values():
        buckets.sort()
        total = buckets[-1][1] if buckets else 0.0
        if total <= 0:
            continue
        p99 = next(upper for upper, count in buckets if count >= 0.99 * total)
        worst = max(worst or 0.0, p99 * 1000)
    return worst


def streams_by_worker(server: Server) -> dict[str, int]:
    listed = json.loads(http_get(server.url("/api/v1/streams"), timeout=20))["streams"]
    counts: dict[str, int] = {}
    for stream in listed:
        worker = str(stream.get("worker", 0))
        counts[worker] = counts.get(worker, 0) + 1
    return dict(sorted(counts.items()))


def dropped(samples: dict[str, float]) -> float:
    return sum(v for k, v in samples.items() if k.startswith("mediaserver_packets_dropped_total"))


async def run_ladder(server: Server, workers: int, args: argparse.Namespace, clip: EncodedClip) -> Ladder:
    ladder = Ladder(server.name, workers)
    fleet = PublisherFleet(clip, Window())
    ours = isinstance(server, OurServer)
    log(f"[{server.name} x{workers}] starting the server (temp {server.root})")
    try:
        await asyncio.to_thread(server.start)
        if ours and workers > 1:
            await asyncio.sleep(3.0)  # every worker up, not only the first to answer /healthz
        for streams in args.levels:
            live = await fleet.start(streams - len(fleet.publishers), server.rtmp_port, args.start_interval)
            log(f"[{server.name} x{workers}] {streams} streams ({live} new live), warm-up {args.warmup} s")
            await asyncio.sleep(args.warmup)
            level = Level(target=server.name, streams=streams)
            before = await asyncio.to_thread(server.scrape) if ours else {}
            window = WindowMeter(server, fleet)
            window.open()
            await asyncio.sleep(args.duration)
            window.close()
            window.fill(level, streams)
            if ours:
                after = await asyncio.to_thread(server.scrape)
                level.lag_p99_ms = lag_p99_ms(before, after)
                level.drops_in_window = int(dropped(after) - dropped(before))
                level.streams_by_worker = await asyncio.to_thread(streams_by_worker, server)
            level.passed = (
                level.publishers_connected_at_end == streams
                and level.drops_in_window == 0
                and (level.lag_p99_ms is None or level.lag_p99_ms < args.lag_limit)
                and level.send_lateness_p99_ms < SATURATED_LAG_MS
            )
            ladder.levels.append(level)
            log(
                f"[{server.name} x{workers}] {streams}: CPU {level.server_cpu_pct:.0f} % "
                f"({level.cpu_pct_per_stream:.3f}/stream), lag p99 {level.lag_p99_ms} ms, drops "
                f"{level.drops_in_window}, up {level.publishers_connected_at_end}, generator "
                f"{level.loadgen_cpu_pct:.0f} % late p99 {level.send_lateness_p99_ms:.0f} ms, "
                f"other {level.other_cpu_pct:.0f} % -> {'pass' if level.passed else 'FAIL'}"
            )
            if not level.passed:
                break
        return ladder
    finally:
        await fleet.stop()
        await asyncio.sleep(0.5)
        await asyncio.to_thread(server.stop)


def table(ladders: list[Ladder]) -> str:
    rows = [
        "| server | streams | CPU % | CPU %/stream | lag p99 ms | drops | publishers up | generator CPU % | "
        "send late p99 ms | other CPU % | RSS MB | streams by worker | pass |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ladder in ladders:
        name = f"{ladder.server} x{ladder.workers}" if ladder.server == "ours" else ladder.server
        for level in ladder.levels:
            lag = "-" if level.lag_p99_ms is None else f"≤ {level.lag_p99_ms:g}"
            rows.append(
                f"| {name} | {level.streams} | {level.server_cpu_pct:.0f} | {level.cpu_pct_per_stream:.3f} | {lag} | "
                f"{level.drops_in_window} | {level.publishers_connected_at_end} | {level.loadgen_cpu_pct:.0f} | "
                f"{level.send_lateness_p99_ms:.0f} | {level.other_cpu_pct:.0f} | {level.rss_mb:.0f} | "
                f"{' / '.join(map(str, level.streams_by_worker.values())) or '-'} | "
                f"{'yes' if level.passed else '**no**'} |"
            )
    rows.append("")
    for ladder in ladders:
        rows.append(f"- {ladder.server} x{ladder.workers}: carried **{ladder.carried}** streams")
    return "\n".join(rows)


async def main_async(args: argparse.Namespace) -> list[Ladder]:
    clip_path = args.clip if args.clip is not None else await asyncio.to_thread(ensure_clip)
    clip = await asyncio.to_thread(EncodedClip.read, clip_path)
    ladders = []
    for workers in args.workers:
        env = {"MEDIASERVER_CLUSTER_WORKERS": str(workers), **dict(item.split("=", 1) for item in args.server_env)}
        ladders.append(await run_ladder(OurServer(args.keep_temp, env=env), workers, args, clip))
        await asyncio.sleep(2.0)
    if args.nginx:
        ladders.append(await run_ladder(NginxServer(args.keep_temp), 1, args, clip))
    return ladders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    numbers = lambda text: [int(v) for v in text.split(",") if v]  # noqa: E731
    parser.add_argument("--workers", type=numbers, default=[1, 2], help="worker counts of ours, in order")
    parser.add_argument("--levels", type=numbers, default=[100, 200, 300, 400, 500, 600], help="streams per level")
    parser.add_argument("--nginx", action="store_true", help="nginx-rtmp's ladder too, after ours")
    parser.add_argument("--lag-limit", type=float, default=50.0, help="event-loop lag p99 a level must stay under, ms")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds after a level's publishers start")
    parser.add_argument("--duration", type=float, default=10.0, help="the measurement window, seconds")
    parser.add_argument("--start-interval", type=float, default=0.01, help="seconds between publisher starts")
    parser.add_argument("--server-env", action="append", default=[], help="KEY=VALUE for our server (repeatable)")
    parser.add_argument("--clip", type=Path, default=None, help="FLV clip (default: the reference clip)")
    parser.add_argument("--json", type=Path, default=None, help="write every level's figures here")
    parser.add_argument("--keep-temp", action="store_true", help="keep the servers' temp dirs")
    args = parser.parse_args(argv)
    raise_fd_limit(2 * max(args.levels) + 512)
    ladders = run_interruptible(main_async(args))
    if ladders is None:
        return 130
    print(table(ladders))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(ladder) for ladder in ladders], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
