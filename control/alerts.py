"""Alerts: conditions an operator should see now, raised and resolved as system-alert events.

Kinds: camera-offline (an enabled camera went offline or into error and stayed so), camera-flapping (too many
status changes in a window), bitrate-collapse (a live stream far below its own average), disk-watermark (a
recording tier under its free-space watermark), recorder-overflow (the recorder dropped fragments or could not
write), loop-lag (the event loop late). Each alert is raised once (`firing`) and told again when it clears
(`resolved`); the open ones are in the dashboard figures and in `mediaserver_alerts_open{kind}`.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from control.api.base import CAMERA_ID
from control.events import Event, EventBus, EventName
from control.events.bus import iso
from control.figures import read_samples
from control.rbac import Permission
from mediaserver.config import AlertsConfig
from mediaserver.hub import HubView

log = logging.getLogger("control.alerts")

KINDS = ("camera-offline", "camera-flapping", "bitrate-collapse", "disk-watermark", "recorder-overflow", "loop-lag")
CAMERA_KINDS = frozenset({"camera-offline", "camera-flapping", "bitrate-collapse"})
# A recorder alert clears when the recorder has been quiet this long.
RECORDER_QUIET = 300.0
# A stream's average bitrate follows this many seconds (exponential), and must be above this to judge it.
BITRATE_AVERAGE_SECONDS = 120.0
BITRATE_FLOOR_BPS = 64_000


@dataclass
class Alert:
    kind: str
    subject: str
    severity: str
    message: str
    camera_id: str | None
    since: float

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.subject}"

    def view(self, state: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "severity": self.severity,
            "state": state,
            "message": self.message,
            "camera_id": self.camera_id,
            "since": iso(self.since),
        }


class AlertEngine(Collector):
    def __init__(
        self,
        config: AlertsConfig,
        bus: EventBus,
        hub: HubView,
        app: str,
        min_free_percent: float,
        registry: CollectorRegistry | None = None,
        loop_lag: Callable[[], float] | None = None,
    ) -> None:
        self._config = config
        self._bus = bus
        self._hub = hub
        self._app = app
        self._min_free_percent = min_free_percent
        self._registry = registry
        self.loop_lag = loop_lag
        self._open: dict[str, Alert] = {}
        # Cameras seen going offline (or into error) on this node: since when, and status changes per camera.
        self._down_since: dict[str, float] = {}
        self._changes: dict[str, deque[float]] = defaultdict(deque)
        self._bitrate_average: dict[str, float] = {}
        self._collapsed: dict[str, int] = {}
        self._recorder_last: dict[str, float] = {}
        self._last_tick = time.monotonic()
        bus.subscribe(self._on_event)
        if registry is not None:
            registry.register(self)

    # ----- inputs ----------------------------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if event.camera_id is None or event.origin != self._bus.node_id:
            return
        if event.name == EventName.CAMERA_DELETED or (
            event.name == EventName.CAMERA_UPDATED and not event.data.get("camera", {}).get("enabled", True)
        ):
            self.camera_disabled(event.camera_id)
            return
        if event.name != EventName.CAMERA_STATUS:
            return
        camera_id, status = event.camera_id, event.data.get("status")
        changes = self._changes[camera_id]
        changes.append(event.at)
        if status == "online":
            self._down_since.pop(camera_id, None)
            self._resolve(f"camera-offline:{camera_id}")
        elif event.data.get("enabled", True):
            self._down_since.setdefault(camera_id, event.at)

    def camera_disabled(self, camera_id: str) -> None:
        self._down_since.pop(camera_id, None)
        self._resolve(f"camera-offline:{camera_id}")

    def recorder_alert(self, app: str, name: str, reason: str) -> None:
        """The recorder overflowed or failed a write (from the recording index's sink)."""
        subject = f"{app}/{name}"
        self._recorder_last[subject] = time.time()
        camera_id = name if app == self._app and CAMERA_ID.match(name) else None
        detail = "dropped fragments: the disk is not keeping up" if reason == "recorder_overflow" else "a write failed"
        self._raise("recorder-overflow", subject, "critical", f"recording of {subject}: {detail}", camera_id)

    # ----- evaluation ------------------------------------------------------------------------------------------

    def tick(self) -> None:
        now = time.time()
        monotonic = time.monotonic()
        elapsed, self._last_tick = max(0.001, monotonic - self._last_tick), monotonic
        config = self._config
        for camera_id, since in list(self._down_since.items()):
            if now - since >= config.offline_after:
                self._raise(
                    "camera-offline",
                    camera_id,
                    "warning",
                    f"camera {camera_id} offline for {int(now - since)} s",
                    camera_id,
                )
        for camera_id, changes in list(self._changes.items()):
            while changes and changes[0] < now - config.flapping_window:
                changes.popleft()
            subject = f"camera-flapping:{camera_id}"
            if len(changes) >= config.flapping_changes:
                window = int(config.flapping_window)
                message = f"camera {camera_id} changed status {len(changes)} times in {window} s"
                self._raise("camera-flapping", camera_id, "warning", message, camera_id)
            elif subject in self._open and len(changes) < config.flapping_changes // 2:
                self._resolve(subject)
            if not changes:
                del self._changes[camera_id]
        self._check_bitrates(elapsed)
        self._check_disks()
        for subject, last in list(self._recorder_last.items()):
            if now - last > RECORDER_QUIET:
                del self._recorder_last[subject]
                self._resolve(f"recorder-overflow:{subject}")
        if self.loop_lag is not None:
            lag = self.loop_lag()
            if lag > config.loop_lag_seconds:
                self._raise("loop-lag", "loop", "warning", f"event loop {lag * 1000:.0f} ms late", None)
            elif lag < config.loop_lag_seconds / 2:
                self._resolve("loop-lag:loop")

    def _check_bitrates(self, elapsed: float) -> None:
        weight = min(1.0, elapsed / BITRATE_AVERAGE_SECONDS)
        live = set()
        for stream in self._hub.live_streams():
            key = stream.key
            live.add(key)
            bitrate = float(stream.bitrate)
            average = self._bitrate_average.get(key)
            if average is None:
                self._bitrate_average[key] = bitrate
                continue
            camera_id = stream.name if stream.app == self._app and CAMERA_ID.match(stream.name) else None
            if average >= BITRATE_FLOOR_BPS and bitrate < average * self._config.bitrate_collapse_ratio:
                # Two evaluations in a row: one slow second (a scene cut, a keyframe late) is not a collapse.
                self._collapsed[key] = self._collapsed.get(key, 0) + 1
                if self._collapsed[key] >= 2:
                    message = f"stream {key} at {bitrate / 1000:.0f} kbit/s, its average is {average / 1000:.0f}"
                    self._raise("bitrate-collapse", key, "warning", message, camera_id)
                # The average is left alone while collapsed, or it would follow the collapse down.
                continue
            self._collapsed.pop(key, None)
            if bitrate >= average * 0.5:
                self._resolve(f"bitrate-collapse:{key}")
            self._bitrate_average[key] = average + (bitrate - average) * weight
        for key in list(self._bitrate_average):
            if key not in live:
                del self._bitrate_average[key]
                self._collapsed.pop(key, None)
                self._resolve(f"bitrate-collapse:{key}")

    def _check_disks(self) -> None:
        if self._min_free_percent <= 0:
            return
        samples = read_samples(self._registry, ["mediaserver_recording_tier_free_percent"])
        for labels, free in samples["mediaserver_recording_tier_free_percent"]:
            tier = labels.get("tier", "")
            if free < self._min_free_percent:
                message = f"recording tier {tier} has {free:.1f} % free (watermark {self._min_free_percent:g} %)"
                self._raise("disk-watermark", tier, "critical", message, None)
            elif free >= self._min_free_percent + 1:
                self._resolve(f"disk-watermark:{tier}")

    # ----- state ------------------------------------------------------------------------------------------------

    def _raise(self, kind: str, subject: str, severity: str, message: str, camera_id: str | None) -> None:
        key = f"{kind}:{subject}"
        if key in self._open:
            self._open[key].message = message
            return
        alert = Alert(kind, subject, severity, message, camera_id, time.time())
        self._open[key] = alert
        log.warning("event=alert_firing kind=%s subject=%s", kind, subject)
        self._publish(alert, "firing")

    def _resolve(self, key: str) -> None:
        alert = self._open.pop(key, None)
        if alert is not None:
            log.info("event=alert_resolved kind=%s subject=%s", alert.kind, alert.subject)
            self._publish(alert, "resolved")

    def _publish(self, alert: Alert, state: str) -> None:
        permission = Permission.CAMERAS_READ if alert.kind in CAMERA_KINDS else Permission.SYSTEM_READ
        self._bus.publish(EventName.SYSTEM_ALERT, alert.view(state), alert.camera_id, permission)

    def open_alerts(self) -> list[dict[str, Any]]:
        return [alert.view("firing") for alert in sorted(self._open.values(), key=lambda a: a.since)]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("mediaserver_alerts_open", "Alerts firing on this node", labels=["kind"])
        counts = dict.fromkeys(KINDS, 0)
        for alert in self._open.values():
            counts[alert.kind] += 1
        for kind, count in counts.items():
            family.add_metric([kind], count)
        yield family
