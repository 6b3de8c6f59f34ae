"""Edge fan-out: what a stream relayed from its origin node to an edge node costs.

Two of our servers on loopback are nodes of one Redis stream registry (the local Redis, a key prefix of the
run's own). K publishers of the reference clip publish to node A (the origin). Three windows follow:

1. no players: A's CPU with K streams (and B idle);
2. one RTMP player per stream on node B (the edge): B pulls one edge copy per stream from A; B's CPU per relayed
   stream is the edge cost, A's growth per stream the origin's cost of feeding an edge;
3. those players stopped and one RTMP player per stream on A itself instead: the cost of a plain local player,
   to compare with.

    python -m benchmarks.edge_fanout --streams 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.lib.clip import EncodedClip, ensure_clip
from benchmarks.lib.measure import TargetResult, WindowMeter
from benchmarks.lib.publish import APP, PublisherFleet, Window
from benchmarks.lib.runner import log, raise_fd_limit, run_interruptible
from benchmarks.lib.servers import OurServer
from mediaserver.rtmp.chunk import Message
from mediaserver.rtmp.client import RtmpClient


class CountingPlayer:
    """Plays one stream and counts what arrives."""

    def __init__(self) -> None:
        self.bytes = 0
        self.client = RtmpClient(self._on_message)

    def _on_message(self, message: Message) -> None:
        self.bytes += len(message.payload)

    async def start(self, port: int, name: str) -> bool:
        try:
            await self.client.connect("127.0.0.1", port, APP, timeout=15)
            await self.client.play(name)
        except Exception as exc:  # a refused or failed play is a figure of the run, not a crash of the tool
            log(f"player of {name} failed: {type(exc).__name__}: {exc}")
            self.client.abort()
            return False
        return True


@dataclass
class Figures:
    streams: int
    origin_alone_cpu_pct: float = 0.0
    origin_with_edge_cpu_pct: float = 0.0
    edge_cpu_pct: float = 0.0
    edge_players_up: int = 0
    edge_received_mbps: float = 0.0
    origin_with_local_players_cpu_pct: float = 0.0
    local_players_up: int = 0
    edge_cpu_pct_per_stream: float = 0.0
    origin_cpu_pct_per_edge_stream: float = 0.0
    local_player_cpu_pct: float = 0.0


async def _window(servers: list[OurServer], fleet: PublisherFleet, seconds: float) -> list[float]:
    meters = [WindowMeter(server, fleet) for server in servers]
    for meter in meters:
        meter.open()
    await asyncio.sleep(seconds)
    results = []
    for meter in meters:
        meter.close()
        result = TargetResult(target="ours")
        meter.fill(result, 1)
        results.append(result.server_cpu_pct)
    return results


async def run(args: argparse.Namespace) -> Figures:
    clip_path = args.clip if args.clip is not None else await asyncio.to_thread(ensure_clip)
    clip = await asyncio.to_thread(EncodedClip.read, clip_path)
    prefix = f"bench-edge-{os.getpid()}:"
    common = {"MEDIASERVER_REDIS_URL": args.redis_url, "MEDIASERVER_REDIS_KEY_PREFIX": prefix,
              "MEDIASERVER_CLUSTER_SECRET": "edge-fanout-benchmark"}  # fmt: skip
    origin, edge = OurServer(args.keep_temp, env=common), OurServer(args.keep_temp, env=common)
    for node, server in (("a", origin), ("b", edge)):
        server.env.update(
            MEDIASERVER_CLUSTER_NODE_ID=node, MEDIASERVER_CLUSTER_ADVERTISE_RTMP=f"rtmp://127.0.0.1:{server.rtmp_port}"
        )
    edge.env["MEDIASERVER_CLUSTER_EDGE_IDLE"] = "1"
    fleet = PublisherFleet(clip, Window())
    players: list[CountingPlayer] = []
    figures = Figures(args.streams)
    try:
        await asyncio.to_thread(origin.start)
        await asyncio.to_thread(edge.start)
        live = await fleet.start(args.streams, origin.rtmp_port, 0.01)
        log(f"{live}/{args.streams} publishers live on the origin; warm-up {args.warmup} s")
        await asyncio.sleep(args.warmup)
        figures.origin_alone_cpu_pct, _ = await _window([origin, edge], fleet, args.duration)

        players = [CountingPlayer() for _ in fleet.publishers]
        ups = await asyncio.gather(
            *(p.start(edge.rtmp_port, pub.name) for p, pub in zip(players, fleet.publishers, strict=True))
        )
        figures.edge_players_up = sum(ups)
        log(f"{figures.edge_players_up} players on the edge; warm-up {args.warmup} s")
        await asyncio.sleep(args.warmup)
        received0 = sum(p.bytes for p in players)
        figures.origin_with_edge_cpu_pct, figures.edge_cpu_pct = await _window([origin, edge], fleet, args.duration)
        figures.edge_received_mbps = round((sum(p.bytes for p in players) - received0) * 8 / args.duration / 1e6, 1)
        for player in players:
            player.client.abort()

        await asyncio.sleep(args.warmup)  # the edge lets its copies go 1 s after their last player (edge_idle)
        players = [CountingPlayer() for _ in fleet.publishers]
        ups = await asyncio.gather(
            *(p.start(origin.rtmp_port, pub.name) for p, pub in zip(players, fleet.publishers, strict=True))
        )
        figures.local_players_up = sum(ups)
        await asyncio.sleep(args.warmup)
        figures.origin_with_local_players_cpu_pct, _ = await _window([origin, edge], fleet, args.duration)
    finally:
        for player in players:
            player.client.abort()
        await fleet.stop()
        await asyncio.to_thread(edge.stop)
        await asyncio.to_thread(origin.stop)
    k = max(1, args.streams)
    figures.edge_cpu_pct_per_stream = round(figures.edge_cpu_pct / k, 4)
    figures.origin_cpu_pct_per_edge_stream = round(
        (figures.origin_with_edge_cpu_pct - figures.origin_alone_cpu_pct) / k, 4
    )
    figures.local_player_cpu_pct = round(
        (figures.origin_with_local_players_cpu_pct - figures.origin_alone_cpu_pct) / k, 4
    )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=50, help="streams published to the origin")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--clip", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep-temp", action="store_true")
    args = parser.parse_args(argv)
    raise_fd_limit(4 * args.streams + 512)
    results = run_interruptible(_as_list(run(args)))
    if not results:
        return 130
    (figures,) = results
    print(
        "| streams | origin CPU % alone | origin CPU % feeding the edge | edge CPU % | edge players up | edge Mbit/s "
        "| edge CPU %/relayed stream | origin CPU %/edge stream | local RTMP player CPU % |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
        f"| {figures.streams} | {figures.origin_alone_cpu_pct:.1f} | {figures.origin_with_edge_cpu_pct:.1f} | "
        f"{figures.edge_cpu_pct:.1f} | {figures.edge_players_up} | {figures.edge_received_mbps} | "
        f"{figures.edge_cpu_pct_per_stream:.3f} | {figures.origin_cpu_pct_per_edge_stream:.3f} | "
        f"{figures.local_player_cpu_pct:.3f} |"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(figures), indent=2))
    return 0


async def _as_list(coro: Coroutine[Any, Any, Figures]) -> list[Figures]:
    return [await coro]


if __name__ == "__main__":
    sys.exit(main())
