"""The dashboard's figures: cameras by status (database), live streams and viewers (hub), bandwidth, storage
by tier and the data plane's counters (read from the Prometheus registry, so the figures are the ones ops
scrape), open alerts. Computed once per `events.dashboard_interval` for the dashboard-update event and
served from that snapshot by GET /analytics/dashboard: a thousand dashboards cost one computation."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from control.api.base import CAMERA_ID
from control.events.bus import iso
from control.store import Camera, Store, User
from mediaserver.hub import HubView

# Subscribers that are the server's own (the segmenter feeds HLS, a WebRTC feed serves many sessions).
INTERNAL_SUBSCRIBERS = frozenset({"hls_segmenter", "webrtc", "recorder"})
WANTED = frozenset(
    {
        "mediaserver_received_bytes_total",
        "mediaserver_sent_bytes_total",
        "mediaserver_hls_sent_bytes_total",
        "mediaserver_hls_viewers",
        "mediaserver_webrtc_sessions",
        "mediaserver_recording_tier_bytes",
        "mediaserver_recording_tier_files",
        "mediaserver_recording_tier_free_percent",
    }
)

# Counted by each worker for what it serves: a machine's figure is the sum over its workers. (The recording
# tiers' figures are the machine's already, in every worker.)
PER_WORKER = frozenset(
    {
        "mediaserver_received_bytes_total",
        "mediaserver_sent_bytes_total",
        "mediaserver_hls_sent_bytes_total",
        "mediaserver_hls_viewers",
        "mediaserver_webrtc_sessions",
    }
)

Sample = tuple[dict[str, str], float]


def read_samples(registry: CollectorRegistry | None, names: Iterable[str] = WANTED) -> dict[str, list[Sample]]:
    """The current samples of some metrics, by sample name (one pass over the registry's collectors)."""
    wanted = set(names)
    out: dict[str, list[Sample]] = defaultdict(list)
    if registry is None:
        return out
    # Only the collectors that own these names: a full collect() would run every collector, and some reset
    # what they report at each scrape (the loop-lag maximum).
    for family in registry.restricted_registry(sorted(wanted)).collect():
        for sample in family.samples:
            if sample.name in wanted:
                out[sample.name].append((dict(sample.labels), float(sample.value)))
    return out


def add_text_samples(out: dict[str, list[Sample]], text: str, names: frozenset[str] = PER_WORKER) -> None:
    """Add the samples of `names` from another process's text exposition. Only those families' lines are
    parsed: a worker's whole exposition runs to thousands of lines with a few hundred streams."""
    families = {name.removesuffix("_total") for name in names}
    kept = [line for line in text.splitlines() if _family(line) in families]
    for family in text_string_to_metric_families("\n".join(kept) + "\n"):
        for sample in family.samples:
            if sample.name in names:
                out[sample.name].append((dict(sample.labels), float(sample.value)))


def _family(line: str) -> str:
    """The family a line of the exposition is about: `# HELP name ...` and `# TYPE name ...` name it, a sample
    line starts with its sample's name (a counter's end in `_total`)."""
    if line.startswith("# "):
        words = line.split(" ", 3)
        name = words[2] if len(words) > 2 else ""
    else:
        name = line.split("{", 1)[0].split(" ", 1)[0]
    return name.removesuffix("_total")


def total(samples: list[Sample], **match: str) -> float:
    return sum(value for labels, value in samples if all(labels.get(k) == v for k, v in match.items()))


@dataclass
class Figures:
    body: dict[str, Any]
    at: float
    cameras_by_status: dict[str, int] = field(default_factory=dict)
    enabled_offline: int = 0
    users_by_role: dict[str, int] = field(default_factory=dict)


class LiveFigures:
    def __init__(
        self,
        store: Store,
        hub: HubView,
        app: str,
        registry: CollectorRegistry | None,
        open_alerts: Callable[[], list[dict[str, Any]]],
    ) -> None:
        self._store = store
        self._hub = hub
        self._app = app
        self._registry = registry
        self._open_alerts = open_alerts
        self._last_bytes: tuple[float, float, float] | None = None  # (monotonic time, in, out)
        self.latest: Figures | None = None
        # The other workers' /metrics texts, when this process is one worker of several.
        self.remote_metrics: Callable[[], Awaitable[list[str]]] | None = None

    async def compute(self) -> Figures:
        async with self._store.reader() as session:
            rows = (
                await session.execute(
                    select(Camera.status, Camera.enabled, func.count()).group_by(Camera.status, Camera.enabled)
                )
            ).all()
            roles = {
                row[0]: row[1] for row in await session.execute(select(User.role, func.count()).group_by(User.role))
            }
        by_status: dict[str, int] = {"online": 0, "offline": 0, "error": 0}
        disabled = enabled_offline = 0
        for status, enabled, count in rows:
            by_status[status] = by_status.get(status, 0) + count
            if not enabled:
                disabled += count
            elif status != "online":
                enabled_offline += count
        samples = read_samples(self._registry)
        if self.remote_metrics is not None:
            for text in await self.remote_metrics():
                add_text_samples(samples, text)
        streams = self._hub.live_streams()
        by_protocol: dict[str, int] = defaultdict(int)
        viewers: dict[str, int] = defaultdict(int)
        hls_viewers: dict[str, int] = defaultdict(int)
        for labels, value in samples["mediaserver_hls_viewers"]:
            hls_viewers[labels.get("stream", "")] += int(value)
        cameras_live: dict[str, dict[str, Any]] = {}
        for stream in streams:
            by_protocol[stream.publisher.protocol] += 1
            players = 0
            for protocol, count in stream.subscriber_counts().items():
                if protocol not in INTERNAL_SUBSCRIBERS:
                    viewers[protocol] += count
                    players += count
            hls = hls_viewers.get(stream.key, 0)
            if stream.app == self._app and CAMERA_ID.match(stream.name):
                cameras_live[stream.name] = {"bitrate_bps": int(stream.bitrate), "viewers": players + hls}
        viewers["hls"] = sum(hls_viewers.values())
        viewers["webrtc"] = int(total(samples["mediaserver_webrtc_sessions"], kind="whep", state="connected"))
        ingest, egress = self._rates(samples)
        tiers = sorted({labels.get("tier", "") for labels, _ in samples["mediaserver_recording_tier_bytes"]})
        free = {labels.get("tier", ""): v for labels, v in samples["mediaserver_recording_tier_free_percent"]}
        storage = [
            {
                "tier": tier,
                "bytes": int(total(samples["mediaserver_recording_tier_bytes"], tier=tier)),
                "files": int(total(samples["mediaserver_recording_tier_files"], tier=tier)),
                "free_percent": round(free[tier], 2) if tier in free else None,
            }
            for tier in tiers
        ]
        alerts = self._open_alerts()
        now = time.time()
        body: dict[str, Any] = {
            "cameras": {"total": sum(by_status.values()), **by_status, "disabled": disabled},
            "streams": {"live": len(streams), "by_protocol": dict(by_protocol)},
            "viewers": {"total": sum(viewers.values()), "by_protocol": dict(viewers)},
            "bandwidth": {"ingest_bps": ingest, "egress_bps": egress},
            "storage": {"tiers": storage},
            "alerts": {"open": len(alerts), "items": alerts},
            "cameras_live": cameras_live,
            "at": iso(now),
        }
        self.latest = Figures(body, now, by_status, enabled_offline, {str(k): int(v) for k, v in roles.items()})
        return self.latest

    def _rates(self, samples: dict[str, list[Sample]]) -> tuple[int, int]:
        """Bits per second in and out since the previous computation (0 the first time)."""
        received = total(samples["mediaserver_received_bytes_total"])
        # RTMP and WebRTC count into mediaserver_sent_bytes; HLS has its own counter.
        sent = total(samples["mediaserver_sent_bytes_total"]) + total(samples["mediaserver_hls_sent_bytes_total"])
        now = time.monotonic()
        previous, self._last_bytes = self._last_bytes, (now, received, sent)
        if previous is None or now <= previous[0]:
            return 0, 0
        elapsed = now - previous[0]
        return (
            max(0, int((received - previous[1]) * 8 / elapsed)),
            max(0, int((sent - previous[2]) * 8 / elapsed)),
        )


class FiguresCollector(Collector):
    """Business figures for Prometheus, from the latest dashboard computation (never a query per scrape)."""

    def __init__(self, figures: LiveFigures) -> None:
        self._figures = figures

    def collect(self) -> Iterator[GaugeMetricFamily]:
        latest = self._figures.latest
        cameras = GaugeMetricFamily("mediaserver_cameras", "Cameras by status", labels=["status"])
        for status in ("online", "offline", "error"):
            cameras.add_metric([status], latest.cameras_by_status.get(status, 0) if latest else 0)
        yield cameras
        yield GaugeMetricFamily(
            "mediaserver_cameras_enabled_offline",
            "Enabled cameras that are not online",
            value=latest.enabled_offline if latest else 0,
        )
        users = GaugeMetricFamily("mediaserver_users", "Users by role", labels=["role"])
        for role in ("admin", "operator", "viewer", "api_only"):
            users.add_metric([role], latest.users_by_role.get(role, 0) if latest else 0)
        yield users
