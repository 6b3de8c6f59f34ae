"""Camera status follows its stream: online when it publishes, offline when it stops.

The hub calls listeners synchronously; events go through a queue to one worker so the
database sees them in order. The worker also refreshes last_seen and bitrate of live cameras.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy import select, update

from control.api.base import CAMERA_ID
from control.audit import SYSTEM, Audit
from control.store import Camera, Store
from control.store.types import utcnow
from mediaserver.events import StreamEvent, StreamEventKind
from mediaserver.hub import HubView

log = logging.getLogger("control.live")

_STOP = object()


class CameraLiveTracker:
    def __init__(self, store: Store, audit: Audit, hub: HubView, app: str, refresh_interval: float = 15.0) -> None:
        self._store = store
        self._audit = audit
        self._hub = hub
        self._app = app
        self._interval = refresh_interval
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._attached = False

    def start(self) -> None:
        if not self._attached:
            self._hub.listen(self.on_hub_event)
            self._attached = True
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is None:
            return
        self._queue.put_nowait(_STOP)
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=5)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    def on_hub_event(self, event: StreamEvent) -> None:
        stream = event.stream
        if stream.app != self._app or not CAMERA_ID.match(stream.name):
            return
        if event.kind in (StreamEventKind.STARTED, StreamEventKind.STOPPED):
            self._queue.put_nowait((event.kind, stream.name, stream.publisher.peer, int(stream.bitrate)))

    async def idle(self) -> None:
        """Wait until every queued event is in the database (tests)."""
        while not self._queue.empty():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)

    async def _run(self) -> None:
        while True:
            try:
                item = await asyncio.wait_for(self._queue.get(), timeout=self._interval)
            except TimeoutError:
                await self._guard(self._refresh())
                continue
            if item is _STOP:
                return
            assert isinstance(item, tuple)
            await self._guard(self._apply(*item))

    async def _guard(self, work: object) -> None:
        try:
            assert asyncio.iscoroutine(work)
            await work
        except Exception:
            log.exception("event=camera_status_update_failed")

    async def _apply(self, event: StreamEventKind, camera_id: str, peer: str, bitrate: int) -> None:
        online = event is StreamEventKind.STARTED
        status = "online" if online else "offline"
        now = utcnow()
        async with self._store.sessions.begin() as session:
            previous = await session.scalar(select(Camera.status).where(Camera.id == camera_id))
            if previous is None:
                return
            await session.execute(
                update(Camera)
                .where(Camera.id == camera_id)
                .values(status=status, last_seen=now, bitrate_bps=bitrate if online else 0)
            )
            if previous != status:
                self._audit.add(
                    session, f"camera.{status}", SYSTEM, "camera", camera_id, details={"peer": peer, "from": previous}
                )
        log.info("event=camera_%s camera=%s peer=%s", status, camera_id, peer)

    async def _refresh(self) -> None:
        live = [s for s in self._hub.list() if s.app == self._app and CAMERA_ID.match(s.name)]
        if not live:
            return
        now = utcnow()
        async with self._store.sessions.begin() as session:
            for stream in live:
                await session.execute(
                    update(Camera)
                    .where(Camera.id == stream.name)
                    .values(last_seen=now, bitrate_bps=int(stream.bitrate), status="online")
                )
