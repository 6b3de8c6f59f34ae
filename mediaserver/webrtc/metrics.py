"""WebRTC figures: plain counters bumped by sessions, Prometheus instruments, and a collector that adds up
the live sessions' own counters at scrape time (nothing on the packet path touches Prometheus).

No metric carries a stream label: a stream's name may be its key.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from mediaserver.webrtc.transcode import TranscodeStats

if TYPE_CHECKING:
    from mediaserver.webrtc.sessions import SessionRegistry

STATES = ("new", "connecting", "connected", "disconnected", "failed", "closed")


class WebrtcStats:
    """Plain counters bumped by sessions and read by the collector."""

    def __init__(self) -> None:
        self.frames_sent: dict[str, int] = defaultdict(int)
        self.payload_bytes_sent: dict[str, int] = defaultdict(int)
        self.rtp_packets_sent: dict[str, int] = defaultdict(int)
        self.rtp_bytes_sent: dict[str, int] = defaultdict(int)
        self.frames_dropped = 0
        self.feedback: dict[str, int] = defaultdict(int)
        self.nack_requested_packets = 0
        self.rtp_retransmitted = 0
        self.gop_resends = 0
        self.keyframe_requests: dict[str, int] = defaultdict(int)
        self.frames_received: dict[str, int] = defaultdict(int)
        self.bytes_received = 0
        self.errors: dict[str, int] = defaultdict(int)
        self.aac_to_opus = TranscodeStats()
        self.opus_to_aac = TranscodeStats()


class WebrtcMetrics:
    """The counters and the Prometheus instruments of the WebRTC service."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.stats = WebrtcStats()
        self.setup_time = Histogram(
            "mediaserver_webrtc_setup_seconds",
            "WHEP: from the POST of the offer to the first video frame handed to the RTP sender",
            buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
            registry=registry,
        )
        self.rejected = Counter(
            "mediaserver_webrtc_requests_rejected",
            "WHEP/WHIP requests refused, by endpoint and reason",
            ["endpoint", "reason"],
            registry=registry,
        )
        self.closed = Counter(
            "mediaserver_webrtc_sessions_closed",
            "WebRTC sessions closed, by kind and reason",
            ["kind", "reason"],
            registry=registry,
        )

    def watch(self, sessions: SessionRegistry) -> None:
        """Report the live sessions (and feeds) of `sessions` at every scrape."""
        self.registry.register(_WebrtcCollector(self.stats, sessions))


