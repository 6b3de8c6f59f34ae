"""Control-plane API benchmark on SQLite and MariaDB.

    python -m benchmarks.api_load --backends sqlite,mariadb --requests 2000 --append benchmarks/RESULTS.md

For each backend: seed 1,000 cameras and 100,000 audit rows straight into a fresh database,
start the real server (`python -m mediaserver serve`, database publish mode, production argon2
parameters) on free loopback ports, then from this process, with a fixed number of requests in
flight: GET /api/v1/cameras paged (random offsets), GET /api/v1/cameras/{id}/status, GET
/api/v1/audit-logs filtered (one user, last day), and logins at a bounded rate (argon2id costs
tens of ms of CPU per login by design). Publish authorization is timed in process against the
same database: cold (database lookup) and warm (cache). Latencies are per request, client side;
p50/p99 are `benchmarks.lib.stats.percentile` (nearest rank), as in every tool.
MariaDB: a database `bench_ms_<random>` on MEDIASERVER_TEST_MYSQL (root@127.0.0.1:3306), dropped
at the end. Every server this starts is stopped, on errors too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import secrets
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from sqlalchemy import insert

from benchmarks.lib import mariadb
from benchmarks.lib.mariadb import MYSQL
from benchmarks.lib.report import write_report
from benchmarks.lib.servers import OurServer
from benchmarks.lib.stats import percentile
from control.audit import Audit
from control.authorizer import DatabaseAuthorizer
from control.security import PasswordHasher, TokenService, new_id, new_stream_key
from control.store import AuditLog, Camera, Store, User

PASSWORD = "benchmark password 1"
JWT_SECRET = "bench-" + "s" * 40


def pct(seconds: list[float], q: float) -> float:
    """The `q` quantile (0..1) of latencies in seconds, in ms (NaN when there are none)."""
    value = percentile(seconds, q * 100)
    return float("nan") if value is None else value * 1000


async def seed(url: str, cameras: int, audit_rows: int) -> tuple[list[str], list[str], int]:
    store = Store(url)
    try:
        await store.migrate()
        hasher = PasswordHasher()
        now = datetime.now(UTC)
        async with store.sessions.begin() as session:
            admin = User(
                username="admin",
                password_hash=await hasher.hash(PASSWORD),
                role="admin",
                created_at=now,
                updated_at=now,
            )
            session.add(admin)
            await session.flush()
            admin_id = admin.id
        ids, keys = [], []
        rows = []
        for i in range(cameras):
            camera_id, key = new_id(), new_stream_key()
            ids.append(camera_id)
            keys.append(key)
            rows.append(
                {
                    "id": camera_id,
                    "name": f"Camera {i:04d}",
                    "vendor": "Axis",
                    "model": "P1448",
                    "serial_number": f"SN{i:08d}",
                    "location": f"site {i % 17}",
                    "enabled": True,
                    "recording_enabled": False,
                    "private": True,
                    "status": "offline",
                    "bitrate_bps": 0,
                    "stream_key": key,
                    "created_at": now,
                    "updated_at": now,
                }
            )
        async with store.sessions.begin() as session:
            await session.execute(insert(Camera), rows)
        batch: list[dict[str, Any]] = []
        for i in range(audit_rows):
            batch.append(
                {
                    "at": now - timedelta(seconds=audit_rows - i),
                    "user_id": (i % 50) + 1,
                    "actor": f"user{i % 50}",
                    "ip": "192.0.2.1",
                    "action": ("camera.update", "auth.login", "stream.publish_denied")[i % 3],
                    "resource_type": "camera",
                    "resource_id": ids[i % len(ids)],
                    "success": True,
                    "details": None,
                }
            )
            if len(batch) == 5000:
                async with store.sessions.begin() as session:
                    await session.execute(insert(AuditLog), batch)
                batch = []
        if batch:
            async with store.sessions.begin() as session:
                await session.execute(insert(AuditLog), batch)
        return ids, keys, admin_id
    finally:
        await store.close()


async def authorizer_latency(url: str, keys: list[str], count: int) -> dict[str, float]:
    store = Store(url)
    try:
        tokens = TokenService("HS256", JWT_SECRET, JWT_SECRET)
        auth = DatabaseAuthorizer(store, tokens, Audit(store), "live", cache_ttl=3600)
        cold: list[float] = []
        sample = keys[:200]
        for key in sample:
            start = time.perf_counter()
            await auth.authorize_publish("live", key, {}, "127.0.0.1:1")
            cold.append(time.perf_counter() - start)
        warm: list[float] = []
        for i in range(count):
            key = sample[i % len(sample)]
            start = time.perf_counter()
            await auth.authorize_publish("live", key, {}, "127.0.0.1:1")
            warm.append(time.perf_counter() - start)
        return {
            "cold_p50": pct(cold, 0.5),
            "cold_p99": pct(cold, 0.99),
            "warm_p50": pct(warm, 0.5),
            "warm_p99": pct(warm, 0.99),
        }
    finally:
        await store.close()


async def drive(
    session: aiohttp.ClientSession, make: Any, count: int, concurrency: int, rate: float | None = None
) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)
    started = time.perf_counter()

    async def worker() -> None:
        nonlocal errors
        while not queue.empty():
            i = queue.get_nowait()
            method, url, kwargs = make(i)
            begin = time.perf_counter()
            if rate is not None:
                # At a fixed rate a request's latency counts from when it was due: a request that waits for a free
                # connection (every one busy with a slow answer) waits in the latency, not outside it.
                due = started + i / rate
                if due > begin:
                    await asyncio.sleep(due - begin)
                begin = due
            async with session.request(method, url, **kwargs) as response:
                await response.read()
                if response.status >= 400:
                    errors += 1
            latencies.append(time.perf_counter() - begin)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - started


def api_server(keep_temp: bool, database: str) -> OurServer:
    """Our server on SQLite in its temp dir (`database` "") or on the MariaDB database `database`, in
    database publish mode, without HLS, with the rate limits out of the way."""
    env = {
        "MEDIASERVER_DATABASE_AUTO_MIGRATE": "true",
        "MEDIASERVER_AUTH_API_JWT_SECRET": JWT_SECRET,
        "MEDIASERVER_AUTH_PUBLISH_MODE": "database",
        "MEDIASERVER_API_RATE_PER_TOKEN": "1000000",
        "MEDIASERVER_API_LOGIN_RATE_PER_IP": "1000000",
        "MEDIASERVER_API_LOGIN_RATE_PER_USERNAME": "1000000",
        "MEDIASERVER_HLS_ENABLED": "false",
    }
    server = OurServer(keep_temp, prefix="api-bench", env=env)
    sqlite = f"sqlite+aiosqlite:///{server.root / 'mediaserver.db'}"
    server.env["MEDIASERVER_DATABASE_URL"] = f"mysql+asyncmy://{MYSQL}/{database}" if database else sqlite
    return server


async def run_backend(name: str, args: argparse.Namespace) -> dict[str, Any]:
    database = "" if name == "sqlite" else f"bench_ms_{secrets.token_hex(4)}"
    server = api_server(args.keep_temp, database)
    url = server.env["MEDIASERVER_DATABASE_URL"]
    try:
        if database:
            await mariadb.execute(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        t0 = time.perf_counter()
        ids, keys, _ = await seed(url, args.cameras, args.audit_rows)
        seeded = time.perf_counter() - t0
        results: dict[str, Any] = {"backend": name, "seed_seconds": seeded}
        results["authorizer"] = await authorizer_latency(url, keys, args.requests * 10)
        server.start()
        base = server.url("")
        rng = random.Random(1)
        connector = aiohttp.TCPConnector(limit=args.concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.post(base + "/api/v1/auth/login", json={"username": "admin", "password": PASSWORD}) as r:
                token = (await r.json())["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            since = (datetime.now(UTC) - timedelta(days=1)).isoformat()
            scenarios = {
                "GET /cameras?limit=50 (random page)": lambda i: (
                    "GET",
                    f"{base}/api/v1/cameras",
                    {"headers": headers, "params": {"limit": 50, "offset": rng.randrange(0, args.cameras - 50)}},
                ),
                "GET /cameras/{id}/status": lambda i: (
                    "GET",
                    f"{base}/api/v1/cameras/{rng.choice(ids)}/status",
                    {"headers": headers},
                ),
                "GET /audit-logs?user_id&since (100k rows)": lambda i: (
                    "GET",
                    f"{base}/api/v1/audit-logs",
                    {"headers": headers, "params": {"limit": 50, "user_id": rng.randrange(1, 51), "since": since}},
                ),
            }
            assert server.process is not None
            server_process = psutil.Process(server.process.pid)
            for label, make in scenarios.items():
                await drive(session, make, 50, args.concurrency)  # warm-up
                cpu_before = server_process.cpu_times()
                latencies, errors, elapsed = await drive(session, make, args.requests, args.concurrency, args.rate)
                cpu_after = server_process.cpu_times()
                cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
                results[label] = {
                    "p50": pct(latencies, 0.5),
                    "p99": pct(latencies, 0.99),
                    "rps": len(latencies) / elapsed,
                    "errors": errors,
                    # The server's own CPU per request (all its threads): steadier than rates on a shared machine.
                    "cpu_ms": cpu * 1000 / max(len(latencies), 1),
                }
            login = lambda i: (  # noqa: E731
                "POST",
                f"{base}/api/v1/auth/login",
                {"json": {"username": "admin", "password": PASSWORD}},
            )
            latencies, errors, elapsed = await drive(session, login, args.logins, 4, rate=args.login_rate)
            results[f"POST /auth/login at {args.login_rate:g}/s (argon2id m=64MiB t=3 p=4)"] = {
                "p50": pct(latencies, 0.5),
                "p99": pct(latencies, 0.99),
                "rps": len(latencies) / elapsed,
                "errors": errors,
            }
        return results
    finally:
        server.stop()
        if database:
            await mariadb.execute(f"DROP DATABASE IF EXISTS `{database}`")


def render(all_results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        "## Control plane API",
        "",
        f"`python -m benchmarks.api_load --backends {args.backends} --requests {args.requests} "
        f"--concurrency {args.concurrency}{f' --rate {args.rate:g}' if args.rate else ''} --logins {args.logins} "
        f"--login-rate {args.login_rate:g}` on "
        f"{platform.machine()} ({os.cpu_count()} cores), Python {platform.python_version()}, "
        f"{datetime.now(UTC).strftime('%Y-%m-%d')}. {args.cameras} cameras and {args.audit_rows} audit rows seeded; "
        "server and load generator on the same machine (loopback), "
        + (
            f"{args.rate:g} requests/s sent on schedule over at most {args.concurrency} connections (latency from "
            "each request's due time); "
            if args.rate
            else f"{args.concurrency} requests in flight; "
        )
        + f"client-side latency in ms. Load average when the run started: {args.load_before:.2f} "
        "(other work on the machine shows here).",
        "",
        "| backend | request | p50 ms | p99 ms | req/s | server CPU ms/req | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in all_results:
        for label, figures in result.items():
            if isinstance(figures, dict) and "p50" in figures:
                cpu_ms = f"{figures['cpu_ms']:.2f}" if "cpu_ms" in figures else "-"
                lines.append(
                    f"| {result['backend']} | {label} | {figures['p50']:.2f} | {figures['p99']:.2f} | "
                    f"{figures['rps']:.0f} | {cpu_ms} | {figures['errors']} |"
                )
    lines += [
        "",
        "Publish authorization (DatabaseAuthorizer.authorize_publish, in process):",
        "",
        "| backend | cold p50 ms | cold p99 ms | warm p50 ms | warm p99 ms |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for result in all_results:
        a = result["authorizer"]
        lines.append(
            f"| {result['backend']} | {a['cold_p50']:.3f} | {a['cold_p99']:.3f} | {a['warm_p50']:.4f} | "
            f"{a['warm_p99']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,mariadb")
    parser.add_argument("--cameras", type=int, default=1000)
    parser.add_argument("--audit-rows", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--rate", type=float, default=None, help="requests per second, sent on schedule (default: as fast as answered)"
    )
    parser.add_argument("--logins", type=int, default=30)
    parser.add_argument("--login-rate", type=float, default=3.0)
    parser.add_argument("--append", help="append the Markdown section to this file")
    parser.add_argument("--json", type=Path, default=None, help="write every figure there")
    parser.add_argument("--keep-temp", action="store_true", help="keep the server's temp dir (its log, SQLite)")
    args = parser.parse_args(argv)
    args.load_before = os.getloadavg()[0]
    started = time.monotonic()
    results = [asyncio.run(run_backend(name, args)) for name in args.backends.split(",")]
    text = render(results, args)
    print(text)
    if args.append:
        with open(args.append, "a") as handle:
            handle.write("\n" + text)
    if args.json is not None:
        write_report(args.json, args, started, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
