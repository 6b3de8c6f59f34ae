"""The stream registry between nodes, in Redis: one key per live stream, naming the node (and worker) that
holds it and where that node is reached. Each key expires `ttl` seconds after its holder's last heartbeat
(sent every third of it), so the entry of a dead node is gone within the TTL. Pull leases work the same way:
one key per always-on pulled camera, naming the node that reads it, so that a camera is read by one node.

A heartbeat renews a key only while it is still this node's (or has expired): two nodes that both took a
stream while Redis was away do not overwrite each other when it returns; the one whose renewal finds the
other's entry has lost the key and is told (`on_lost`), which cuts its publisher or stops its reader.

Redis being down never stops a node: claims are granted locally (counted), lookups find nothing (players of
streams held elsewhere are refused, local streams go on), and the next heartbeat that gets through writes
every entry this node holds again: the registry heals by itself.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.asyncio import Redis
from redis.exceptions import RedisError

from mediaserver.background import BackgroundTask

log = logging.getLogger("mediaserver.cluster")

# Delete the key only while it is still ours (another node may have taken it after it expired).
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
# Renew the key while it is ours or free; 0 when another node holds it.
_RENEW = (
    "local v = redis.call('get', KEYS[1]) "
    "if v == false or v == ARGV[1] then redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end "
    "return 0"
)
STREAM = "stream"
LEASE = "pull"


@dataclass(frozen=True, slots=True)
class NodeEntry:
    node: str
    worker: int
    rtmp: str
    http: str

    def encoded(self) -> str:
        return json.dumps({"node": self.node, "worker": self.worker, "rtmp": self.rtmp, "http": self.http})

    @classmethod
    def decoded(cls, raw: str | bytes) -> NodeEntry | None:
        try:
            value = json.loads(raw)
            return cls(str(value["node"]), int(value["worker"]), str(value["rtmp"]), str(value["http"]))
        except (ValueError, KeyError, TypeError):
            return None


class RedisRegistry:
    def __init__(
        self, url: str, prefix: str, entry: NodeEntry, ttl: float, registry: CollectorRegistry | None = None
    ) -> None:
        self._redis: Redis = Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._prefix = prefix
        self.entry = entry
        self._value = entry.encoded()
        self.ttl = ttl
        self._ttl_ms = int(ttl * 1000)
        self._renew = self._redis.register_script(_RENEW)
        # (kind, key) of what this node holds: kind is STREAM or LEASE.
        self._held: set[tuple[str, str]] = set()
        # Told (kind, key) when a heartbeat finds that another node holds a key this node thought it held.
        self.on_lost: list[Callable[[str, str], None]] = []
        self._up = True
        self._heartbeat = BackgroundTask.every(ttl / 3, self._beat, "registry_heartbeat")
        self._connected = Gauge(
            "mediaserver_registry_connected", "1 while the Redis stream registry answers", registry=registry
        )
        self._errors = Counter(
            "mediaserver_registry_errors", "Redis stream registry calls that failed", ["call"], registry=registry
        )
        self._lost = Counter(
            "mediaserver_registry_keys_lost",
            "Streams and pull leases another node held when this node's heartbeat came to renew them",
            ["kind"],
            registry=registry,
        )
        self._connected.set(1)

    def _key(self, kind: str, key: str) -> str:
        return f"{self._prefix}{kind}:{key}"

    def start(self) -> None:
        self._heartbeat.start()

    async def stop(self) -> None:
        await self._heartbeat.stop()
        for kind, key in list(self._held):
            await self.release(key, kind)
        await self._redis.aclose()

    def _failed(self, call: str, exc: Exception) -> None:
        self._errors.labels(call).inc()
        if self._up:
            log.warning("event=registry_down call=%s error=%s", call, type(exc).__name__)
        self._up = False
        self._connected.set(0)

    async def claim(self, key: str, kind: str = STREAM) -> NodeEntry | None:
        """Make `key` this node's; the entry of its holder instead, or None when granted (or Redis is away)."""
        held = (kind, key)
        self._held.add(held)
        name = self._key(kind, key)
        raw: bytes | str | None = None
        try:
            # The holder may let go between the SET and the GET: then try the SET again rather than take a key
            # that nobody wrote for granted (the next heartbeat would find it missing and drop it).
            for _ in range(3):
                if await self._redis.set(name, self._value, nx=True, px=self._ttl_ms):
                    return None
                raw = await self._redis.get(name)
                if raw is not None:
                    break
        except (RedisError, OSError) as exc:
            self._failed("claim", exc)
            return None
        holder = NodeEntry.decoded(raw) if raw is not None else None
        if holder is None or holder == self.entry:
            return None
        self._held.discard(held)
        return holder

    async def release(self, key: str, kind: str = STREAM) -> None:
        self._held.discard((kind, key))
        try:
            await self._redis.eval(_RELEASE, 1, self._key(kind, key), self._value)
        except (RedisError, OSError) as exc:
            self._failed("release", exc)

    async def lookup(self, key: str) -> NodeEntry | None:
        """Who holds `key`, as far as Redis knows (None: nobody, or Redis is away)."""
        try:
            raw = await self._redis.get(self._key(STREAM, key))
        except (RedisError, OSError) as exc:
            self._failed("lookup", exc)
            return None
        return NodeEntry.decoded(raw) if raw is not None else None

    async def _beat(self) -> None:
        started = time.monotonic()
        held = list(self._held)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for kind, key in held:
                    await self._renew(keys=[self._key(kind, key)], args=[self._value, self._ttl_ms], client=pipe)
                renewed = await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed("heartbeat", exc)
            return
        if not self._up:
            log.info("event=registry_up streams=%d", len(self._held))
        self._up = True
        self._connected.set(1)
        for (kind, key), ok in zip(held, renewed, strict=True):
            if not ok and (kind, key) in self._held:
                self._held.discard((kind, key))
                log.warning("event=registry_key_lost kind=%s stream=%s", kind, key)
                self._lost.labels(kind).inc()
                for listener in self.on_lost:
                    listener(kind, key)
        elapsed = time.monotonic() - started
        if elapsed > self._ttl_ms / 3000:
            log.warning("event=registry_heartbeat_slow seconds=%.2f streams=%d", elapsed, len(self._held))

    @property
    def held(self) -> frozenset[str]:
        """The streams this node holds."""
        return frozenset(key for kind, key in self._held if kind == STREAM)


class NodeLeases:
    """Pull leases in the registry (`pull.service.SourceLeases`): the node holding a camera's lease reads it."""

    def __init__(self, nodes: RedisRegistry, on_lost: Callable[[str], None]) -> None:
        """`on_lost(key)`: another node reads `key` now (both took its lease while Redis was away)."""
        self.nodes = nodes
        self._on_lost = on_lost
        nodes.on_lost.append(self._key_lost)

    def _key_lost(self, kind: str, key: str) -> None:
        if kind == LEASE:
            self._on_lost(key)

    async def take(self, key: str) -> str | None:
        holder = await self.nodes.claim(key, LEASE)
        return None if holder is None else holder.node

    async def give_back(self, key: str) -> None:
        await self.nodes.release(key, LEASE)