class _WebrtcCollector(Collector):
    def __init__(self, stats: WebrtcStats, sessions: SessionRegistry) -> None:
        self._stats = stats
        self._sessions = sessions

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        registry = self._sessions
        stats = self._stats
        live = list(registry.sessions.values())
        sessions = GaugeMetricFamily(
            "mediaserver_webrtc_sessions", "WebRTC sessions by kind and state", labels=["kind", "state"]
        )
        counts: dict[tuple[str, str], int] = defaultdict(int)
        for kind in ("whep", "whip"):
            for state in STATES:
                counts[(kind, state)] = 0
        # Totals: what closed sessions left behind plus what the live ones count right now.
        frames = dict(stats.frames_sent)
        payload = dict(stats.payload_bytes_sent)
        dropped = stats.frames_dropped
        video_in = audio_in = 0
        for session in live:
            counts[(session.kind, session.state)] += 1
            for media, counters in session.counters():
                frames[media] = frames.get(media, 0) + counters.frames
                payload[media] = payload.get(media, 0) + counters.bytes
                dropped += counters.dropped
            video, audio = session.frames_in()
            video_in += video
            audio_in += audio
        for (kind, state), count in counts.items():
            sessions.add_metric([kind, state], count)
        yield sessions
        yield GaugeMetricFamily(
            "mediaserver_webrtc_peer_connections",
            "Peer connections held, sessions being closed included",
            value=len(registry.sessions) + registry.closing_count,
        )
        yield GaugeMetricFamily("mediaserver_webrtc_feeds", "Streams with WebRTC viewers", value=len(registry.feeds))
        send_queue = registry.send_queue
        yield GaugeMetricFamily(
            "mediaserver_webrtc_send_queue_packets",
            "RTP packets waiting to be sent to viewers",
            value=send_queue.backlog,
        )
        yield GaugeMetricFamily(
            "mediaserver_webrtc_send_queue_delay_seconds",
            "How long the oldest waiting send batch has waited (delta frames are dropped past 0.25 s)",
            value=send_queue.delay,
        )
        frames_family = CounterMetricFamily(
            "mediaserver_webrtc_sent_frames", "Frames handed to RTP senders", labels=["media"]
        )
        payload_family = CounterMetricFamily(
            "mediaserver_webrtc_sent_payload_bytes", "Codec payload bytes handed to RTP senders", labels=["media"]
        )
        packets_family = CounterMetricFamily(
            "mediaserver_webrtc_sent_packets", "RTP packets sent (sampled every 2 s)", labels=["media"]
        )
        bytes_family = CounterMetricFamily(
            "mediaserver_webrtc_sent_bytes", "RTP payload bytes sent (sampled every 2 s)", labels=["media"]
        )
        for media in ("video", "audio"):
            frames_family.add_metric([media], frames.get(media, 0))
            payload_family.add_metric([media], payload.get(media, 0))
            packets_family.add_metric([media], stats.rtp_packets_sent.get(media, 0))
            bytes_family.add_metric([media], stats.rtp_bytes_sent.get(media, 0))
        yield frames_family
        yield payload_family
        yield packets_family
        yield bytes_family
        yield CounterMetricFamily(
            "mediaserver_webrtc_frames_dropped", "Frames dropped for viewers that fell behind", value=dropped
        )
        feedback = CounterMetricFamily(
            "mediaserver_webrtc_rtcp_feedback_received", "RTCP feedback from viewers, by type", labels=["type"]
        )
        for kind in ("nack", "pli", "fir"):
            feedback.add_metric([kind], stats.feedback.get(kind, 0))
        yield feedback
        yield CounterMetricFamily(
            "mediaserver_webrtc_nack_requested_packets",
            "RTP packets viewers asked to be resent",
            value=stats.nack_requested_packets,
        )
        yield CounterMetricFamily(
            "mediaserver_webrtc_rtp_retransmitted_packets",
            "RTP packets resent to viewers that reported them lost (each viewer keeps its last 256 video frames)",
            value=stats.rtp_retransmitted,
        )
        yield CounterMetricFamily(
            "mediaserver_webrtc_gop_resends",
            "Keyframe requests of viewers of non-WHIP streams answered with the cached GOP again",
            value=stats.gop_resends,
        )
        keyframes = CounterMetricFamily(
            "mediaserver_webrtc_keyframe_requests",
            "Keyframe requests: received from viewers (PLI/FIR) and sent to WHIP publishers",
            labels=["direction"],
        )
        for direction in ("received", "sent"):
            keyframes.add_metric([direction], stats.keyframe_requests.get(direction, 0))
        yield keyframes
        received = CounterMetricFamily("mediaserver_webrtc_received_frames", "WHIP frames received", labels=["media"])
        received.add_metric(["video"], stats.frames_received["video"] + video_in)
        received.add_metric(["audio"], stats.frames_received["audio"] + audio_in)
        yield received
        yield CounterMetricFamily(
            "mediaserver_webrtc_received_bytes", "WHIP media bytes received", value=stats.bytes_received
        )
        errors = CounterMetricFamily(
            "mediaserver_webrtc_media_errors", "Media that could not be converted", labels=["reason"]
        )
        for reason, count in stats.errors.items():
            errors.add_metric([reason], count)
        yield errors
        yield from _transcode_families(stats)


def _transcode_families(stats: WebrtcStats) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    calls = CounterMetricFamily("mediaserver_webrtc_transcode_calls", "Audio transcoder calls", labels=["direction"])
    seconds = CounterMetricFamily(
        "mediaserver_webrtc_transcode_seconds",
        "Time spent transcoding audio (worker threads)",
        labels=["direction"],
    )
    longest = GaugeMetricFamily(
        "mediaserver_webrtc_transcode_max_seconds", "Longest single transcoder call", labels=["direction"]
    )
    failures = CounterMetricFamily(
        "mediaserver_webrtc_transcode_errors", "Transcoder calls that failed", labels=["direction"]
    )
    backlog = CounterMetricFamily(
        "mediaserver_webrtc_transcode_dropped", "Audio packets dropped: transcoder behind", labels=["direction"]
    )
    running = GaugeMetricFamily("mediaserver_webrtc_transcoders", "Running audio transcoders", labels=["direction"])
    for direction, item in (("aac_to_opus", stats.aac_to_opus), ("opus_to_aac", stats.opus_to_aac)):
        calls.add_metric([direction], item.calls)
        seconds.add_metric([direction], item.seconds)
        longest.add_metric([direction], item.max_seconds)
        failures.add_metric([direction], item.errors)
        backlog.add_metric([direction], item.dropped)
        running.add_metric([direction], item.running)
    yield calls
    yield seconds
    yield longest
    yield failures
    yield backlog
    yield running
