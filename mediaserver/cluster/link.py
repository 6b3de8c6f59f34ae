"""A worker's connection to its parent: stream claims, a mirror of the machine's registry, events between
workers. When the parent goes away the worker has no business going on (nobody would restart it, and its
ports may be taken by a new parent's workers): `on_parent_lost` is called."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mediaserver.cluster import wire

log = logging.getLogger("mediaserver.cluster")


@dataclass(frozen=True, slots=True)
class WorkerAddress:
    """Another worker on this machine: its internal RTMP and HTTP Unix sockets."""

    index: int
    rtmp: str
    http: str


class MachineLink:
    def __init__(self, path: str, index: int, rtmp_socket: str, http_socket: str) -> None:
        self.path = path
        self.index = index
        self._hello = {"op": "hello", "worker": index, "pid": os.getpid(), "rtmp": rtmp_socket, "http": http_socket}
        self.owners: dict[str, int] = {}
        self.workers: dict[int, WorkerAddress] = {}
        # worker index -> stream key -> that worker's last summary of the stream (`Stream.snapshot()`).
        self.remote_streams: dict[int, dict[str, dict[str, Any]]] = {}
        self.on_event: Callable[[str], None] | None = None
        self.on_parent_lost: Callable[[], None] | None = None
        # (app, name, reason): another worker's control plane disconnects a publisher this worker may hold.
        self.on_kick: Callable[[str, str, str], None] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._closing = False

    async def start(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(self.path, limit=wire.MAX_LINE)
        self._writer.write(wire.encode(self._hello))
        snapshot = wire.decode(await reader.readline())
        self._apply(snapshot)
        self._reader_task = asyncio.get_running_loop().create_task(self._read(reader))

    async def stop(self) -> None:
        self._closing = True
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task

    def owner(self, key: str) -> WorkerAddress | None:
        """The other worker that owns `key` now, if any (this one's own streams are None)."""
        index = self.owners.get(key)
        if index is None or index == self.index:
            return None
        return self.workers.get(index)

    def others(self) -> list[WorkerAddress]:
        return [address for index, address in sorted(self.workers.items()) if index != self.index]

    async def claim(self, key: str, timeout: float = 5.0) -> int | None:
        """Make `key` this worker's; the index of the worker that holds it instead, or None when granted.
        A parent that does not answer grants it (this worker serves what it holds, as a lone process would)."""
        if self._writer is None or self._writer.is_closing():
            return None
        self._next_id += 1
        request_id = self._next_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[request_id] = future
        self._writer.write(wire.encode({"op": "claim", "id": request_id, "key": key}))
        try:
            reply = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            log.warning("event=worker_claim_timeout stream=%s", key)
            return None
        finally:
            self._replies.pop(request_id, None)
        if reply.get("granted"):
            self.owners[key] = self.index
            return None
        holder = reply.get("holder")
        return int(holder) if isinstance(holder, int) else None

    def release(self, key: str) -> None:
        if self.owners.get(key) == self.index:
            del self.owners[key]
        self._send({"op": "release", "key": key})

    def send_kick(self, app: str, name: str, reason: str) -> None:
        self._send({"op": "kick", "app": app, "name": name, "reason": reason})

    def send_streams(self, summaries: list[dict[str, object]]) -> None:
        self._send({"op": "streams", "streams": summaries})

    def send_event(self, raw: str) -> None:
        self._send({"op": "event", "data": raw})

    def _send(self, message: dict[str, Any]) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(wire.encode(message))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                self._apply(wire.decode(line))
        except (ValueError, ConnectionError, asyncio.LimitOverrunError) as exc:
            log.warning("event=parent_link_error error=%s", type(exc).__name__)
        if not self._closing:
            log.error("event=parent_lost worker=%d", self.index)
            if self.on_parent_lost is not None:
                self.on_parent_lost()

    def _apply(self, message: dict[str, Any]) -> None:
        op = message["op"]
        if op == "reply":
            future = self._replies.get(int(message["id"]))
            if future is not None and not future.done():
                future.set_result(message)
        elif op == "claimed":
            self.owners[str(message["key"])] = int(message["worker"])
        elif op == "released":
            key = str(message["key"])
            if self.owners.get(key) != self.index:
                self.owners.pop(key, None)
        elif op == "event":
            if self.on_event is not None:
                self.on_event(str(message["data"]))
        elif op == "streams":
            listed = message.get("streams") or []
            self.remote_streams[int(message["worker"])] = {f"{s['app']}/{s['name']}": s for s in listed}
        elif op == "kick":
            if self.on_kick is not None:
                self.on_kick(str(message["app"]), str(message["name"]), str(message["reason"]))
        elif op == "worker":
            self._add_worker(int(message["worker"]), message)
        elif op == "gone":
            self.workers.pop(int(message["worker"]), None)
            self.remote_streams.pop(int(message["worker"]), None)
        elif op == "snapshot":
            for index, info in dict(message["workers"]).items():
                self._add_worker(int(index), info)
            self.owners.update({str(key): int(owner) for key, owner in dict(message["owners"]).items()})

    def _add_worker(self, index: int, info: dict[str, Any]) -> None:
        self.workers[index] = WorkerAddress(index, str(info.get("rtmp") or ""), str(info.get("http") or ""))
