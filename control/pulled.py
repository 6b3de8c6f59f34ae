"""Cameras that serve their stream: the data plane pulls each enabled camera with a `source_url`, as stream
`<publish_app>/<camera id>`, and stops when the camera is disabled, deleted or its URL cleared.

The API calls `changed()` after any camera change (and a change made through another worker or node, heard as
its event, does the same); one worker then compares the database with what is pulled
and starts, restarts (a new URL) or stops sources, so concurrent changes apply in order and none is lost. The
same worker marks a camera `error` (audited once) while its source fails; going live makes it `online` again
(the stream's own events, `control.live`).
"""

from __future__ import annotations

import logging
from typing import Protocol

from sqlalchemy import select, update

from control.audit import SYSTEM, Audit
from control.events import Event, EventBus, EventName
from control.ordered import OrderedWorker
from control.store import Camera, Store

log = logging.getLogger("control.pulled")

_CAMERA_CHANGES = frozenset({EventName.CAMERA_UPDATED.value, EventName.CAMERA_DELETED.value})


class SourceState(Protocol):
    state: str
    last_error: str


class PullControl(Protocol):
    """The part of the data plane's pull service the control plane drives."""

    async def set_source(self, app: str, name: str, url: str | None) -> None: ...

    def get(self, app: str, name: str) -> SourceState | None: ...


class PulledCameras:
    def __init__(self, store: Store, app: str, audit: Audit | None = None, check_interval: float = 5.0) -> None:
        self._store = store
        self._app = app
        self._audit = audit
        self.pull: PullControl | None = None
        self._pulled: set[str] = set()
        self._sync_queued = False
        self.events: EventBus | None = None
        self._worker: OrderedWorker[None] = OrderedWorker(
            self._sync, "pulled_cameras", every=check_interval, on_quiet=self._mark_failing
        )

    def start(self) -> None:
        self._worker.start()
        self.changed()

    async def stop(self) -> None:
        await self._worker.stop()

    def changed(self) -> None:
        """Some camera changed: bring the pulled sources in line (soon, in order). One pass covers every
        change made before it starts, so a burst of changes queues one pass, not one each."""
        if self.pull is not None and not self._sync_queued:
            self._sync_queued = True
            self._worker.put(None)

    def on_event(self, event: Event) -> None:
        """A camera changed through another worker or node: its sources may be this worker's to read."""
        if event.name in _CAMERA_CHANGES and self.events is not None and event.origin != self.events.node_id:
            self.changed()

    async def idle(self) -> None:
        await self._worker.drained()

    def state(self, camera_id: str) -> SourceState | None:
        return self.pull.get(self._app, camera_id) if self.pull is not None else None

    async def _sync(self, _: None) -> None:
        self._sync_queued = False
        pull = self.pull
        if pull is None:
            return
        async with self._store.reader() as session:
            rows = (
                await session.execute(
                    select(Camera.id, Camera.source_url).where(Camera.enabled.is_(True), Camera.source_url.is_not(None))
                )
            ).all()
        wanted = {row.id: row.source_url for row in rows if row.source_url}
        for camera_id in sorted(self._pulled - wanted.keys()):
            await pull.set_source(self._app, camera_id, None)
            self._pulled.discard(camera_id)
            log.info("event=camera_pull_stopped camera=%s", camera_id)
        for camera_id, url in wanted.items():
            await pull.set_source(self._app, camera_id, url)
            if camera_id not in self._pulled:
                self._pulled.add(camera_id)
                log.info("event=camera_pull_started camera=%s", camera_id)

    async def _mark_failing(self) -> None:
        """Cameras whose source is failing: status `error`, once (not while it is already)."""
        pull = self.pull
        if pull is None:
            return
        failing = [c for c in sorted(self._pulled) if (s := pull.get(self._app, c)) is not None and s.state == "error"]
        if not failing:
            return
        async with self._store.sessions.begin() as session:
            rows = (
                await session.execute(
                    select(Camera.id, Camera.status, Camera.enabled).where(
                        Camera.id.in_(failing), Camera.status != "error"
                    )
                )
            ).all()
            for row in rows:
                await session.execute(update(Camera).where(Camera.id == row.id).values(status="error"))
                if self._audit is not None:
                    self._audit.add(session, "camera.error", SYSTEM, "camera", row.id, details={"from": row.status})
                log.warning("event=camera_error camera=%s reason=source_failing", row.id)
        if self.events is not None:
            for row in rows:
                source = pull.get(self._app, row.id)
                data = {
                    "status": "error",
                    "previous": row.status,
                    "enabled": row.enabled,
                    "bitrate_bps": 0,
                    "error": source.last_error if source is not None else "",
                }
                self.events.publish(EventName.CAMERA_STATUS, data, row.id)
