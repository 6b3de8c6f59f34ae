"""The machine's stream registry, kept by the parent process: which worker owns which live stream.

Each worker holds one connection to it for as long as it lives. A claim is granted when no other worker owns
the stream; every change is broadcast so that each worker keeps a mirror it can read without a round trip.
When a worker's connection ends (it exited, it was killed), its streams are released at once: the registry
never points at a dead worker. Control-plane events and publisher kicks from one worker are passed to the
others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from mediaserver.cluster import wire

log = logging.getLogger("mediaserver.cluster")


class Coordinator:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.owners: dict[str, int] = {}
        # worker index -> what it said in its hello (pid, internal socket paths).
        self.workers: dict[int, dict[str, Any]] = {}
        self._writers: dict[int, asyncio.StreamWriter] = {}
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, str(self.path), limit=wire.MAX_LINE)
        os.chmod(self.path, 0o600)  # only this user's processes may register streams

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers.values()):
                writer.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _broadcast(self, message: dict[str, Any], skip: int | None = None) -> None:
        data = wire.encode(message)
        for index, writer in list(self._writers.items()):
            if index != skip and not writer.is_closing():
                writer.write(data)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index: int | None = None
        try:
            hello = wire.decode(await reader.readline())
            if hello["op"] != "hello" or not isinstance(hello.get("worker"), int):
                raise ValueError("the first message must be hello")
            index = int(hello["worker"])
            old = self._writers.pop(index, None)
            if old is not None:  # a restarted worker whose predecessor's connection has not ended yet
                old.close()
                self._drop(index)
            info = {key: hello.get(key) for key in ("pid", "rtmp", "http")}
            self.workers[index] = info
            self._writers[index] = writer
            writer.write(wire.encode({"op": "snapshot", "workers": self._workers_wire(), "owners": self.owners}))
            self._broadcast({"op": "worker", "worker": index, **info}, skip=index)
            log.info("event=worker_registered worker=%d pid=%s", index, info["pid"])
            while line := await reader.readline():
                self._handle(index, wire.decode(line), writer)
        except (ValueError, KeyError, TypeError, ConnectionError, asyncio.LimitOverrunError) as exc:
            log.warning("event=worker_link_error worker=%s error=%s", index, type(exc).__name__)
        finally:
            if index is not None and self._writers.get(index) is writer:
                del self._writers[index]
                self._drop(index)
                self.workers.pop(index, None)
                self._broadcast({"op": "gone", "worker": index})
            writer.close()

    def _workers_wire(self) -> dict[str, dict[str, Any]]:
        return {str(index): info for index, info in self.workers.items()}

    def _handle(self, index: int, message: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        op = message["op"]
        if op == "claim":
            key = str(message["key"])
            holder = self.owners.get(key)
            granted = holder is None or holder == index
            if granted:
                self.owners[key] = index
                self._broadcast({"op": "claimed", "key": key, "worker": index}, skip=index)
            writer.write(wire.encode({"op": "reply", "id": message["id"], "granted": granted, "holder": holder}))
        elif op == "release":
            key = str(message["key"])
            if self.owners.get(key) == index:
                del self.owners[key]
                self._broadcast({"op": "released", "key": key}, skip=index)
        elif op in ("event", "kick"):
            self._broadcast(message, skip=index)
        elif op == "streams":  # a worker's summary of the streams it holds, for the others' control planes
            self._broadcast({**message, "worker": index}, skip=index)
        else:
            raise ValueError(f"unknown op {op!r}")

    def _drop(self, index: int) -> None:
        gone = [key for key, owner in self.owners.items() if owner == index]
        for key in gone:
            del self.owners[key]
            self._broadcast({"op": "released", "key": key}, skip=index)
        if gone:
            log.info("event=worker_streams_released worker=%d streams=%d", index, len(gone))
