"""Fixed-window rate limits: in process by default, in Redis when several nodes share them."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("control.ratelimit")


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    remaining: int
    retry_after: float


class RateLimiter(Protocol):
    async def hit(self, key: str, limit: int, window: float) -> Decision:
        """Count one request against `key`; at most `limit` per `window` seconds are allowed."""

    async def close(self) -> None: ...


def _decide(count: int, limit: int, window: float, now: float) -> Decision:
    window_end = (math.floor(now / window) + 1) * window
    if count > limit:
        return Decision(False, 0, max(window_end - now, 0.001))
    return Decision(True, limit - count, 0.0)


class MemoryRateLimiter:
    def __init__(self, max_keys: int = 100_000) -> None:
        self._counts: dict[tuple[str, int], int] = {}
        self._max_keys = max_keys
        self._current_slots: dict[float, int] = {}

    async def hit(self, key: str, limit: int, window: float) -> Decision:
        now = time.time()
        slot = int(now // window)
        if self._current_slots.get(window) != slot:
            self._current_slots[window] = slot
            self._prune(now)
        if len(self._counts) >= self._max_keys:
            self._prune(now, force=True)
        count = self._counts.get((key, slot), 0) + 1
        self._counts[(key, slot)] = count
        return _decide(count, limit, window, now)

    def _prune(self, now: float, force: bool = False) -> None:
        keep: dict[tuple[str, int], int] = {}
        slots = set(self._current_slots.values())
        for (key, slot), count in self._counts.items():
            if slot in slots and not force:
                keep[(key, slot)] = count
        self._counts = keep

    async def close(self) -> None:
        self._counts.clear()


class RedisRateLimiter:
    """INCR of a per-window key with an expiry, in one MULTI; every node sees the same counts."""

    def __init__(self, client: Any, prefix: str = "mediaserver:") -> None:
        self._client = client
        self._prefix = prefix

    @classmethod
    def from_url(cls, url: str, prefix: str = "mediaserver:") -> RedisRateLimiter:
        from redis.asyncio import Redis

        return cls(Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0), prefix)

    async def hit(self, key: str, limit: int, window: float) -> Decision:
        now = time.time()
        slot = int(now // window)
        redis_key = f"{self._prefix}rl:{key}:{slot}"
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.incr(redis_key)
                pipe.pexpire(redis_key, int(window * 1000) + 1000)
                count, _ = await pipe.execute()
        except Exception as exc:  # Redis down: fail open rather than lock every user out
            log.warning("event=ratelimit_unavailable error=%s", exc)
            return Decision(True, limit, 0.0)
        return _decide(int(count), limit, window, now)

    async def close(self) -> None:
        await self._client.aclose()
