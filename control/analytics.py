"""Analytics samples: every `analytics.sample_interval`, one row per live camera (bitrate, frame rate, viewers);
rows older than `analytics.retention_days` are deleted. Uptime over a range is read from them: a camera with no
sample in an interval was not live. Only live cameras are sampled, so a thousand idle cameras cost nothing."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import delete, insert, select

from control.api.base import CAMERA_ID
from control.figures import LiveFigures
from control.store import Camera, CameraSample, Store
from control.store.types import utcnow
from mediaserver.config import AnalyticsConfig
from mediaserver.hub import HubView

log = logging.getLogger("control.analytics")

# Old samples are deleted in slices, so that a long backlog never holds the database for long.
DELETE_SLICE = 5000


class CameraSampler:
    def __init__(self, store: Store, hub: HubView, app: str, config: AnalyticsConfig, figures: LiveFigures) -> None:
        self._store = store
        self._hub = hub
        self._app = app
        self._config = config
        self._figures = figures

    async def sample(self) -> int:
        """One sample of every live camera that is in the database; the number written."""
        live = [s for s in self._hub.live_streams() if s.app == self._app and CAMERA_ID.match(s.name)]
        if not live:
            await self.prune()
            return 0
        viewers = self._figures.latest.body.get("cameras_live", {}) if self._figures.latest is not None else {}
        now = utcnow()
        async with self._store.sessions.begin() as session:
            known = set(await session.scalars(select(Camera.id).where(Camera.id.in_([s.name for s in live]))))
            rows = [
                {
                    "camera_id": stream.name,
                    "at": now,
                    "bitrate_bps": int(stream.bitrate),
                    "fps": round(stream.fps or stream.meta_fps, 2) or None,
                    "viewers": int(viewers.get(stream.name, {}).get("viewers", 0)),
                }
                for stream in live
                if stream.name in known
            ]
            if rows:
                await session.execute(insert(CameraSample), rows)
        await self.prune()
        return len(rows)

    async def prune(self) -> int:
        horizon = utcnow() - timedelta(days=self._config.retention_days)
        removed = 0
        while True:
            async with self._store.sessions.begin() as session:
                ids = list(
                    await session.scalars(select(CameraSample.id).where(CameraSample.at < horizon).limit(DELETE_SLICE))
                )
                if ids:
                    await session.execute(delete(CameraSample).where(CameraSample.id.in_(ids)))
            removed += len(ids)
            if len(ids) < DELETE_SLICE:
                break
        if removed:
            log.info("event=analytics_samples_pruned removed=%d", removed)
        return removed
