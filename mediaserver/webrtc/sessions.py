"""WebRTC sessions: what each holds, the registry of live ones (with the per-stream WHEP feeds), peer
connection set-up and tear-down, and the housekeeping that reaps dead sessions.

A session is closed and its peer connection freed when it fails, when it stays unconnected or disconnected,
when the viewer sends neither RTCP nor ICE checks (a WHIP peer no media) for `session_timeout` seconds (a
client that vanished without DELETE), or when its stream has been gone for that long.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.stats import RTCOutboundRtpStreamStats

from mediaserver.auth import redact
from mediaserver.background import BackgroundTask
from mediaserver.config import WebrtcConfig
from mediaserver.hub import Hub, Stream
from mediaserver.metrics import TrafficStats
from mediaserver.webrtc.errors import Rejected
from mediaserver.webrtc.feed import StreamFeed, Viewer
from mediaserver.webrtc.ice import HostCandidates, IceSetupError, strip_mdns_candidates
from mediaserver.webrtc.ingest import WhipIngest
from mediaserver.webrtc.metrics import WebrtcMetrics
from mediaserver.webrtc.sendqueue import SendQueue
from mediaserver.webrtc.tracks import AudioOut, TrackCounters, VideoOut

log = logging.getLogger("mediaserver.webrtc")

# Offer in, answer out: parsing, ICE gathering (STUN/TURN included) and DTLS certificate set-up.
SETUP_TIMEOUT = 15.0
CLOSE_TIMEOUT = 5.0
STATS_INTERVAL = 2.0

S = TypeVar("S", bound="Session")


class Session:
    kind = "session"

    def __init__(self, session_id: str, app: str, name: str, peer: str, pc: RTCPeerConnection) -> None:
        self.id = session_id
        self.app = app
        self.name = name
        self.peer = peer
        self.pc = pc
        self.created = time.monotonic()
        self.created_wall = time.time()
        self.state = "new"
        self.state_since = self.created
        self.last_activity = self.created
        self.closing = False
        self.setup_seconds: float | None = None
        # Last RTP figures seen by the stats sampler, per sender: (packets, bytes).
        self.rtp_seen: dict[str, tuple[int, int]] = {}
        # The client's User-Agent as logs may show it (see `shown_agent`).
        self.agent = ""

    @property
    def key(self) -> str:
        return f"{self.app}/{self.name}"

    @property
    def location(self) -> str:
        return f"/{self.kind}/{quote(self.app, safe='')}/{quote(self.name, safe='')}/{self.id}"

    @property
    def shown(self) -> str:
        """The stream as logs and listings may show it (the name may be a stream key)."""
        return f"{self.app}/{redact(self.name)}"

    def set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.state_since = time.monotonic()

    def release(self) -> None:
        """Free what the session holds besides the peer connection (synchronous, on the loop)."""

    def stream_gone_since(self) -> float | None:
        """When the session's stream ended (time.monotonic()), if it has and has not come back."""
        return None

    def counters(self) -> list[tuple[str, TrackCounters]]:
        """The live figures of the tracks this session sends, by media."""
        return []

    def frames_in(self) -> tuple[int, int]:
        """Video and audio frames this session received (WHIP)."""
        return 0, 0

    def snapshot(self) -> dict[str, object]:
        return {
            "id": self.id,
            "kind": self.kind,
            "app": self.app,
            # The hub's name for the stream (the grant's): a camera id or a key alias, never a key.
            "name": self.name,
            "peer": self.peer,
            "state": self.state,
            "created_at": self.created_wall,
            "age_seconds": round(time.monotonic() - self.created, 3),
            "setup_seconds": None if self.setup_seconds is None else round(self.setup_seconds, 4),
        }


