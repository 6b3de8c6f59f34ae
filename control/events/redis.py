"""Events between nodes over Redis pub/sub: every node publishes its own events on one channel and delivers the
others'. Redis being down never stops a node: local clients still get local events, outgoing events are
dropped (counted) while it is away, and the subscription comes back by itself."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.asyncio import Redis
from redis.exceptions import RedisError

from control.events.bus import Event, EventBus

if TYPE_CHECKING:
    from redis.asyncio.client import PubSub

log = logging.getLogger("control.events.redis")

# Outgoing events waiting for Redis; beyond this they are dropped rather than held without bound.
SEND_QUEUE = 10000
RETRY_MIN, RETRY_MAX = 0.5, 10.0


class RedisRelay:
    def __init__(self, bus: EventBus, url: str, prefix: str, registry: CollectorRegistry | None = None) -> None:
        self._bus = bus
        self._redis: Redis = Redis.from_url(url, socket_timeout=5, socket_connect_timeout=3, health_check_interval=15)
        self.channel = f"{prefix}events"
        self._queue: asyncio.Queue[str] = asyncio.Queue(SEND_QUEUE)
        self._tasks: list[asyncio.Task[None]] = []
        self._dropped = Counter(
            "mediaserver_events_relay_dropped",
            "Events not sent to other nodes (Redis away or behind)",
            registry=registry,
        )
        self._connected = Gauge(
            "mediaserver_events_relay_connected", "1 while the Redis event subscription is up", registry=registry
        )
        self.subscribed = asyncio.Event()

    def send(self, event: Event) -> None:
        try:
            self._queue.put_nowait(event.relayed())
        except asyncio.QueueFull:
            self._dropped.inc()

    def start(self) -> None:
        self._bus.relay = self
        self._tasks = [asyncio.create_task(self._publish_loop()), asyncio.create_task(self._subscribe_loop())]

    async def stop(self) -> None:
        self._bus.relay = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._redis.aclose()

    async def _publish_loop(self) -> None:
        while True:
            message = await self._queue.get()
            try:
                await self._redis.publish(self.channel, message)
            except (RedisError, OSError) as exc:
                # While Redis is away the backlog is dropped: other nodes could not use stale status anyway.
                dropped = 1 + self._queue.qsize()
                while not self._queue.empty():
                    self._queue.get_nowait()
                self._dropped.inc(dropped)
                log.warning("event=events_relay_send_failed dropped=%d error=%s", dropped, type(exc).__name__)
                await asyncio.sleep(RETRY_MIN)

    async def _subscribe_loop(self) -> None:
        delay = RETRY_MIN
        while True:
            pubsub: PubSub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self._connected.set(1)
                self.subscribed.set()
                log.info("event=events_relay_subscribed channel=%s", self.channel)
                delay = RETRY_MIN
                while True:
                    message = await pubsub.get_message(timeout=30.0)
                    if message is not None and message.get("type") == "message":
                        data = message["data"]
                        self._bus.deliver(data.decode() if isinstance(data, bytes) else str(data))
            except (RedisError, OSError) as exc:
                self._connected.set(0)
                self.subscribed.clear()
                log.warning("event=events_relay_down error=%s retry_in=%.1f", type(exc).__name__, delay)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]  # typed from redis 8.2
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(RETRY_MAX, delay * 2)
