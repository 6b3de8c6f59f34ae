"""Analytics: the dashboard's figures, one camera's history (samples, uptime, recording coverage), the host."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import psutil
from aiohttp import web
from pydantic import BaseModel, Field
from sqlalchemy import select

from control.api.base import RouteTable, path_camera_id, send
from control.api.recording_schemas import RangeEnd, RangeStart
from control.api.recording_support import require_camera, time_range
from control.api.schemas import Query
from control.api.system import server_version
from control.api.validated import query
from control.rbac import Permission
from control.services import Services, services
from control.store import CameraSample, Recording

routes = RouteTable("analytics")


class CameraCounts(BaseModel):
    total: int
    online: int
    offline: int
    error: int
    disabled: int


class StreamCounts(BaseModel):
    live: int
    by_protocol: dict[str, int]


class ViewerCounts(BaseModel):
    total: int
    by_protocol: dict[str, int]


class Bandwidth(BaseModel):
    ingest_bps: int
    egress_bps: int


class TierUsage(BaseModel):
    tier: str
    bytes: int
    files: int
    free_percent: float | None


class Storage(BaseModel):
    tiers: list[TierUsage]


class AlertOut(BaseModel):
    id: str
    kind: str
    severity: str
    state: str
    message: str
    camera_id: str | None
    since: str


class AlertList(BaseModel):
    open: int
    items: list[AlertOut]


class LiveCamera(BaseModel):
    bitrate_bps: int
    viewers: int


class DashboardOut(BaseModel):
    cameras: CameraCounts
    streams: StreamCounts
    viewers: ViewerCounts
    bandwidth: Bandwidth
    storage: Storage
    alerts: AlertList
    cameras_live: dict[str, LiveCamera]
    at: str


class CameraAnalyticsQuery(Query):
    start: RangeStart = None
    end: RangeEnd = None


class SampleOut(BaseModel):
    at: datetime
    online: bool
    bitrate_bps: int
    fps: float | None
    viewers: int


class CameraAnalyticsOut(BaseModel):
    camera_id: str
    start: datetime
    end: datetime
    interval: float
    samples: list[SampleOut]
    uptime_percent: float
    recording_coverage_percent: float | None
    bitrate_avg_bps: int
    viewers_max: int


class MemoryOut(BaseModel):
    rss_bytes: int
    total_bytes: int
    used_percent: float


class DiskOut(BaseModel):
    path: str
    total_bytes: int
    free_bytes: int
    used_percent: float


class LoopOut(BaseModel):
    lag_seconds: float
    lag_max_seconds: float


class ProcessOut(BaseModel):
    pid: int
    uptime_seconds: float
    threads: int
    open_fds: int
    version: str


class SystemAnalyticsOut(BaseModel):
    cpu_percent: Annotated[float, Field(description="This process, percent of one core since the last call")]
    host_cpu_percent: float
    cpu_count: int
    memory: MemoryOut
    disk: list[DiskOut]
    event_loop: LoopOut
    process: ProcessOut
    at: datetime


@routes.route(
    "GET",
    "/analytics/dashboard",
    permission=Permission.CAMERAS_READ,
    summary="Cameras online/offline, live streams, viewers by protocol, bandwidth, storage by tier, open alerts",
    response=DashboardOut,
)
async def dashboard(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    figures = svc.figures
    assert figures is not None
    latest = figures.latest
    # The dashboard-update snapshot, unless it is older than its interval (then one fresh computation).
    if latest is None or time.time() - latest.at > svc.config.events.dashboard_interval:
        latest = await figures.compute()
    return web.json_response(latest.body)


@routes.route(
    "GET",
    "/analytics/cameras/{camera_id}",
    permission=Permission.CAMERAS_READ,
    summary="One camera over a time range: samples (bitrate, fps, viewers), uptime, recording coverage",
    query=CameraAnalyticsQuery,
    response=CameraAnalyticsOut,
    errors=(400, 404),
)
async def camera_analytics(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    camera_id = path_camera_id(request)
    q = query(request, CameraAnalyticsQuery)
    start, end = time_range(svc, q.start, q.end)
    await require_camera(svc, camera_id)
    first, last = datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)
    async with svc.store.reader() as session:
        rows = (
            await session.execute(
                select(CameraSample.at, CameraSample.bitrate_bps, CameraSample.fps, CameraSample.viewers)
                .where(CameraSample.camera_id == camera_id, CameraSample.at >= first, CameraSample.at < last)
                .order_by(CameraSample.at)
                .limit(100_000)
            )
        ).all()
        recordings = (
            await session.execute(
                select(Recording.started_at, Recording.ended_at).where(
                    Recording.camera_id == camera_id, Recording.started_at < last
                )
            )
        ).all()
    interval = svc.config.analytics.sample_interval
    # Uptime of the part of the range that has happened: each sample stands for one interval.
    judged = min(end, time.time()) - start
    uptime = min(100.0, len(rows) * interval / judged * 100) if interval > 0 and judged > 0 else 0.0
    covered = _covered(
        [(r.started_at.timestamp(), (r.ended_at or datetime.now(UTC)).timestamp()) for r in recordings], start, end
    )
    samples = [SampleOut(at=r.at, online=True, bitrate_bps=r.bitrate_bps, fps=r.fps, viewers=r.viewers) for r in rows]
    return send(
        CameraAnalyticsOut(
            camera_id=camera_id,
            start=first,
            end=last,
            interval=interval,
            samples=samples,
            uptime_percent=round(uptime, 2),
            recording_coverage_percent=round(covered / (end - start) * 100, 2) if recordings else None,
            bitrate_avg_bps=int(sum(r.bitrate_bps for r in rows) / len(rows)) if rows else 0,
            viewers_max=max((r.viewers for r in rows), default=0),
        )
    )


def _covered(spans: list[tuple[float, float]], start: float, end: float) -> float:
    """Seconds of [start, end) inside the union of the spans."""
    clipped = sorted((max(a, start), min(b, end)) for a, b in spans if b > start and a < end)
    covered, reach = 0.0, start
    for a, b in clipped:
        if b <= reach:
            continue
        covered += b - max(a, reach)
        reach = b
    return covered


_process = psutil.Process()
_process.cpu_percent()  # the first call only starts the measurement


def _system_figures(svc: Services) -> dict[str, Any]:
    memory = psutil.virtual_memory()
    roots = {svc.config.server.data_dir, svc.config.recording_root()}
    if svc.config.recording.warm_root:
        roots.add(svc.config.recording.warm_root)
    disks = []
    for root in sorted(roots):
        path = Path(root)
        while not path.exists() and path != path.parent:
            path = path.parent
        usage = psutil.disk_usage(str(path))
        disks.append(
            {"path": root, "total_bytes": usage.total, "free_bytes": usage.free, "used_percent": usage.percent}
        )
    with _process.oneshot():
        rss = _process.memory_info().rss
        threads = _process.num_threads()
        fds = _process.num_fds() if hasattr(_process, "num_fds") else 0
        cpu = _process.cpu_percent()
        created = _process.create_time()
    lag, lag_max = svc.loop_lag() if svc.loop_lag is not None else (0.0, 0.0)
    return {
        "cpu_percent": round(cpu, 2),
        "host_cpu_percent": round(psutil.cpu_percent(), 2),
        "cpu_count": os.cpu_count() or 1,
        "memory": {"rss_bytes": rss, "total_bytes": memory.total, "used_percent": memory.percent},
        "disk": disks,
        "event_loop": {"lag_seconds": round(lag, 6), "lag_max_seconds": round(lag_max, 6)},
        "process": {
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - created, 3),
            "threads": threads,
            "open_fds": fds,
            "version": server_version(),
        },
        "at": datetime.now(UTC),
    }


@routes.route(
    "GET",
    "/analytics/system",
    permission=Permission.SYSTEM_READ,
    summary="This process and its host: CPU, memory, disks, event-loop lag, process figures",
    response=SystemAnalyticsOut,
)
async def system_analytics(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    figures = await asyncio.to_thread(_system_figures, svc)
    return send(SystemAnalyticsOut.model_validate(figures))
