"""Analytics routes against the real control plane: the dashboard's figures, one camera's samples, uptime and
recording coverage, the host's figures; who may read them; bad ranges; old samples pruned."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from control.figures import FiguresCollector
from control.rbac import Role
from control.store import CameraSample, Recording
from tests.control.conftest import Api, FakePublisher


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


async def test_dashboard_figures(api: Api, admin: str) -> None:
    live, idle, off = await api.camera(admin), await api.camera(admin), await api.camera(admin, enabled=False)
    stream = api.hub.publish("live", live["id"], FakePublisher())
    stream.bitrate = 2_000_000
    api.hub.publish("live", "not-a-camera", FakePublisher())
    await api.plane.live.idle()
    viewer = await api.token(Role.VIEWER)
    api.plane.figures.latest = None  # no snapshot yet: the route computes one
    status, body = await api.call("GET", "/analytics/dashboard", viewer)
    assert status == 200, body
    assert body["cameras"] == {"total": 3, "online": 1, "offline": 2, "error": 0, "disabled": 1}
    assert body["streams"] == {"live": 2, "by_protocol": {"rtmp": 2}}
    assert body["cameras_live"] == {live["id"]: {"bitrate_bps": 2_000_000, "viewers": 0}}
    assert idle["id"] not in body["cameras_live"] and off["id"] not in body["cameras_live"]
    assert body["alerts"] == {"open": 0, "items": []}
    assert set(body["bandwidth"]) == {"ingest_bps", "egress_bps"}
    # The business gauges come from the same snapshot.
    families = {f.name: f for f in FiguresCollector(api.plane.figures).collect()}
    online = [s.value for s in families["mediaserver_cameras"].samples if s.labels["status"] == "online"]
    assert online == [1]
    assert families["mediaserver_cameras_enabled_offline"].samples[0].value == 1
    assert (await api.call("GET", "/analytics/dashboard"))[0] == 401


async def test_camera_samples_uptime_and_coverage(api: Api, admin: str) -> None:
    camera = await api.camera(admin)
    stream = api.hub.publish("live", camera["id"], FakePublisher())
    stream.bitrate, stream.fps = 1_500_000, 25.0
    await api.plane.figures.compute()
    assert await api.plane.sampler.sample() == 1
    stream.bitrate = 500_000
    assert await api.plane.sampler.sample() == 1
    now = time.time()
    # A recording over the last half hour of the range.
    async with api.plane.store.sessions.begin() as session:
        session.add(
            Recording(
                camera_id=camera["id"],
                started_at=datetime.fromtimestamp(now - 1800, UTC),
                ended_at=datetime.fromtimestamp(now, UTC),
                path="x.mp4",
            )
        )
    params = {"start": iso(now - 3600), "end": iso(now + 60)}
    status, body = await api.call("GET", f"/analytics/cameras/{camera['id']}", admin, params=params)
    assert status == 200, body
    assert [s["bitrate_bps"] for s in body["samples"]] == [1_500_000, 500_000]
    assert body["samples"][0]["fps"] == 25.0 and body["samples"][0]["online"] is True
    assert body["bitrate_avg_bps"] == 1_000_000
    # Two samples of 60 s in the hour that has passed.
    assert 3.0 < body["uptime_percent"] < 3.5
    assert 45 < body["recording_coverage_percent"] < 52
    # Bad input: 400 for a range, 404 for a camera, 401 without a token.
    for bad in ({"start": "yesterday", "end": iso(now)}, {"start": iso(now), "end": iso(now - 60)}, {}):
        assert (await api.call("GET", f"/analytics/cameras/{camera['id']}", admin, params=bad))[0] == 400
    assert (await api.call("GET", f"/analytics/cameras/{'0' * 32}", admin, params=params))[0] == 404
    assert (await api.call("GET", f"/analytics/cameras/{camera['id']}", params=params))[0] == 401


async def test_old_samples_are_pruned(api: Api, admin: str) -> None:
    camera = await api.camera(admin)
    old = datetime.now(UTC) - timedelta(days=api.config.analytics.retention_days + 1)
    async with api.plane.store.sessions.begin() as session:
        session.add(CameraSample(camera_id=camera["id"], at=old, bitrate_bps=1, viewers=0))
        session.add(CameraSample(camera_id=camera["id"], at=datetime.now(UTC), bitrate_bps=2, viewers=0))
    assert await api.plane.sampler.prune() == 1
    async with api.plane.store.reader() as session:
        assert await session.scalar(select(func.count()).select_from(CameraSample)) == 1


async def test_system_figures(api: Api, admin: str) -> None:
    status, body = await api.call("GET", "/analytics/system", admin)
    assert status == 200, body
    assert body["memory"]["rss_bytes"] > 10_000_000 and body["cpu_count"] >= 1
    assert body["process"]["threads"] >= 1 and body["process"]["open_fds"] > 0
    assert body["disk"] and all(0 <= d["used_percent"] <= 100 for d in body["disk"])
    assert set(body["event_loop"]) == {"lag_seconds", "lag_max_seconds"}
    viewer = await api.token(Role.VIEWER)
    assert (await api.call("GET", "/analytics/system", viewer))[0] == 403
