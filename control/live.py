"""Camera status follows its stream: online when it publishes, offline when it stops.

The hub calls listeners synchronously; events go through an `OrderedWorker` so the
database sees them in order. The worker also refreshes last_seen and bitrate of live cameras.
"""

from __future__ import annotations

import logging

from sqlalchemy import select, update

from control.api.base import CAMERA_ID
from control.audit import SYSTEM, Audit
from control.events import EventBus, EventName
from control.ordered import OrderedWorker
from control.store import Camera, Store
from control.store.types import utcnow
from mediaserver.events import StreamEvent, StreamEventKind
from mediaserver.hub import HubView

log = logging.getLogger("control.live")


class CameraLiveTracker:
    def __init__(self, store: Store, audit: Audit, hub: HubView, app: str, refresh_interval: float = 15.0) -> None:
        self._store = store
        self._audit = audit
        self._hub = hub
        self._app = app
        self._interval = refresh_interval
        self._worker: OrderedWorker[tuple[StreamEventKind, str, str, int]] = OrderedWorker(
            self._apply_event, "camera_status", every=refresh_interval, on_quiet=self._refresh
        )
        self._attached = False
        # Status changes are told to the dashboards (set by the control plane).
        self.events: EventBus | None = None

    def start(self) -> None:
        if not self._attached:
            self._hub.listen(self.on_hub_event)
            self._attached = True
        self._worker.start()

    async def stop(self) -> None:
        await self._worker.stop(timeout=5)

    def on_hub_event(self, event: StreamEvent) -> None:
        stream = event.stream
        if stream.app != self._app or not CAMERA_ID.match(stream.name) or stream.is_copy:
            return
        if event.kind in (StreamEventKind.STARTED, StreamEventKind.STOPPED):
            self._worker.put((event.kind, stream.name, stream.publisher.peer, int(stream.bitrate)))

    async def idle(self) -> None:
        """Wait until every queued event is in the database (tests)."""
        await self._worker.drained()

    async def _apply_event(self, item: tuple[StreamEventKind, str, str, int]) -> None:
        await self._apply(*item)

    async def _apply(self, event: StreamEventKind, camera_id: str, peer: str, bitrate: int) -> None:
        online = event is StreamEventKind.STARTED
        status = "online" if online else "offline"
        now = utcnow()
        async with self._store.sessions.begin() as session:
            row = (await session.execute(select(Camera.status, Camera.enabled).where(Camera.id == camera_id))).first()
            if row is None:
                return
            previous = row.status
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
        if self.events is not None and previous != status:
            data = {
                "status": status,
                "previous": previous,
                "enabled": row.enabled,
                "bitrate_bps": bitrate if online else 0,
            }
            self.events.publish(EventName.CAMERA_STATUS, data, camera_id)

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
