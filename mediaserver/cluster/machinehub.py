"""The hub as the control plane of one worker sees it: the streams of the whole machine, and kicks that reach
every worker.

- Each worker sends the summary of the streams it holds to its parent every second; the parent passes it to
  the others. `live`/`live_streams` answer from this process's streams and those summaries, so the camera list,
  the dashboard's figures, the camera samples and the bitrate alerts (the last three run in worker 0) cover
  every worker's cameras.
- Disabling a camera, rotating its key or deleting it must disconnect its publisher wherever it is connected: a
  kick the local hub cannot do is passed to the other workers.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from typing import Any

from mediaserver.background import BackgroundTask
from mediaserver.cluster.link import MachineLink
from mediaserver.hub import Hub, Stream, StreamListener, StreamView

SUMMARY_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class RemotePublisher:
    protocol: str
    peer: str


class RemoteStream:
    """A stream another worker holds, as its last summary (at most a second old) tells of it."""

    __slots__ = ("_summary", "app", "bitrate", "fps", "meta_fps", "name", "publisher", "worker")

    def __init__(self, worker: int, summary: dict[str, Any]) -> None:
        self.worker = worker
        self._summary = summary
        self.app = str(summary.get("app", ""))
        self.name = str(summary.get("name", ""))
        self.bitrate = float(summary.get("bitrate_bps") or 0)
        video = summary.get("video") or {}
        self.fps = float(video.get("fps") or 0) if isinstance(video, dict) else 0.0
        self.meta_fps = 0.0
        publisher = summary.get("publisher") or {}
        self.publisher = RemotePublisher(str(publisher.get("protocol", "")), str(publisher.get("peer", "")))

    @property
    def key(self) -> str:
        return f"{self.app}/{self.name}"

    def subscriber_counts(self) -> dict[str, int]:
        counts = self._summary.get("subscribers") or {}
        return {str(k): int(v) for k, v in counts.items()} if isinstance(counts, dict) else {}

    def snapshot(self) -> dict[str, object]:
        return {**self._summary, "worker": self.worker}


class MachineHub:
    def __init__(self, hub: Hub, link: MachineLink) -> None:
        self._hub = hub
        self._link = link
        link.on_kick = self._kicked
        self._summaries = BackgroundTask.every(SUMMARY_INTERVAL, self._send_summary, "stream_summaries")

    def start(self) -> None:
        self._summaries.start()

    async def stop(self) -> None:
        await self._summaries.stop()

    def _send_summary(self) -> None:
        self._link.send_streams([stream.snapshot() for stream in self._hub.live_streams()])

    def get(self, app: str, name: str) -> Stream | None:
        return self._hub.get(app, name)

    async def find(self, app: str, name: str) -> Stream | None:
        return await self._hub.find(app, name)

    def list(self) -> list[Stream]:
        return self._hub.list()

    def listen(self, listener: StreamListener) -> None:
        self._hub.listen(listener)

    def live(self, app: str, name: str) -> StreamView | None:
        local = self._hub.live(app, name)
        if local is not None:
            return local
        key = f"{app}/{name}"
        holder = self._link.owner(key)
        if holder is None:
            return None
        summary = self._link.remote_streams.get(holder.index, {}).get(key)
        return RemoteStream(holder.index, summary) if summary is not None else None

    def live_streams(self) -> builtins.list[StreamView]:
        streams: builtins.list[StreamView] = self._hub.live_streams()
        for worker, summaries in sorted(self._link.remote_streams.items()):
            streams.extend(RemoteStream(worker, summary) for summary in summaries.values())
        return streams

    def kick(self, app: str, name: str, reason: str) -> bool:
        if self._hub.live(app, name) is not None:
            return self._hub.kick(app, name, reason)
        self._link.send_kick(app, name, reason)
        return self._link.owner(f"{app}/{name}") is not None

    def _kicked(self, app: str, name: str, reason: str) -> None:
        if self._hub.live(app, name) is not None:
            self._hub.kick(app, name, reason)
