"""Closed-loop HTTP load: a fixed number of requests in flight, bounded in count and in time, timed per request.

`drive` runs `count` requests (`make(i)` gives request i's method, URL and aiohttp keyword arguments) with
`concurrency` in flight, each worker taking the next request when its last one is answered; no request starts
after `time_limit` seconds. A latency is from sending the request to having read the whole body (client side).
Answers of 400 and above count as errors, as do exceptions (by type); their first few are kept as samples.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from benchmarks.lib.stats import percentiles

Request = tuple[str, str, dict[str, Any]]  # method, URL, aiohttp keyword arguments


@dataclass(slots=True)
class Load:
    latencies_s: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)  # "200", "400", or an exception's type name
    errors: int = 0
    body_bytes: int = 0
    elapsed_s: float = 0.0
    stopped_by_time: bool = False
    error_samples: list[str] = field(default_factory=list)

    @property
    def done(self) -> int:
        return len(self.latencies_s)

    def latency_ms(self) -> dict[str, float | None]:
        """p50, p95, p99 and max ("max") in ms, nearest rank (`benchmarks.lib.stats`)."""
        return percentiles((s * 1000 for s in self.latencies_s), (50, 95, 99, 100), 2)

    @property
    def rps(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0


async def drive(
    session: aiohttp.ClientSession,
    make: Callable[[int], Request],
    count: int,
    concurrency: int,
    time_limit: float | None = None,
) -> Load:
    load = Load()
    numbers = itertools.count()
    started = time.perf_counter()
    deadline = None if time_limit is None else started + time_limit

    async def worker() -> None:
        while True:
            i = next(numbers)
            if i >= count:
                return
            if deadline is not None and time.perf_counter() >= deadline:
                load.stopped_by_time = True
                return
            method, url, kwargs = make(i)
            begin = time.perf_counter()
            try:
                async with session.request(method, url, **kwargs) as response:
                    body = await response.read()
                    status = str(response.status)
                    if response.status >= 400:
                        load.errors += 1
                        if len(load.error_samples) < 5:
                            load.error_samples.append(f"{status}: {body[:200].decode(errors='replace')}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = type(exc).__name__
                body = b""
                load.errors += 1
                if len(load.error_samples) < 5:
                    load.error_samples.append(f"{status}: {exc}")
            load.latencies_s.append(time.perf_counter() - begin)
            load.body_bytes += len(body)
            load.statuses[status] = load.statuses.get(status, 0) + 1

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    load.elapsed_s = time.perf_counter() - started
    return load
