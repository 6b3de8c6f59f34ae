"""WebSocket fan-out and dashboard figures benchmark.

    python -m benchmarks.ws_fanout --clients 1000 --rate 100 --seconds 20 --append benchmarks/RESULTS.md

Starts the real server (`python -m mediaserver serve`, SQLite, database publish mode) on free loopback ports,
adds `--cameras` cameras through the REST API, connects `--clients` WebSocket clients from this process (each
authenticates with its first message and joins room `all`; `--batch` clients take one message per server
tick), then changes cameras at `--rate` per second for `--seconds` through the REST API (PUT enabled on and
off, each change one camera-updated event to every client). Delivery latency is the client's receive time
minus the event's `at` (the server's clock when it published it; same machine), measured on every
`--sample-every`-th client so that the load generator's own JSON decoding does not dominate what it
measures; every client counts what it got. Then GET /api/v1/analytics/dashboard with `--concurrency` in
flight. Server CPU is from /proc over the change window; the load generator runs on the same two cores and
its CPU is reported too. Every loop is bounded in count and time; the server is stopped on errors too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import aiohttp

from benchmarks.lib.procfs import cpu_use, process_tree, read_cpu, rss_bytes
from benchmarks.lib.report import markdown_table, write_report
from benchmarks.lib.runner import log, run_interruptible
from benchmarks.lib.servers import OurServer
from benchmarks.lib.stats import percentile

ADMIN = "bench-admin"


@dataclass
class FanoutResult:
    clients: int
    batch: bool
    cameras: int
    rate_asked: float
    changes_made: int
    change_errors: int
    seconds: float
    events_expected: int
    events_received: int
    clients_dropped: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    latency_max_ms: float | None
    server_cpu_pct: float
    server_rss_mb: float
    loadgen_cpu_pct: float
    loop_lag_max_ms: float
    dashboard_requests: int
    dashboard_p50_ms: float | None
    dashboard_p99_ms: float | None
    dashboard_rps: float
    errors: list[str] = field(default_factory=list)


@dataclass
class Listener:
    ws: aiohttp.ClientWebSocketResponse
    timed: bool
    received: int = 0
    latencies: list[float] = field(default_factory=list)
    closed: bool = False


async def listen(listener: Listener, counting: asyncio.Event) -> None:
    async for message in listener.ws:
        if message.type != aiohttp.WSMsgType.TEXT:
            break
        now = time.time()
        text = message.data
        if not counting.is_set() or '"camera-updated"' not in text:
            continue
        if not listener.timed:
            listener.received += text.count('"event":"camera-updated"')
            continue
        body = json.loads(text)
        events = body["events"] if body.get("type") == "batch" else [body]
        for event in events:
            if event.get("event") == "camera-updated":
                listener.received += 1
                listener.latencies.append((now - datetime.fromisoformat(event["at"]).timestamp()) * 1000)
    listener.closed = True


async def connect(http: aiohttp.ClientSession, url: str, token: str, batch: bool, timed: bool) -> Listener:
    ws = await http.ws_connect(url + ("?batch=1" if batch else ""), max_msg_size=0)
    await ws.send_json({"type": "auth", "token": token})
    welcome = json.loads((await ws.receive(timeout=30)).data)
    assert welcome["type"] == "welcome", welcome
    await ws.send_json({"type": "join-room", "room": "all"})
    joined = json.loads((await ws.receive(timeout=30)).data)
    assert joined["type"] == "joined", joined
    return Listener(ws, timed)


async def run(args: argparse.Namespace) -> FanoutResult:
    password = "bench-" + secrets.token_hex(8)
    server = OurServer(
        prefix="ws-bench",
        env={
            "MEDIASERVER_AUTH_PUBLISH_MODE": "database",
            "MEDIASERVER_ADMIN_USERNAME": ADMIN,
            "MEDIASERVER_ADMIN_PASSWORD": password,
            # The benchmark's own requests must not meet the per-token rate limit.
            "MEDIASERVER_API_RATE_PER_TOKEN": "100000000",
            "MEDIASERVER_EVENTS_WS_MAX_CLIENTS": str(args.clients + 100),
        },
    )
    server.start()
    errors: list[str] = []
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:
            async with http.post(
                server.url("/api/v1/auth/login"), json={"username": ADMIN, "password": password}
            ) as response:
                token = (await response.json())["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            ids: list[str] = []
            while len(ids) < args.cameras:
                count = min(500, args.cameras - len(ids))
                items = [{"name": f"bench-{len(ids) + i}", "company": "bench"} for i in range(count)]
                async with http.post(
                    server.url("/api/v1/cameras/bulk"), json={"action": "create", "items": items}, headers=headers
                ) as response:
                    body = await response.json()
                    ids.extend(item["id"] for item in body["items"])
            log(f"{len(ids)} cameras; connecting {args.clients} WebSocket clients")
            ws_url = server.url("/api/v1/ws")
            listeners: list[Listener] = []
            for start in range(0, args.clients, 50):
                batch = [
                    connect(http, ws_url, token, args.batch, (start + i) % args.sample_every == 0)
                    for i in range(min(50, args.clients - start))
                ]
                listeners.extend(await asyncio.gather(*batch))
            counting = asyncio.Event()
            tasks = [asyncio.create_task(listen(listener, counting)) for listener in listeners]
            await asyncio.sleep(1.0)
            pids = process_tree(server.pid)
            counting.set()
            before = read_cpu(pids)
            made, failed, lag_max = await change_cameras(http, server, headers, ids, args)
            # What is still in flight arrives within a second or is late.
            await asyncio.sleep(1.0)
            after = read_cpu(pids)
            usage = cpu_use(before, after)
            counting.clear()
            rss = rss_bytes(pids) / 1e6
            latencies = [v for listener in listeners for v in listener.latencies]
            received = sum(listener.received for listener in listeners)
            dropped = sum(1 for listener in listeners if listener.closed)
            for listener in listeners:
                await listener.ws.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            log("dashboard figures")
            dash = await dashboard_load(http, server, headers, args)
    finally:
        errors.extend(server.log_problems())
        server.stop()
    return FanoutResult(
        clients=args.clients,
        batch=args.batch,
        cameras=args.cameras,
        rate_asked=args.rate,
        changes_made=made,
        change_errors=failed,
        seconds=args.seconds,
        events_expected=made * args.clients,
        events_received=received,
        clients_dropped=dropped,
        latency_p50_ms=round_or_none(percentile(latencies, 50)),
        latency_p99_ms=round_or_none(percentile(latencies, 99)),
        latency_max_ms=round_or_none(percentile(latencies, 100)),
        server_cpu_pct=round(usage.pct(pids), 1),
        server_rss_mb=round(rss, 1),
        loadgen_cpu_pct=round(usage.own_pct, 1),
        loop_lag_max_ms=round(lag_max * 1000, 1),
        dashboard_requests=dash[0],
        dashboard_p50_ms=round_or_none(dash[1]),
        dashboard_p99_ms=round_or_none(dash[2]),
        dashboard_rps=round(dash[3], 1),
        errors=errors,
    )


def round_or_none(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


async def change_cameras(
    http: aiohttp.ClientSession, server: OurServer, headers: dict[str, str], ids: list[str], args: argparse.Namespace
) -> tuple[int, int, float]:
    """`rate` changes per second for `seconds`, paced; (made, failed, worst loop lag seen in /metrics)."""
    lag_max = 0.0
    tasks: list[asyncio.Task[bool]] = []
    enabled = dict.fromkeys(ids, True)

    async def change(camera_id: str) -> bool:
        enabled[camera_id] = not enabled[camera_id]
        async with http.put(
            server.url(f"/api/v1/cameras/{camera_id}"), json={"enabled": enabled[camera_id]}, headers=headers
        ) as response:
            await response.read()
            return response.status == 200

    started = time.monotonic()
    total = int(args.rate * args.seconds)
    next_scrape = started + 1.0
    for index in range(total):
        delay = started + index / args.rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(change(ids[index % len(ids)])))
        if time.monotonic() >= next_scrape:
            next_scrape += 1.0
            lag_max = max(lag_max, await loop_lag(http, server))
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=60)
    made = sum(1 for r in results if r is True)
    return made, total - made, lag_max


async def loop_lag(http: aiohttp.ClientSession, server: OurServer) -> float:
    async with http.get(server.url("/metrics")) as response:
        for line in (await response.text()).splitlines():
            if line.startswith("mediaserver_event_loop_lag_max_seconds "):
                return float(line.split()[1])
    return 0.0


async def dashboard_load(
    http: aiohttp.ClientSession, server: OurServer, headers: dict[str, str], args: argparse.Namespace
) -> tuple[int, float | None, float | None, float]:
    latencies: list[float] = []
    url = server.url("/api/v1/analytics/dashboard")
    queue = list(range(args.dashboard_requests))

    async def worker() -> None:
        while queue:
            queue.pop()
            t0 = time.perf_counter()
            async with http.get(url, headers=headers) as response:
                await response.read()
                assert response.status == 200, response.status
            latencies.append((time.perf_counter() - t0) * 1000)

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(args.concurrency))), timeout=120)
    elapsed = time.perf_counter() - started
    return len(latencies), percentile(latencies, 50), percentile(latencies, 99), len(latencies) / elapsed


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--cameras", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0, help="camera changes per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--batch", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--sample-every", type=int, default=10, help="time every n-th client's events")
    parser.add_argument("--dashboard-requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--append", type=Path, default=None, help="append a Markdown section to this file")
    args = parser.parse_args(argv)
    if not (1 <= args.clients <= 20000 and 1 <= args.cameras <= 20000 and 0 < args.rate <= 2000):
        parser.error("--clients and --cameras 1..20000, --rate within 0..2000")
    if not 1 <= args.seconds <= 600:
        parser.error("--seconds 1..600")
    return args


def markdown(result: FanoutResult, args: argparse.Namespace) -> str:
    command = "python -m benchmarks.ws_fanout " + " ".join(sys.argv[1:])
    rows = [
        ("clients (batch)", f"{result.clients} ({'yes' if result.batch else 'no'})"),
        ("changes made / asked per s", f"{result.changes_made} / {result.rate_asked:g}"),
        ("events delivered / expected", f"{result.events_received} / {result.events_expected}"),
        ("clients dropped", str(result.clients_dropped)),
        ("delivery p50 / p99 / max ms", f"{result.latency_p50_ms} / {result.latency_p99_ms} / {result.latency_max_ms}"),
        ("server CPU % of a core", str(result.server_cpu_pct)),
        ("load generator CPU %", str(result.loadgen_cpu_pct)),
        ("server RSS MB", str(result.server_rss_mb)),
        ("event-loop lag max ms", str(result.loop_lag_max_ms)),
        (
            f"GET /analytics/dashboard p50 / p99 ms ({result.cameras} cameras)",
            f"{result.dashboard_p50_ms} / {result.dashboard_p99_ms} at {result.dashboard_rps} req/s",
        ),
    ]
    return (
        f"\n### WebSocket fan-out ({time.strftime('%Y-%m-%d', time.gmtime())})\n\n`{command}`\n\n"
        + markdown_table(("figure", "value"), rows)
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()

    async def go() -> list[FanoutResult]:
        return [await run(args)]

    outcome = run_interruptible(go())
    if outcome is None:
        return 130
    result = outcome[0]
    text = markdown(result, args)
    print(text)
    if args.append is not None:
        with args.append.open("a") as handle:
            handle.write(text)
    if args.json is not None:
        write_report(args.json, args, started, [asdict(result)])
    return 0 if not result.errors else 1


if __name__ == "__main__":
    sys.exit(main())
