"""Recording index benchmark: `coverage` and `playback.m3u8` latency for cameras with days of hourly files.

    python -m benchmarks.recording_index --days 30 --cameras 1
    python -m benchmarks.recording_index --days 30 --cameras 1 --requests 500 --concurrency 8 --json /tmp/idx.json
    python -m benchmarks.recording_index --days 30 --max-query-range 2592000     # let 7 d and 30 d ranges through

Seeds a fresh data dir as the recorder and its index leave it after --days of hourly files per camera, then starts
the real server (`python -m mediaserver serve`) on it and times, as an admin (a JWT from POST /api/v1/auth/login):
GET /api/v1/cameras/{id}/recordings/coverage over 1 day, 7 days and 30 days, and GET
/api/v1/cameras/{id}/playback.m3u8 over 1 hour and 24 hours, each range at a random place in the seeded period
(a range longer than the period ends where it does). A range longer than `recording.max_query_range` (86400 s by
default; --max-query-range sets the server's) is refused with 400 by the server: the tool checks that once and
measures the largest range allowed instead, unless a scenario already measures that range; the table says which.

Seeded per camera (`benchmarks.lib.recordings`): one file per hour, 2 s segments (1800 `.idx` lines per file, the
segment sizes of a real recording of the reference clip, cycled), the next file starting where the last one
ended, and every 24th file ending 5 min early (a camera that dropped and came back: one gap a day). The rows go in
through the control plane's store, migrated by its own migrations (SQLite in the server's temp dir, or with
--backend mariadb a database `bench_ms_<random>` on MEDIASERVER_TEST_MYSQL, dropped at the end); the `.idx` files
are real, written in full; each `.mp4` has its real head (init segment and header box) and is sparse after it:
coverage and playback.m3u8 read the rows and the `.idx` files only, never media bytes.

Per request kind: p50/p95/p99/max latency (client side, nearest rank), req/s, errors, the answer's size, the
server's CPU over the measured requests (process tree from /proc: % of one core, and ms of CPU per request), this
process's CPU (the load generator) and the rest of the machine's, and the server's worst event-loop lag over them
(`mediaserver_event_loop_lag_max_seconds`: these routes compute on the event loop). Bounded: --requests per kind,
and no request starts after --time-limit seconds of a kind. Every server this starts is stopped, on errors and
Ctrl-C too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.lib import mariadb
from benchmarks.lib.clip import Clip, ensure_clip
from benchmarks.lib.httpload import Load, Request, drive
from benchmarks.lib.mariadb import MYSQL
from benchmarks.lib.procfs import cpu_use, read_cpu, rss_bytes
from benchmarks.lib.recordings import (
    ClipPackets,
    SampleRecording,
    add_admin,
    add_camera,
    insert_rows,
    new_store,
    plan_hourly_files,
    recording_rows,
    write_files,
)
from benchmarks.lib.report import format_table, write_report
from benchmarks.lib.runner import log, run_interruptible
from benchmarks.lib.servers import OurServer
from mediaserver.config import RecordingConfig

HOUR, DAY = 3600.0, 86400.0
PASSWORD = "benchmark password 1"
JWT_SECRET = "bench-" + "s" * 40
# (label, route, range in seconds), in the order they run.
SCENARIOS = (
    ("coverage 1 d", "coverage", DAY),
    ("coverage 7 d", "coverage", 7 * DAY),
    ("coverage 30 d", "coverage", 30 * DAY),
    ("playback.m3u8 1 h", "playback.m3u8", HOUR),
    ("playback.m3u8 24 h", "playback.m3u8", DAY),
)
ROUTES = {"coverage": "/recordings/coverage", "playback.m3u8": "/playback.m3u8"}


@dataclass(slots=True)
class Seeded:
    backend: str
    cameras: int
    days: int
    files: int
    index_lines: int
    index_mb: float
    media_gb_apparent: float  # what the rows say; on the disk the media are holes
    first_start: str
    last_end: str
    seed_seconds: float
    server_start_seconds: float = 0.0
    rows_listed_first_camera: int = 0  # GET /api/v1/recordings?camera_id= total, after the server's start-up
    server_rss_mb: float = 0.0
    server_log_problems: list[str] = field(default_factory=list)


@dataclass(slots=True)
class KindResult:
    label: str
    route: str
    asked_s: float
    range_s: float
    note: str = ""
    requests: int = 0
    errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    stopped_by_time: bool = False
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    rps: float = 0.0
    answer_kb: float = 0.0  # mean body size
    answer: str = ""  # what one answer held (spans and gaps, or segments and files)
    server_cpu_pct: float = 0.0
    server_cpu_ms_per_request: float = 0.0
    loadgen_cpu_pct: float = 0.0
    other_cpu_pct: float = 0.0
    # The server's worst event-loop oversleep during the measured requests (/metrics): these routes compute on the
    # loop, so this is how long every other request and live stream of that process waited meanwhile.
    loop_lag_max_ms: float | None = None
    error_samples: list[str] = field(default_factory=list)


def server_env(url: str, max_query_range: float) -> dict[str, str]:
    return {
        "MEDIASERVER_DATABASE_URL": url,
        "MEDIASERVER_DATABASE_AUTO_MIGRATE": "true",
        "MEDIASERVER_AUTH_API_JWT_SECRET": JWT_SECRET,
        "MEDIASERVER_AUTH_API_ACCESS_TOKEN_TTL": "7200",
        "MEDIASERVER_API_RATE_PER_TOKEN": "1000000",
        "MEDIASERVER_API_LOGIN_RATE_PER_IP": "1000000",
        "MEDIASERVER_API_LOGIN_RATE_PER_USERNAME": "1000000",
        "MEDIASERVER_HLS_ENABLED": "false",
        "MEDIASERVER_RECORDING_MAX_QUERY_RANGE": f"{max_query_range:g}",
        # Nothing may move or delete the seeded files while they are measured.
        "MEDIASERVER_RECORDING_RETENTION_DAYS": "0",
        "MEDIASERVER_RECORDING_MIN_FREE_PERCENT": "0",
        "MEDIASERVER_RECORDING_TIER_INTERVAL": "86400",
    }


async def seed(args: argparse.Namespace, server: OurServer, url: str) -> tuple[list[str], float, float, Seeded]:
    """Cameras, rows and files; the camera ids and the seeded period (epoch seconds)."""
    began = time.monotonic()
    clip_path = args.clip if args.clip is not None else await asyncio.to_thread(ensure_clip)
    clip = ClipPackets.of(await asyncio.to_thread(Clip.read, clip_path))
    sample = await SampleRecording.make(server.root / "sample", clip)
    shutil.rmtree(server.root / "sample", ignore_errors=True)
    last_end = (time.time() // HOUR) * HOUR
    first_start = last_end - args.days * DAY
    count = args.days * 24
    store = await new_store(url)
    cameras: list[str] = []
    files = lines = index_bytes = media_bytes = 0
    try:
        await add_admin(store, "admin", PASSWORD)
        root = server.root / "data" / "recordings"
        for number in range(args.cameras):
            camera = secrets.token_hex(16)
            cameras.append(camera)
            await add_camera(store, camera, f"Camera {number:03d}")
            # One camera's files at a time: a month of one camera is ~1.3 million index entries in memory.
            planned = await asyncio.to_thread(plan_hourly_files, sample, camera, first_start, count)
            index_bytes += await asyncio.to_thread(write_files, root, planned)
            await insert_rows(store, recording_rows(planned))
            files += len(planned)
            lines += sum(len(f.entries) for f in planned)
            media_bytes += sum(f.size for f in planned)
            del planned
    finally:
        await store.close()
    seeded = Seeded(
        backend=args.backend,
        cameras=args.cameras,
        days=args.days,
        files=files,
        index_lines=lines,
        index_mb=round(index_bytes / 1e6, 1),
        media_gb_apparent=round(media_bytes / 1e9, 1),
        first_start=datetime.fromtimestamp(first_start, UTC).isoformat(),
        last_end=datetime.fromtimestamp(last_end, UTC).isoformat(),
        seed_seconds=round(time.monotonic() - began, 1),
    )
    return cameras, first_start, last_end, seeded


def describe(route: str, body: bytes) -> str:
    """What one answer held: coverage's spans and gaps, a playlist's segments and files."""
    if route == "coverage":
        data = json.loads(body)
        return f"{len(data.get('spans', []))} spans, {len(data.get('gaps', []))} gaps"
    text = body.decode(errors="replace")
    return f"{text.count('#EXTINF:')} segments, {text.count('#EXT-X-MAP:')} files"


async def measure_kind(
    session: aiohttp.ClientSession,
    server: OurServer,
    headers: dict[str, str],
    cameras: list[str],
    period: tuple[float, float],
    result: KindResult,
    args: argparse.Namespace,
    rng: random.Random,
) -> None:
    first, last = period
    length = result.range_s

    def make(_: int) -> Request:
        camera = rng.choice(cameras)
        start = rng.uniform(first, last - length) if last - first > length else last - length
        params = {"start": f"{start:.3f}", "end": f"{start + length:.3f}"}
        url = server.url(f"/api/v1/cameras/{camera}{ROUTES[result.route]}")
        return "GET", url, {"headers": headers, "params": params}

    method, url, kwargs = make(0)
    async with session.request(method, url, **kwargs) as response:
        body = await response.read()
        if response.status != 200:
            raise RuntimeError(f"{result.label}: {response.status} {body[:300]!r}")
        result.answer = describe(result.route, body)
    if args.warmup:
        await drive(session, make, args.warmup, args.concurrency, args.time_limit)
    pids = server.pids()
    await asyncio.to_thread(server.scrape)  # the loop-lag maximum restarts at each scrape
    before = read_cpu(pids)
    load: Load = await drive(session, make, args.requests, args.concurrency, args.time_limit)
    use = cpu_use(before, read_cpu(server.pids()))
    lag = (await asyncio.to_thread(server.scrape)).get("mediaserver_event_loop_lag_max_seconds")
    result.loop_lag_max_ms = None if lag is None else round(lag * 1000, 1)
    server_cpu = use.pct(pids)
    latency = load.latency_ms()
    result.requests = load.done
    result.errors = load.errors
    result.statuses = load.statuses
    result.stopped_by_time = load.stopped_by_time
    result.p50_ms, result.p95_ms, result.p99_ms, result.max_ms = (
        latency["p50"],
        latency["p95"],
        latency["p99"],
        latency["max"],
    )
    result.rps = round(load.rps, 1)
    result.answer_kb = round(load.body_bytes / max(load.done, 1) / 1000, 1)
    result.server_cpu_pct = round(server_cpu, 1)
    result.server_cpu_ms_per_request = round(server_cpu / 100 * use.elapsed * 1000 / max(load.done, 1), 2)
    result.loadgen_cpu_pct = round(use.own_pct, 1)
    result.other_cpu_pct = round(use.other_pct(server_cpu), 1)
    result.error_samples = load.error_samples


async def refused(session: aiohttp.ClientSession, url: str, headers: dict[str, str], length: float) -> str:
    """The server's answer to a range longer than it allows (one request, after the seeded period's end)."""
    end = time.time() - DAY
    params = {"start": f"{end - length:.3f}", "end": f"{end:.3f}"}
    async with session.get(url, headers=headers, params=params) as response:
        text = await response.text()
        try:
            code = json.loads(text)["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = text[:80]
        return f"{response.status} {code}"


def plan(args: argparse.Namespace) -> list[KindResult]:
    """The scenarios, each range cut to max_query_range; a cut range that another scenario of the same route already
    measures is marked to be skipped (note starts with "skipped")."""
    kinds: list[KindResult] = []
    for label, route, asked in SCENARIOS:
        if route not in args.routes:
            continue
        length = min(asked, args.max_query_range)
        kind = KindResult(label, route, asked, length)
        if length < asked:
            limit = f"recording.max_query_range ({args.max_query_range:.0f} s)"
            same = [k for k in kinds if k.route == route and k.range_s == length and not k.note.startswith("skipped")]
            if same:
                kind.note = f"skipped: longer than {limit}; '{same[0].label}' measures the longest range allowed"
            else:
                kind.note = f"measured over {_range(length)}, the longest range {limit} allows"
        kinds.append(kind)
    return kinds


async def run(args: argparse.Namespace) -> tuple[list[KindResult], Seeded]:
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    if main_task is not None:
        loop.add_signal_handler(signal.SIGTERM, main_task.cancel)
    database = f"bench_ms_{secrets.token_hex(4)}" if args.backend == "mariadb" else ""
    server = OurServer(args.keep_temp, prefix="recidx-bench", log_level="warning")
    url = f"mysql+asyncmy://{MYSQL}/{database}" if database else f"sqlite+aiosqlite:///{server.root / 'mediaserver.db'}"
    server.env.update(server_env(url, args.max_query_range))
    created = False
    try:
        if database:
            await mariadb.execute(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
            created = True
        log(f"seeding {args.cameras} camera(s) x {args.days} days of hourly files ({args.backend}) in {server.root}")
        cameras, first, last, seeded = await seed(args, server, url)
        log(
            f"seeded {seeded.files} files, {seeded.index_lines} index lines ({seeded.index_mb} MB of .idx) "
            f"in {seeded.seed_seconds} s; starting the server"
        )
        began = time.monotonic()
        await asyncio.to_thread(server.start)
        seeded.server_start_seconds = round(time.monotonic() - began, 1)
        kinds = plan(args)
        rng = random.Random(args.seed)
        connector = aiohttp.TCPConnector(limit=args.concurrency)
        timeout = aiohttp.ClientTimeout(total=args.request_timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            login = {"username": "admin", "password": PASSWORD}
            async with session.post(server.url("/api/v1/auth/login"), json=login) as response:
                if response.status != 200:
                    raise RuntimeError(f"login: {response.status} {await response.text()}")
                token = (await response.json())["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            for kind in kinds:
                if kind.range_s < kind.asked_s:
                    answer = await refused(
                        session, server.url(f"/api/v1/cameras/{cameras[0]}{ROUTES[kind.route]}"), headers, kind.asked_s
                    )
                    kind.note += f"; the server answers {_range(kind.asked_s)}: {answer}"
                if kind.note.startswith("skipped"):
                    log(f"{kind.label}: {kind.note}")
                    continue
                log(f"{kind.label}: {args.requests} requests, {args.concurrency} in flight, {_range(kind.range_s)}")
                await measure_kind(session, server, headers, cameras, (first, last), kind, args, rng)
                log(
                    f"{kind.label}: p50 {kind.p50_ms} ms, p99 {kind.p99_ms} ms, {kind.rps} req/s, "
                    f"server {kind.server_cpu_ms_per_request} ms CPU/request; {kind.answer}"
                )
            # The index as the server sees it after its start-up reconcile: every seeded row still there.
            async with session.get(
                server.url("/api/v1/recordings"), headers=headers, params={"camera_id": cameras[0], "limit": 1}
            ) as response:
                listed = int((await response.json())["total"])
            seeded.rows_listed_first_camera = listed
            per_camera = seeded.files // seeded.cameras
            if listed != per_camera:
                log(f"WARNING: the server lists {listed} recordings of the first camera, {per_camera} seeded")
        server_rss = rss_bytes(server.pids())
        seeded.server_rss_mb = round(server_rss / 1e6, 1)
        seeded.server_log_problems = server.log_problems()
        return kinds, seeded
    finally:
        server.stop()
        if created:
            await mariadb.execute(f"DROP DATABASE IF EXISTS `{database}`")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _range(seconds: float) -> str:
    if seconds >= DAY and seconds % DAY == 0:
        return f"{seconds / DAY:g} d"
    if seconds >= HOUR and seconds % HOUR == 0:
        return f"{seconds / HOUR:g} h"
    return f"{seconds:g} s"


COLUMNS: list[tuple[str, Any]] = [
    ("request", lambda k: k.label),
    ("range", lambda k: _range(k.range_s) + ("" if k.range_s == k.asked_s else f" (of {_range(k.asked_s)})")),
    ("answer", lambda k: k.answer),
    ("n", lambda k: str(k.requests) + (" (time)" if k.stopped_by_time else "")),
    ("errors", lambda k: str(k.errors)),
    ("p50 ms", lambda k: _ms(k.p50_ms)),
    ("p95 ms", lambda k: _ms(k.p95_ms)),
    ("p99 ms", lambda k: _ms(k.p99_ms)),
    ("max ms", lambda k: _ms(k.max_ms)),
    ("req/s", lambda k: f"{k.rps:.1f}"),
    ("KB/answer", lambda k: f"{k.answer_kb:.1f}"),
    ("server CPU %", lambda k: f"{k.server_cpu_pct:.0f}"),
    ("server CPU ms/req", lambda k: f"{k.server_cpu_ms_per_request:.1f}"),
    ("loop lag max ms", lambda k: _ms(k.loop_lag_max_ms)),
    ("gen CPU %", lambda k: f"{k.loadgen_cpu_pct:.0f}"),
    ("other CPU %", lambda k: f"{k.other_cpu_pct:.0f}"),
]


def print_results(kinds: list[KindResult], seeded: Seeded, args: argparse.Namespace) -> None:
    print(
        f"\n{seeded.cameras} camera(s) x {seeded.days} days ({seeded.first_start} .. {seeded.last_end}): "
        f"{seeded.files} hourly files, {seeded.index_lines} .idx lines (~{seeded.index_lines // max(seeded.files, 1)} "
        f"per file, {seeded.index_mb} MB), "
        f"{seeded.media_gb_apparent} GB of media in the rows (sparse on disk); {seeded.backend}; seeded in "
        f"{seeded.seed_seconds} s, server ready in {seeded.server_start_seconds} s; "
        f"max_query_range {args.max_query_range:.0f} s; {args.concurrency} requests in flight\n"
    )
    measured = [k for k in kinds if not k.note.startswith("skipped")]
    print(format_table(measured, COLUMNS))
    print(
        f"\nserver: {seeded.rows_listed_first_camera} recordings listed for the first camera after its start-up "
        f"({seeded.files // seeded.cameras} seeded), RSS {seeded.server_rss_mb} MB at the end"
    )
    for line in seeded.server_log_problems:
        print(f"server log: {line}")
    for kind in kinds:
        if kind.note:
            print(f"[{kind.label}] {kind.note}")
        for sample in kind.error_samples:
            print(f"[{kind.label}] error: {sample}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.recording_index",
        description="coverage and playback.m3u8 latency for cameras with days of hourly recording files.",
    )
    parser.add_argument("--days", type=int, default=30, help="days of hourly files per camera (default 30)")
    parser.add_argument("--cameras", type=int, default=1, help="cameras seeded; requests pick one at random")
    parser.add_argument("--requests", type=int, default=500, help="measured requests per kind (default 500)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    parser.add_argument("--warmup", type=int, default=10, help="requests per kind before the measured ones")
    parser.add_argument(
        "--time-limit", type=float, default=60.0, help="no request of a kind starts after this many seconds"
    )
    parser.add_argument("--request-timeout", type=float, default=60.0, help="per request, seconds")
    parser.add_argument(
        "--max-query-range",
        type=float,
        default=RecordingConfig().max_query_range,
        help="the server's recording.max_query_range, seconds (default: its default)",
    )
    parser.add_argument("--routes", default="coverage,playback.m3u8", help="which routes to measure (default both)")
    parser.add_argument("--backend", choices=("sqlite", "mariadb"), default="sqlite")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the ranges and cameras picked")
    parser.add_argument("--clip", type=Path, default=None, help="FLV clip (default: the reference clip, made once)")
    parser.add_argument("--json", type=Path, default=None, help="write every figure there")
    parser.add_argument("--keep-temp", action="store_true", help="keep the server's temp dir (data, log)")
    args = parser.parse_args(argv)
    args.routes = [r.strip() for r in args.routes.split(",") if r.strip()]
    if any(r not in ROUTES for r in args.routes) or not args.routes:
        parser.error("--routes takes coverage, playback.m3u8 or both")
    if args.days < 1 or args.cameras < 1 or args.requests < 1 or args.concurrency < 1 or args.warmup < 0:
        parser.error("need --days, --cameras, --requests, --concurrency >= 1 and --warmup >= 0")
    if args.max_query_range < HOUR or args.time_limit <= 0:
        parser.error("need --max-query-range >= 3600 and --time-limit > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()

    async def go() -> list[tuple[list[KindResult], Seeded]]:
        return [await run(args)]

    outcome = run_interruptible(go())
    if outcome is None:
        return 130
    kinds, seeded = outcome[0]
    print_results(kinds, seeded, args)
    if args.json is not None:
        write_report(args.json, args, started, kinds, key="requests", extra={"seeded": seeded})
    intact = seeded.rows_listed_first_camera == seeded.files // seeded.cameras
    return 0 if intact and all(k.errors == 0 for k in kinds) else 1


if __name__ == "__main__":
    sys.exit(main())
