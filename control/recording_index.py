"""The recordings index: database rows that follow the recorder and, at start-up, the disk.

The recorder calls the sink synchronously on the event loop; the calls go through a queue to one worker so
the database sees them in order (as camera status does in `live.py`). At start-up, before anything records,
`reconcile` walks the hot tier: files the index lacks are added, files a crash cut short are repaired and
closed, rows whose file is gone are removed, so that the index matches the disk.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import delete, select, update

from control.api.base import CAMERA_ID
from control.events import EventBus, EventName
from control.ordered import OrderedWorker
from control.rbac import Permission
from control.store import Camera, Recording, Store
from mediaserver.recording import repair
from mediaserver.recording.recorder import RecordingFile

log = logging.getLogger("control.recordings")


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class CameraRecordPolicy:
    """Record a camera's stream when the camera has `recording_enabled`, and streams the config's patterns name."""

    def __init__(self, store: Store, app: str, patterns: list[str]) -> None:
        from mediaserver.recording.recorder import PatternPolicy

        self._store = store
        self._app = app
        self._patterns = PatternPolicy(patterns)

    async def wants(self, app: str, name: str) -> bool:
        if await self._patterns.wants(app, name):
            return True
        if app != self._app or not CAMERA_ID.match(name):
            return False
        async with self._store.reader() as session:
            enabled = await session.scalar(select(Camera.recording_enabled).where(Camera.id == name))
        return bool(enabled)


class RecordingIndex:
    """The `RecordingSink` of the recorder, backed by the `recordings` table."""

    def __init__(self, store: Store, root: Path, app: str) -> None:
        self._store = store
        self._root = root
        self._app = app
        self._worker: OrderedWorker[tuple[str, RecordingFile]] = OrderedWorker(self._apply_change, "recording_index")
        # Relative path -> row id of the files this process opened.
        self._rows: dict[str, int] = {}
        self.alerts: list[tuple[str, str, str]] = []
        # Files opened and closed are told to the dashboards, overflows to the alerts (set by the control plane).
        self.events: EventBus | None = None
        self.on_alert: Callable[[str, str, str], None] | None = None

    # ----- RecordingSink (event loop, must not block) ------------------------------------------------------

    def _camera_of(self, file: RecordingFile) -> str | None:
        if file.app == self._app and CAMERA_ID.match(file.name):
            return file.name
        return None

    def opened(self, file: RecordingFile) -> None:
        if self._camera_of(file) is not None:
            self._worker.put(("opened", replace(file)))

    def progressed(self, file: RecordingFile) -> None:
        if self._camera_of(file) is not None:
            self._worker.put(("progressed", replace(file)))

    def closed(self, file: RecordingFile) -> None:
        if self._camera_of(file) is not None:
            self._worker.put(("closed", replace(file)))

    def alert(self, app: str, name: str, reason: str, detail: str) -> None:
        log.warning("event=recording_alert stream=%s/%s reason=%s detail=%s", app, name, reason, detail)
        self.alerts = [*self.alerts[-99:], (f"{app}/{name}", reason, detail)]
        if self.on_alert is not None:
            self.on_alert(app, name, reason)

    # ----- worker --------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._worker.start()

    async def stop(self) -> None:
        await self._worker.stop()

    async def idle(self) -> None:
        """Wait until every queued change is in the database (tests)."""
        await self._worker.drained()

    async def _apply_change(self, item: tuple[str, RecordingFile]) -> None:
        await self._apply(*item)

    async def _apply(self, kind: str, file: RecordingFile) -> None:
        camera_id = self._camera_of(file)
        assert camera_id is not None
        if kind == "opened":
            async with self._store.sessions.begin() as session:
                row = Recording(
                    camera_id=camera_id,
                    started_at=_utc(file.started_at),
                    ended_at=None,
                    path=file.path,
                    size_bytes=file.size,
                    duration_seconds=0.0,
                    tier="hot",
                    codecs=",".join(file.codecs),
                    instance=file.instance,
                )
                session.add(row)
                await session.flush()
                self._rows[file.path] = row.id
            if self.events is not None:
                data = {"recording_id": row.id, "path": file.path, "start": _utc(file.started_at)}
                self.events.publish(EventName.RECORDING_STARTED, data, camera_id, Permission.RECORDINGS_READ)
            return
        row_id = self._rows.get(file.path)
        if row_id is None:
            return
        values: dict[str, object] = {
            "size_bytes": file.size,
            "duration_seconds": round(file.duration, 3),
            "ended_at": _utc(file.ended_at),
        }
        if kind == "closed":
            values["checksum"] = file.checksum
            self._rows.pop(file.path, None)
        async with self._store.sessions.begin() as session:
            await session.execute(update(Recording).where(Recording.id == row_id).values(**values))
        if kind == "closed" and self.events is not None:
            data = {
                "recording_id": row_id,
                "start": _utc(file.started_at),
                "end": _utc(file.ended_at),
                "bytes": file.size,
                "duration_seconds": round(file.duration, 3),
            }
            self.events.publish(EventName.RECORDING_CLOSED, data, camera_id, Permission.RECORDINGS_READ)

    # ----- start-up ------------------------------------------------------------------------------------------

    async def reconcile(self) -> dict[str, int]:
        """Make the hot tier's rows match its files; returns counts of what was done."""
        counts = {"added": 0, "repaired": 0, "removed": 0}
        on_disk = set(await asyncio.to_thread(lambda: list(repair.recordings_under(self._root))))
        async with self._store.reader() as session:
            rows = (await session.execute(select(Recording).where(Recording.tier == "hot"))).scalars().all()
            known = {row.path: (row.id, row.checksum) for row in rows}
            cameras = set((await session.execute(select(Camera.id))).scalars().all())
        for path, (row_id, _) in known.items():
            if path not in on_disk:
                async with self._store.sessions.begin() as session:
                    await session.execute(delete(Recording).where(Recording.id == row_id))
                counts["removed"] += 1
                log.warning("event=recording_row_removed path=%s reason=file_missing", path)
        for path in sorted(on_disk):
            row = known.get(path)
            if row is not None and row[1] is not None:
                continue  # closed cleanly: the index is right
            try:
                facts = await asyncio.to_thread(repair.repair_file, self._root, path)
            except (OSError, ValueError) as exc:
                log.error("event=recording_unreadable path=%s error=%s", path, exc)
                continue
            header = facts.header
            camera_id = str(header.get("name", ""))
            if header.get("app") != self._app or camera_id not in cameras:
                continue
            values = {
                "size_bytes": facts.size,
                "duration_seconds": facts.duration,
                "ended_at": _utc(facts.ended_at),
                "checksum": facts.checksum,
            }
            async with self._store.sessions.begin() as session:
                if row is None:
                    session.add(
                        Recording(
                            camera_id=camera_id,
                            started_at=_utc(facts.started_at),
                            path=path,
                            tier="hot",
                            codecs=",".join(str(c) for c in header.get("codecs", [])),
                            instance=str(header.get("instance", "")),
                            **values,
                        )
                    )
                    counts["added"] += 1
                else:
                    await session.execute(update(Recording).where(Recording.id == row[0]).values(**values))
                    counts["repaired"] += 1
        log.info(
            "event=recordings_reconciled added=%d repaired=%d removed=%d",
            counts["added"],
            counts["repaired"],
            counts["removed"],
        )
        return counts