class WhepSession(Session):
    kind = "whep"

    def __init__(
        self, session_id: str, app: str, name: str, peer: str, pc: RTCPeerConnection, feed: StreamFeed
    ) -> None:
        super().__init__(session_id, app, name, peer, pc)
        self.feed = feed
        self.viewer: Viewer | None = None
        self.video: VideoOut | None = None
        self.audio: AudioOut | None = None
        self.codec = ""

    def stream_gone_since(self) -> float | None:
        return self.feed.ended_at if self.feed.stream is None else None

    def counters(self) -> list[tuple[str, TrackCounters]]:
        tracks: list[tuple[str, TrackCounters]] = []
        if self.video is not None:
            tracks.append(("video", self.video.counters))
        if self.audio is not None:
            tracks.append(("audio", self.audio.counters))
        return tracks

    def snapshot(self) -> dict[str, object]:
        data = super().snapshot()
        data["codec"] = self.codec
        for media, counters in self.counters():
            delays = sorted(counters.delays)
            data[media] = {
                "frames": counters.frames,
                "bytes": counters.bytes,
                "dropped": counters.dropped,
                # Server-side delay from the RTMP message's arrival to the frame's hand-over to the RTP sender.
                "server_delay_ms_p50": round(delays[len(delays) // 2] * 1000, 2) if delays else None,
            }
        return data


class WhipSession(Session):
    kind = "whip"

    def __init__(self, session_id: str, app: str, name: str, peer: str, pc: RTCPeerConnection) -> None:
        super().__init__(session_id, app, name, peer, pc)
        self.stream: Stream | None = None
        self.ingest: WhipIngest | None = None
        self.hub: Hub | None = None
        self.last_pli = 0.0
        self.bytes_seen = 0

    def release(self) -> None:
        if self.ingest is not None:
            self.ingest.close()
        if self.hub is not None and self.stream is not None:
            self.hub.unpublish(self.stream)

    def frames_in(self) -> tuple[int, int]:
        if self.ingest is None:
            return 0, 0
        return self.ingest.video_frames, self.ingest.audio_frames

    def take_bytes(self) -> int:
        """Media bytes received since the last call."""
        if self.ingest is None:
            return 0
        fresh = self.ingest.bytes_in - self.bytes_seen
        self.bytes_seen = self.ingest.bytes_in
        return fresh

    def snapshot(self) -> dict[str, object]:
        data = super().snapshot()
        if self.ingest is not None:
            data["video_frames"] = self.ingest.video_frames
            data["audio_frames"] = self.ingest.audio_frames
            data["bytes_in"] = self.ingest.bytes_in
        return data


def dtls_failed(pc: RTCPeerConnection) -> bool:
    """ICE found a path but the DTLS handshake over it failed."""
    for transceiver in pc.getTransceivers():
        dtls = transceiver.receiver.transport
        if dtls.state == "failed" and dtls.transport.state == "completed":
            return True
    return False


def log_dtls_failure(session: Session) -> None:
    """Say that DTLS (not ICE) failed, with what we know of a client that cannot handshake with us."""
    hint = ""
    if session.agent.startswith("Lavf/"):
        # FFmpeg built with GnuTLS (PyAV's wheels among others) makes its DTLS certificate on curve P-224,
        # and OpenSSL takes no P-224 peer certificate in (D)TLS 1.2 (OpenSSL 4 has no P-224 group at all),
        # whichever side is the DTLS server.
        hint = (
            ' hint="FFmpeg built with GnuTLS uses a P-224 DTLS certificate, which OpenSSL refuses: give it a'
            ' P-256 one with -cert_file/-key_file, or use an FFmpeg built with OpenSSL"'
        )
    log.warning(
        "event=webrtc_dtls_failed kind=%s id=%s peer=%s stream=%s agent=%s%s",
        session.kind,
        session.id,
        session.peer,
        session.shown,
        session.agent or "-",
        hint,
    )


class SessionRegistry:
    """The live sessions, the feeds their WHEP viewers share, and the peer connections being closed."""

    def __init__(
        self,
        config: WebrtcConfig,
        metrics: WebrtcMetrics,
        traffic: TrafficStats | None,
        hosts: HostCandidates,
        ice_servers: list[RTCIceServer],
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.stats = metrics.stats
        self.traffic = traffic
        self.hosts = hosts
        self.ice_servers = ice_servers
        self.sessions: dict[str, Session] = {}
        # One feed per stream key with WHEP viewers: the stream's only WebRTC hub subscriber.
        self.feeds: dict[str, StreamFeed] = {}
        # The RTP sends of every viewer of every feed, in slices on the loop.
        self.send_queue = SendQueue()
        self._pending = 0
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def closing_count(self) -> int:
        return len(self._closing)

    # ----- set-up -----------------------------------------------------------------------------

    async def set_up(self, start: Callable[[float], Awaitable[S]]) -> S:
        """Run `start(started)` within the session limit and the set-up time limit."""
        if len(self.sessions) + self._pending >= self.config.max_sessions:
            raise Rejected(
                503,
                "too_many_sessions",
                f"the server has reached its limit of {self.config.max_sessions} WebRTC sessions",
                {"Retry-After": "5"},
            )
        started = time.monotonic()
        self._pending += 1
        try:
            return await asyncio.wait_for(start(started), SETUP_TIMEOUT)
        except TimeoutError as exc:
            raise Rejected(503, "setup_timeout", "the session could not be set up in time") from exc
        finally:
            self._pending -= 1

    def new_pc(self) -> RTCPeerConnection:
        return RTCPeerConnection(RTCConfiguration(iceServers=self.ice_servers))

    @staticmethod
    async def apply_offer(pc: RTCPeerConnection, text: str) -> None:
        try:
            await pc.setRemoteDescription(RTCSessionDescription(strip_mdns_candidates(text), "offer"))
        except Exception as exc:
            raise Rejected(400, "bad_offer", f"the offer cannot be used: {exc}") from exc

    async def answer(self, pc: RTCPeerConnection) -> None:
        """Create the complete answer: our host candidates gathered, nothing left to trickle."""
        answer = await pc.createAnswer()
        try:
            await self.hosts.prepare(pc)
        except IceSetupError as exc:
            log.warning("event=webrtc_no_candidates error=%s", exc)
            raise Rejected(503, "no_ice_candidates", "no UDP port is free for a new session") from exc
        await pc.setLocalDescription(answer)

    def register(self, session: Session) -> None:
        self._watch_state(session)
        self.sessions[session.id] = session
        if self.traffic is not None:
            self.traffic.connections_current["webrtc"] += 1
            self.traffic.connections_total["webrtc"] += 1

    def _watch_state(self, session: Session) -> None:
        pc = session.pc

        @pc.on("connectionstatechange")
        def _on_state() -> None:
            session.set_state(pc.connectionState)
            if pc.connectionState == "failed" and not session.closing:
                if dtls_failed(pc):
                    log_dtls_failure(session)
                self.close(session, "failed")

        # The peer's ICE checks (consent freshness, every ~5 s) count as activity too: a viewer of a stalled
        # stream sends no RTCP reports but is still there.
        seen: set[int] = set()
        for transceiver in pc.getTransceivers():
            connection = transceiver.sender.transport.transport.iceGatherer._connection
            if id(connection) in seen:
                continue
            seen.add(id(connection))
            original = connection.request_received

            def request_received(*args: Any, _original: Any = original) -> None:
                session.last_activity = time.monotonic()
                _original(*args)

            setattr(connection, "request_received", request_received)  # noqa: B010 - this connection only

    # ----- closing ----------------------------------------------------------------------------

    def close(self, session: Session, reason: str) -> None:
        """Close a session: its resources at once, its peer connection in a task."""
        if session.closing:
            return
        session.closing = True
        if self.sessions.pop(session.id, None) is not None and self.traffic is not None:
            self.traffic.connections_current["webrtc"] -= 1
        self.metrics.closed.labels(session.kind, reason).inc()
        if isinstance(session, WhepSession):
            self.release_viewer(session)
        elif isinstance(session, WhipSession):
            # The collector adds live sessions' figures: fold a closing one's into the totals.
            self.count_received(session)
            video, audio = session.frames_in()
            self.stats.frames_received["video"] += video
            self.stats.frames_received["audio"] += audio
        try:
            session.release()
        except Exception:
            log.exception("event=webrtc_release_failed id=%s", session.id)
        log.info(
            "event=webrtc_session_closed kind=%s id=%s peer=%s stream=%s reason=%s age_seconds=%.1f",
            session.kind,
            session.id,
            session.peer,
            session.shown,
            reason,
            time.monotonic() - session.created,
        )
        task = asyncio.get_running_loop().create_task(self._close_pc(session))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close_pc(self, session: Session) -> None:
        try:
            await asyncio.wait_for(session.pc.close(), CLOSE_TIMEOUT)
        except Exception as exc:
            log.warning("event=webrtc_close_failed id=%s error=%r", session.id, exc)

    @staticmethod
    async def close_quietly(pc: RTCPeerConnection) -> None:
        """Close the peer connection of a session that never got registered."""
        try:
            await asyncio.wait_for(pc.close(), CLOSE_TIMEOUT)
        except Exception as exc:
            log.warning("event=webrtc_close_failed error=%r", exc)

    def release_viewer(self, session: WhepSession) -> None:
        """Keep the viewer's figures in the totals, end its media, and leave its feed (the last one out
        drops the feed, which then unsubscribes from the hub)."""
        for media, counters in session.counters():
            self.stats.frames_sent[media] += counters.frames
            self.stats.payload_bytes_sent[media] += counters.bytes
            self.stats.frames_dropped += counters.dropped
            counters.frames = counters.bytes = counters.dropped = 0
        for out in (session.video, session.audio):
            if out is not None:
                out.end()
        feed = session.feed
        if session.viewer is not None:
            feed.remove(session.viewer)
            session.viewer = None
        if not feed.viewers:
            feed.close()
            if self.feeds.get(feed.key) is feed:
                del self.feeds[feed.key]

    def count_received(self, session: WhipSession) -> None:
        fresh = session.take_bytes()
        self.stats.bytes_received += fresh
        if self.traffic is not None:
            self.traffic.bytes_in["webrtc"] += fresh

    async def close_all(self) -> None:
        for session in list(self.sessions.values()):
            self.close(session, "shutdown")
        if self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)
        for feed in list(self.feeds.values()):
            feed.close()
        self.feeds.clear()
        self.send_queue.close()


class Housekeeping:
    """Once a second: reap dead sessions, let live WHIP sessions do their periodic work, sample RTP figures."""

    def __init__(self, registry: SessionRegistry, whip_tick: Callable[[WhipSession, float], Awaitable[None]]) -> None:
        self._registry = registry
        self._whip_tick = whip_tick
        self._task = BackgroundTask.every(1.0, self.run_once, "webrtc_housekeeping")
        self._last_stats = 0.0

    def start(self) -> None:
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()

    async def run_once(self) -> None:
        registry = self._registry
        now = time.monotonic()
        timeout = registry.config.session_timeout
        for session in list(registry.sessions.values()):
            state = session.pc.connectionState
            session.set_state(state)
            reason = None
            gone = session.stream_gone_since()
            if state in ("failed", "closed"):
                reason = state
            elif state in ("new", "connecting") and now - session.created > timeout:
                reason = "connect_timeout"
            elif state == "disconnected" and now - session.state_since > timeout:
                reason = "disconnected"
            elif state == "connected" and now - max(session.last_activity, session.state_since) > timeout:
                reason = "idle"
            elif gone is not None and now - gone > timeout:
                reason = "stream_ended"
            if reason is not None:
                log.info(
                    "event=webrtc_session_timeout kind=%s id=%s stream=%s state=%s reason=%s",
                    session.kind,
                    session.id,
                    session.shown,
                    state,
                    reason,
                )
                registry.close(session, reason)
            elif isinstance(session, WhipSession) and state == "connected":
                await self._whip_tick(session, now)
        if now - self._last_stats >= STATS_INTERVAL:
            self._last_stats = now
            for session in list(registry.sessions.values()):
                if not session.closing and session.state == "connected":
                    await self._sample_rtp(session)
                    await asyncio.sleep(0)

    async def _sample_rtp(self, session: Session) -> None:
        """Add the RTP packets/bytes sent since the last sample (aiortc's own sender statistics)."""
        stats = self._registry.stats
        traffic = self._registry.traffic
        for transceiver in session.pc.getTransceivers():
            sender = transceiver.sender
            if sender.track is None:
                continue
            try:
                report = await sender.getStats()
            except Exception:  # the session is closing under us
                return
            for item in report.values():
                if isinstance(item, RTCOutboundRtpStreamStats):
                    packets, sent = item.packetsSent or 0, item.bytesSent or 0
                    before = session.rtp_seen.get(transceiver.kind, (0, 0))
                    session.rtp_seen[transceiver.kind] = (packets, sent)
                    stats.rtp_packets_sent[transceiver.kind] += max(0, packets - before[0])
                    stats.rtp_bytes_sent[transceiver.kind] += max(0, sent - before[1])
                    if traffic is not None:
                        traffic.bytes_out["webrtc"] += max(0, sent - before[1])
