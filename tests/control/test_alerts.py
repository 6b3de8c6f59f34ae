"""The alert engine with a real bus, hub and registry: each kind fires once, clears once, and is told to the
right audience; mediaserver_alerts_open counts what is open."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge

from control.alerts import AlertEngine
from control.events import Event, EventBus, EventName
from control.rbac import Permission
from mediaserver.config import AlertsConfig
from mediaserver.hub import Hub
from tests.control.conftest import FakePublisher

CAMERA = "a" * 32


def engine(**settings: float) -> tuple[AlertEngine, EventBus, Hub, CollectorRegistry, list[Event]]:
    registry = CollectorRegistry()
    bus = EventBus("node-test", registry=registry)
    hub = Hub()
    alerts = AlertEngine(AlertsConfig(**settings), bus, hub, "live", 10.0, registry)  # type: ignore[arg-type]
    heard: list[Event] = []
    bus.subscribe(lambda e: heard.append(e) if e.name == EventName.SYSTEM_ALERT else None)
    return alerts, bus, hub, registry, heard


def status(bus: EventBus, value: str, enabled: bool = True) -> None:
    bus.publish(EventName.CAMERA_STATUS, {"status": value, "enabled": enabled}, CAMERA)


def states(heard: list[Event]) -> list[tuple[str, str]]:
    return [(e.data["kind"], e.data["state"]) for e in heard]


def test_camera_offline_fires_after_its_delay_and_clears_when_back() -> None:
    alerts, bus, _, registry, heard = engine(offline_after=0.0)
    status(bus, "offline")
    alerts.tick()
    alerts.tick()  # raised once, not once per tick
    assert states(heard) == [("camera-offline", "firing")]
    assert heard[0].camera_id == CAMERA and heard[0].permission is Permission.CAMERAS_READ
    assert registry.get_sample_value("mediaserver_alerts_open", {"kind": "camera-offline"}) == 1
    status(bus, "online")
    assert states(heard)[-1] == ("camera-offline", "resolved")
    assert alerts.open_alerts() == []
    # Not before its delay; a disabled camera going offline raises nothing.
    slow, slow_bus, _, _, slow_heard = engine(offline_after=3600.0)
    status(slow_bus, "offline")
    status(slow_bus, "offline", enabled=False)
    slow.tick()
    assert slow_heard == []


def test_flapping() -> None:
    alerts, bus, _, _, heard = engine(offline_after=3600.0, flapping_changes=4, flapping_window=60.0)
    for value in ("online", "offline", "online"):
        status(bus, value)
    alerts.tick()
    assert heard == []
    status(bus, "offline")
    alerts.tick()
    assert states(heard) == [("camera-flapping", "firing")]
    assert "4 times" in heard[0].data["message"]


def test_loop_lag_and_disk_watermark_are_for_system_readers() -> None:
    alerts, _, _, registry, heard = engine(loop_lag_seconds=0.2)
    lag = [0.5]
    alerts.loop_lag = lambda: lag[0]
    free = Gauge("mediaserver_recording_tier_free_percent", "free", ["tier"], registry=registry)
    free.labels("hot").set(3.0)
    alerts.tick()
    assert sorted(states(heard)) == [("disk-watermark", "firing"), ("loop-lag", "firing")]
    assert all(e.permission is Permission.SYSTEM_READ for e in heard)
    disk = next(e for e in heard if e.data["kind"] == "disk-watermark")
    assert disk.data["severity"] == "critical" and "hot" in disk.data["message"]
    lag[0], heard[:] = 0.0, []
    free.labels("hot").set(50.0)
    alerts.tick()
    assert sorted(states(heard)) == [("disk-watermark", "resolved"), ("loop-lag", "resolved")]


def test_bitrate_collapse_needs_two_low_readings() -> None:
    alerts, _, hub, _, heard = engine()
    stream = hub.publish("live", CAMERA, FakePublisher())
    stream.bitrate = 2_000_000
    alerts.tick()
    alerts.tick()
    stream.bitrate = 100_000
    alerts.tick()
    assert heard == []
    alerts.tick()
    assert states(heard) == [("bitrate-collapse", "firing")] and heard[0].camera_id == CAMERA
    stream.bitrate = 1_900_000
    alerts.tick()
    assert states(heard)[-1] == ("bitrate-collapse", "resolved")
    # A stream that ends takes its alert with it.
    stream.bitrate = 1
    alerts.tick()
    alerts.tick()
    hub.unpublish(stream)
    alerts.tick()
    assert states(heard)[-2:] == [("bitrate-collapse", "firing"), ("bitrate-collapse", "resolved")]


def test_recorder_overflow() -> None:
    alerts, _, _, registry, heard = engine()
    alerts.recorder_alert("live", CAMERA, "recorder_overflow")
    alerts.recorder_alert("live", CAMERA, "recorder_overflow")
    assert states(heard) == [("recorder-overflow", "firing")]
    assert heard[0].camera_id == CAMERA and heard[0].data["severity"] == "critical"
    assert registry.get_sample_value("mediaserver_alerts_open", {"kind": "recorder-overflow"}) == 1
    assert [a["kind"] for a in alerts.open_alerts()] == ["recorder-overflow"]
