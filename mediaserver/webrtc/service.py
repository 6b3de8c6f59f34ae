"""The WebRTC service: WHEP playback and WHIP ingest sessions, their HTTP endpoints, housekeeping and metrics.

WHEP (draft-ietf-wish-whep) and WHIP (RFC 9725) without trickle ICE: the client POSTs its complete offer, we
answer 201 with the complete answer (all our candidates gathered) and a `Location` for the session, which
the client DELETEs to hang up. PATCH (trickle ICE, ICE restart) is answered 405: aiortc cannot add candidates
to a running session.

A session is closed and its peer connection freed when it fails, when it stays unconnected or disconnected,
when the viewer sends neither RTCP nor ICE checks (a WHIP peer no media) for `session_timeout` seconds (a
client that vanished without DELETE), or when its stream has been gone for that long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import quote

from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc import sdp as aiortc_sdp
from aiortc.rtp import RTCP_PSFB_FIR, RTCP_PSFB_PLI, RTCP_RTPFB_NACK, RtcpPsfbPacket, RtcpRtpfbPacket
from aiortc.stats import RTCOutboundRtpStreamStats
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from mediaserver.auth import Authorizer, AuthResult, Denied, redact
from mediaserver.background import BackgroundTask
from mediaserver.config import WebrtcConfig
from mediaserver.events import StreamEvent, StreamEventKind
from mediaserver.http.access import SYSTEM_READ, OpenStats, PlayAccess, StatsGate, bearer
from mediaserver.http.errors import error_response
from mediaserver.hub import Hub, Stream, StreamTaken
from mediaserver.media import Codec
from mediaserver.metrics import TrafficStats
from mediaserver.webrtc.codecs import answer_codecs, choose_h264, preferences, usable_h264
from mediaserver.webrtc.feed import StreamFeed, Viewer
from mediaserver.webrtc.ice import HostCandidates, IceSetupError, ice_servers, strip_mdns_candidates
from mediaserver.webrtc.ingest import TapUnsupported, WhipIngest, WhipPublisher, tap_receiver
from mediaserver.webrtc.tracks import H264Track, OpusTrack, TrackCounters
from mediaserver.webrtc.transcode import TranscodeStats

log = logging.getLogger("mediaserver.webrtc")

SDP_TYPE = "application/sdp"
MAX_SDP_BYTES = 64 * 1024
# Offer in, answer out: parsing, ICE gathering (STUN/TURN included) and DTLS certificate set-up.
SETUP_TIMEOUT = 15.0
CLOSE_TIMEOUT = 5.0
STATS_INTERVAL = 2.0
# Seconds after a publish during which a WHEP viewer may join before the stream's video configuration came.
VIDEO_GRACE = 5.0
# Keyframe requests forwarded from WHEP viewers to a WHIP publisher, at most one per this many seconds.
FORWARDED_KEYFRAME_INTERVAL = 1.0
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Location, ETag, Accept-Post, Accept-Patch, Link",
}
CORS_PREFLIGHT = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, DELETE, PATCH, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, Authorization, If-Match",
    "Access-Control-Expose-Headers": "Location, ETag, Accept-Post, Accept-Patch, Link",
    "Access-Control-Max-Age": "86400",
    "Accept-Post": SDP_TYPE,
}
STATES = ("new", "connecting", "connected", "disconnected", "failed", "closed")


class Rejected(Exception):
    """A request refused with a JSON error body."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


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

    @property
    def key(self) -> str:
        return f"{self.app}/{self.name}"

    @property
    def location(self) -> str:
        return f"/{self.kind}/{quote(self.app, safe='')}/{quote(self.name, safe='')}/{self.id}"

    @property
    def shown(self) -> str:
        """The stream as logs may show it (the name may be a stream key)."""
        return f"{self.app}/{redact(self.name)}"

    def set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.state_since = time.monotonic()

    def release(self) -> None:
        """Free what the session holds besides the peer connection (synchronous, on the loop)."""

    def snapshot(self) -> dict[str, object]:
        return {
            "id": self.id,
            "kind": self.kind,
            "app": self.app,
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
        self.video: H264Track | None = None
        self.audio: OpusTrack | None = None
        self.codec = ""

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

    def snapshot(self) -> dict[str, object]:
        data = super().snapshot()
        if self.ingest is not None:
            data["video_frames"] = self.ingest.video_frames
            data["audio_frames"] = self.ingest.audio_frames
            data["bytes_in"] = self.ingest.bytes_in
        return data


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
        self.keyframe_requests: dict[str, int] = defaultdict(int)
        self.frames_received: dict[str, int] = defaultdict(int)
        self.bytes_received = 0
        self.errors: dict[str, int] = defaultdict(int)
        self.aac_to_opus = TranscodeStats()
        self.opus_to_aac = TranscodeStats()


class WebrtcService:
    def __init__(
        self,
        hub: Hub,
        config: WebrtcConfig,
        registry: CollectorRegistry,
        authorizer: Authorizer,
        traffic: TrafficStats | None = None,
        play_access: PlayAccess | None = None,
        stats_gate: StatsGate | None = None,
    ) -> None:
        self.hub = hub
        self.config = config
        self.authorizer = authorizer
        self.play_access = play_access or PlayAccess(authorizer, registry)
        self.stats_gate: StatsGate = stats_gate or OpenStats()
        self.traffic = traffic
        self.sessions: dict[str, Session] = {}
        self.feeds: dict[str, StreamFeed] = {}
        self.stats = WebrtcStats()
        self.hosts = HostCandidates(config.host_addresses, config.udp_port_min, config.udp_port_max)
        self.ice_servers = ice_servers(config.ice_servers, config.turn_username, config.turn_credential)
        self._pending = 0
        self._closing: set[asyncio.Task[None]] = set()
        self._housekeeping = BackgroundTask(self._run_housekeeping)
        self._last_stats = 0.0
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
        registry.register(_WebrtcCollector(self))
        hub.listen(self._on_hub_event)
        # aiortc logs every RTP packet at debug level: far too much for a server log.
        for name in ("aiortc", "aioice"):
            logger = logging.getLogger(name)
            if logger.getEffectiveLevel() < logging.INFO:
                logger.setLevel(logging.INFO)

    # ----- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._housekeeping.start()

    async def stop(self) -> None:
        await self._housekeeping.stop()
        for session in list(self.sessions.values()):
            self._close(session, "shutdown")
        if self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)
        for feed in list(self.feeds.values()):
            feed.close()
        self.feeds.clear()

    def _on_hub_event(self, event: StreamEvent) -> None:
        feed = self.feeds.get(event.key)
        if feed is None:
            return
        if event.kind is StreamEventKind.STARTED and feed.stream is None:
            feed.stream_started(event.stream)
        elif event.kind is StreamEventKind.STOPPED:
            feed.stream_ended(event.stream)

    async def _run_housekeeping(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await self._housekeep()
            except Exception:
                log.exception("event=webrtc_housekeeping_failed")

    async def _housekeep(self) -> None:
        now = time.monotonic()
        timeout = self.config.session_timeout
        for session in list(self.sessions.values()):
            state = session.pc.connectionState
            session.set_state(state)
            reason = None
            if state in ("failed", "closed"):
                reason = state
            elif state in ("new", "connecting") and now - session.created > timeout:
                reason = "connect_timeout"
            elif state == "disconnected" and now - session.state_since > timeout:
                reason = "disconnected"
            elif state == "connected" and now - max(session.last_activity, session.state_since) > timeout:
                reason = "idle"
            elif isinstance(session, WhepSession):
                ended = session.feed.ended_at
                if session.feed.stream is None and ended is not None and now - ended > timeout:
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
                self._close(session, reason)
            elif isinstance(session, WhipSession) and state == "connected":
                await self._whip_keyframes(session, now)
        if now - self._last_stats >= STATS_INTERVAL:
            self._last_stats = now
            for session in list(self.sessions.values()):
                if not session.closing and session.state == "connected":
                    await self._sample_rtp(session)
                    await asyncio.sleep(0)

    async def _sample_rtp(self, session: Session) -> None:
        """Add the RTP packets/bytes sent since the last sample (aiortc's own sender statistics)."""
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
                    self.stats.rtp_packets_sent[transceiver.kind] += max(0, packets - before[0])
                    self.stats.rtp_bytes_sent[transceiver.kind] += max(0, sent - before[1])
                    if self.traffic is not None:
                        self.traffic.bytes_out["webrtc"] += max(0, sent - before[1])

    # ----- closing --------------------------------------------------------------------------

    def _close(self, session: Session, reason: str) -> None:
        """Close a session: its resources at once, its peer connection in a task."""
        if session.closing:
            return
        session.closing = True
        if self.sessions.pop(session.id, None) is not None and self.traffic is not None:
            self.traffic.connections_current["webrtc"] -= 1
        self.closed.labels(session.kind, reason).inc()
        if isinstance(session, WhepSession):
            self._release_viewer(session)
        elif isinstance(session, WhipSession) and session.ingest is not None:
            ingest = session.ingest
            self.stats.bytes_received += ingest.bytes_in - session.bytes_seen
            if self.traffic is not None:
                self.traffic.bytes_in["webrtc"] += ingest.bytes_in - session.bytes_seen
            session.bytes_seen = ingest.bytes_in
            self.stats.frames_received["video"] += ingest.video_frames
            self.stats.frames_received["audio"] += ingest.audio_frames
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

    def _release_viewer(self, session: WhepSession) -> None:
        for media, counters in session.counters():
            self.stats.frames_sent[media] += counters.frames
            self.stats.payload_bytes_sent[media] += counters.bytes
            self.stats.frames_dropped += counters.dropped
            counters.frames = counters.bytes = counters.dropped = 0
        for track in (session.video, session.audio):
            if track is not None:
                track.end()
        feed = session.feed
        if session.viewer is not None:
            feed.remove(session.viewer)
            session.viewer = None
        if not feed.viewers and self.feeds.get(feed.key) is feed:
            feed.close()
            del self.feeds[feed.key]

    # ----- HTTP: routes -------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/whep/{app}/{name}", self._guard("whep", self.handle_whep)),
            web.options("/whep/{app}/{name}", self.handle_options),
            web.delete("/whep/{app}/{name}/{session}", self._guard("whep", self.handle_delete)),
            web.patch("/whep/{app}/{name}/{session}", self.handle_patch),
            web.options("/whep/{app}/{name}/{session}", self.handle_options),
            web.post("/whip/{app}/{name}", self._guard("whip", self.handle_whip)),
            web.options("/whip/{app}/{name}", self.handle_options),
            web.delete("/whip/{app}/{name}/{session}", self._guard("whip", self.handle_delete)),
            web.patch("/whip/{app}/{name}/{session}", self.handle_patch),
            web.options("/whip/{app}/{name}/{session}", self.handle_options),
            web.get("/api/v1/webrtc/sessions", self.handle_list),
        ]

    def _guard(
        self, endpoint: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """Turn `Rejected` and unexpected errors into JSON error bodies with CORS headers."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except Rejected as exc:
                self.rejected.labels(endpoint, exc.code).inc()
                response = error_response(exc.status, exc.code, exc.message)
                response.headers.update(CORS)
                response.headers.update(exc.headers)
                return response
            except Exception:
                log.exception("event=webrtc_request_failed endpoint=%s path=%s", endpoint, request.path)
                self.rejected.labels(endpoint, "internal_error").inc()
                response = error_response(500, "internal_error", "the session could not be set up")
                response.headers.update(CORS)
                return response

        return guarded

    async def handle_options(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers=CORS_PREFLIGHT)

    async def handle_patch(self, request: web.Request) -> web.Response:
        endpoint = request.path.split("/")[1]
        self.rejected.labels(endpoint, "trickle_not_supported").inc()
        response = error_response(
            405,
            "trickle_not_supported",
            "trickle ICE and ICE restarts are not supported: send a complete offer (non-trickle)",
        )
        response.headers.update(CORS)
        response.headers["Allow"] = "DELETE, OPTIONS"
        return response

    async def handle_delete(self, request: web.Request) -> web.Response:
        session = self.sessions.get(request.match_info["session"])
        kind = request.path.split("/")[1]
        if (
            session is None
            or session.kind != kind
            or session.app != request.match_info["app"]
            or session.name != request.match_info["name"]
        ):
            raise Rejected(404, "session_not_found", "no such session")
        self._close(session, "deleted")
        return web.Response(status=200, headers=CORS)

    async def handle_list(self, request: web.Request) -> web.StreamResponse:
        refused = await self.stats_gate.check(request, SYSTEM_READ)
        if refused is not None:
            return refused
        sessions = [s.snapshot() for s in self.sessions.values()]
        by_state: dict[str, int] = defaultdict(int)
        for session in self.sessions.values():
            by_state[session.state] += 1
        return web.json_response(
            {
                "sessions": sessions,
                "count": len(sessions),
                "by_state": by_state,
                "closing": len(self._closing),
                "feeds": len(self.feeds),
            }
        )

    # ----- HTTP: shared checks ------------------------------------------------------------

    async def _read_offer(self, request: web.Request) -> tuple[str, aiortc_sdp.SessionDescription]:
        if request.content_type != SDP_TYPE:
            raise Rejected(415, "unsupported_media_type", f"the offer must be sent as {SDP_TYPE}")
        if request.content_length is not None and request.content_length > MAX_SDP_BYTES:
            raise Rejected(413, "offer_too_large", f"an SDP offer is at most {MAX_SDP_BYTES} bytes")
        body = await request.content.read(MAX_SDP_BYTES + 1)
        if len(body) > MAX_SDP_BYTES:
            raise Rejected(413, "offer_too_large", f"an SDP offer is at most {MAX_SDP_BYTES} bytes")
        try:
            text = body.decode("utf-8")
            parsed = aiortc_sdp.SessionDescription.parse(text)
        except Exception as exc:
            raise Rejected(400, "bad_sdp", f"the offer is not valid SDP: {exc}") from exc
        if not text.startswith("v=0") or not parsed.media:
            raise Rejected(400, "bad_sdp", "the offer is not valid SDP (no v=0 line or no media section)")
        for media in parsed.media:
            ice = media.ice
            if media.kind in ("audio", "video") and (ice is None or ice.usernameFragment is None or not media.dtls):
                raise Rejected(400, "bad_sdp", "the offer has no ICE credentials or DTLS fingerprint")
        return text, parsed

    def _check_capacity(self) -> None:
        if len(self.sessions) + self._pending >= self.config.max_sessions:
            raise Rejected(
                503,
                "too_many_sessions",
                f"the server has reached its limit of {self.config.max_sessions} WebRTC sessions",
                {"Retry-After": "5"},
            )

    async def _authorize_publish(self, request: web.Request) -> AuthResult:
        app, name = request.match_info["app"], request.match_info["name"]
        params = dict(request.query)
        if "key" not in params and bearer(request):
            params["key"] = bearer(request)
        return await self.authorizer.authorize_publish(app, name, params, request.remote or "")

    def _new_pc(self) -> RTCPeerConnection:
        return RTCPeerConnection(RTCConfiguration(iceServers=self.ice_servers))

    def _watch_state(self, session: Session) -> None:
        pc = session.pc

        @pc.on("connectionstatechange")
        def _on_state() -> None:
            session.set_state(pc.connectionState)
            if pc.connectionState == "failed" and not session.closing:
                self._close(session, "failed")

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

    def _register(self, session: Session) -> None:
        self.sessions[session.id] = session
        if self.traffic is not None:
            self.traffic.connections_current["webrtc"] += 1
            self.traffic.connections_total["webrtc"] += 1

    @staticmethod
    def _created(session: Session, answer: str) -> web.Response:
        headers = dict(CORS)
        headers["Location"] = session.location
        headers["ETag"] = f'"{session.id}"'
        return web.Response(status=201, text=answer, content_type=SDP_TYPE, headers=headers)

    # ----- WHEP -------------------------------------------------------------------------------

    async def handle_whep(self, request: web.Request) -> web.Response:
        text, offer = await self._read_offer(request)
        result = await self.play_access.check(request, "whep")
        if isinstance(result, Denied):
            raise Rejected(403, "play_denied", "not allowed to play this stream")
        stream = self.hub.get(result.app, result.name)
        if stream is None:
            raise Rejected(404, "stream_not_found", "no live stream with that name")
        # A stream whose video has not shown up yet (a publisher that just started) is accepted for a while.
        video_pending = (
            stream.video.codec is Codec.UNKNOWN and time.monotonic() - stream.started_monotonic < VIDEO_GRACE
        )
        if stream.video.codec is not Codec.H264 and not video_pending:
            raise Rejected(422, "stream_codec_unsupported", "WebRTC playback needs H.264 video; this stream has none")
        video_m = next((m for m in offer.media if m.kind == "video"), None)
        if video_m is None:
            raise Rejected(400, "no_video", "the offer has no video section")
        if video_m.direction not in ("recvonly", "sendrecv"):
            raise Rejected(400, "bad_direction", "the offer's video section does not receive")
        if not usable_h264(video_m.rtp.codecs):
            raise Rejected(
                400, "no_h264", "the offer has no H.264 format with packetization-mode=1; the server sends H.264"
            )
        audio_m = next((m for m in offer.media if m.kind == "audio"), None)
        wants_audio = (
            audio_m is not None
            and audio_m.direction in ("recvonly", "sendrecv")
            and any(c.mimeType.lower() == "audio/opus" for c in audio_m.rtp.codecs)
            and (
                stream.audio.codec in (Codec.AAC, Codec.OPUS) or (video_pending and stream.audio.codec is Codec.UNKNOWN)
            )
        )
        self._check_capacity()
        started = time.monotonic()
        self._pending += 1
        try:
            session = await asyncio.wait_for(
                self._start_whep(request, stream, text, video_m.rtp.codecs, wants_audio, started), SETUP_TIMEOUT
            )
        except TimeoutError as exc:
            raise Rejected(503, "setup_timeout", "the session could not be set up in time") from exc
        finally:
            self._pending -= 1
        assert session.pc.localDescription is not None
        log.info(
            "event=whep_start id=%s peer=%s stream=%s codec=%s audio=%s answer_ms=%.1f",
            session.id,
            session.peer,
            session.shown,
            session.codec,
            wants_audio,
            (time.monotonic() - started) * 1000,
        )
        return self._created(session, session.pc.localDescription.sdp)

    async def _start_whep(
        self,
        request: web.Request,
        stream: Stream,
        text: str,
        offered: list[Any],
        wants_audio: bool,
        started: float,
    ) -> WhepSession:
        feed = self.feeds.get(stream.key)
        if feed is None or (feed.stream is not stream and feed.stream is not None):
            feed = StreamFeed(stream.key, stream, self.stats.aac_to_opus, self.config.opus_bitrate, self._feed_error)
            self.feeds[stream.key] = feed
        pc = self._new_pc()
        session = WhepSession(secrets.token_hex(12), stream.app, stream.name, request.remote or "", pc, feed)
        session.created = started
        try:
            video = H264Track(feed.gop_snapshot)
            session.video = video
            transceiver = pc.addTransceiver(video, direction="sendonly")
            transceiver.setCodecPreferences(preferences("video", "video/H264"))
            self._watch_rtcp(session, transceiver.sender)
            if wants_audio:
                session.audio = OpusTrack()
                audio = pc.addTransceiver(session.audio, direction="sendonly")
                audio.setCodecPreferences(preferences("audio", "audio/opus"))
                self._watch_rtcp(session, audio.sender)
            try:
                await pc.setRemoteDescription(RTCSessionDescription(strip_mdns_candidates(text), "offer"))
            except Exception as exc:
                raise Rejected(400, "bad_offer", f"the offer cannot be used: {exc}") from exc
            chosen = choose_h264(offered, feed.avc_config())
            if chosen is not None:
                # The offered format that decodes this stream's profile, not aiortc's Constrained Baseline.
                transceiver._codecs = answer_codecs(chosen, offered)
            codecs = transceiver._codecs
            if not codecs or codecs[0].mimeType.lower() != "video/h264":
                raise Rejected(400, "no_h264", "no H.264 format in common with the offer")
            session.codec = f"H264 pt={codecs[0].payloadType} {codecs[0].parameters.get('profile-level-id', '')}"
            answer = await pc.createAnswer()
            try:
                await self.hosts.prepare(pc)
            except IceSetupError as exc:
                log.warning("event=webrtc_no_candidates error=%s", exc)
                raise Rejected(503, "no_ice_candidates", "no UDP port is free for a new session") from exc
            await pc.setLocalDescription(answer)

            def first_frame() -> None:
                session.setup_seconds = time.monotonic() - session.created
                self.setup_time.observe(session.setup_seconds)

            video.on_first_frame = first_frame
            session.viewer = Viewer(feed, video, session.audio)
            feed.add(session.viewer)
            self._watch_state(session)
            self._register(session)
        except BaseException:
            session.closing = True
            self._release_viewer(session)
            await self._close_quietly(pc)
            raise
        return session

    async def _close_quietly(self, pc: RTCPeerConnection) -> None:
        try:
            await asyncio.wait_for(pc.close(), CLOSE_TIMEOUT)
        except Exception as exc:
            log.warning("event=webrtc_close_failed error=%r", exc)

    def _feed_error(self, reason: str) -> None:
        self.stats.errors[reason] += 1

    def _watch_rtcp(self, session: Session, sender: RTCRtpSender) -> None:
        """Count the feedback a viewer sends (aiortc acts on NACKs; PLI/FIR cannot be honoured on the packet
        path) and note the viewer's activity; forward keyframe requests to a WHIP publisher."""
        original = sender._handle_rtcp_packet
        stats = self.stats

        async def handle_rtcp(packet: Any) -> None:
            session.last_activity = time.monotonic()
            if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
                stats.feedback["nack"] += 1
                stats.nack_requested_packets += len(packet.lost)
            elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
                stats.feedback["pli" if packet.fmt == RTCP_PSFB_PLI else "fir"] += 1
                stats.keyframe_requests["received"] += 1
                self._forward_keyframe_request(session.key)
            await original(packet)

        setattr(sender, "_handle_rtcp_packet", handle_rtcp)  # noqa: B010 - an instance attribute, on purpose

    def _forward_keyframe_request(self, key: str) -> None:
        stream = self.hub.streams.get(key)
        if stream is None or not isinstance(stream.publisher, WhipPublisher):
            return
        for session in self.sessions.values():
            if (
                isinstance(session, WhipSession)
                and session.stream is stream
                and session.ingest is not None
                and time.monotonic() - session.last_pli >= FORWARDED_KEYFRAME_INTERVAL
            ):
                session.ingest.keyframe_wanted = True
                asyncio.get_running_loop().create_task(self._send_pli(session))

    # ----- WHIP -------------------------------------------------------------------------------

    async def handle_whip(self, request: web.Request) -> web.Response:
        app, name = request.match_info["app"], request.match_info["name"]
        text, offer = await self._read_offer(request)
        if not name or len(name) > 256:
            raise Rejected(400, "bad_stream_name", "invalid stream name")
        result = await self._authorize_publish(request)
        if isinstance(result, Denied):
            raise Rejected(403, "publish_denied", "not allowed to publish this stream")
        # The grant names the stream: a database authorizer maps a secret key to its camera id.
        app, name = result.app, result.name
        if self.hub.get(app, name) is not None:
            raise Rejected(409, "stream_taken", "the stream is already being published")
        video_m = next((m for m in offer.media if m.kind == "video"), None)
        audio_m = next((m for m in offer.media if m.kind == "audio"), None)
        if video_m is not None and not usable_h264(video_m.rtp.codecs):
            raise Rejected(400, "no_h264", "the offer has no H.264 format with packetization-mode=1")
        sends_video = video_m is not None and video_m.direction in ("sendonly", "sendrecv")
        sends_audio = (
            audio_m is not None
            and audio_m.direction in ("sendonly", "sendrecv")
            and any(c.mimeType.lower() == "audio/opus" for c in audio_m.rtp.codecs)
        )
        if not sends_video and not sends_audio:
            raise Rejected(400, "no_media", "the offer sends neither H.264 video nor Opus audio")
        self._check_capacity()
        started = time.monotonic()
        self._pending += 1
        try:
            session = await asyncio.wait_for(
                self._start_whip(request, app, name, text, sends_video, sends_audio, started), SETUP_TIMEOUT
            )
        except TimeoutError as exc:
            raise Rejected(503, "setup_timeout", "the session could not be set up in time") from exc
        finally:
            self._pending -= 1
        assert session.pc.localDescription is not None
        log.info(
            "event=whip_start id=%s peer=%s stream=%s video=%s audio=%s",
            session.id,
            session.peer,
            session.shown,
            sends_video,
            sends_audio,
        )
        return self._created(session, session.pc.localDescription.sdp)

    async def _start_whip(
        self,
        request: web.Request,
        app: str,
        name: str,
        text: str,
        sends_video: bool,
        sends_audio: bool,
        started: float,
    ) -> WhipSession:
        pc = self._new_pc()
        session = WhipSession(secrets.token_hex(12), app, name, request.remote or "", pc)
        session.created = started
        try:
            publisher = WhipPublisher(session.peer, lambda reason: self._close(session, reason))
            try:
                stream = self.hub.publish(app, name, publisher)
            except StreamTaken as exc:
                raise Rejected(409, "stream_taken", "the stream is already being published") from exc
            session.hub, session.stream = self.hub, stream
            ingest = WhipIngest(stream, self.stats.opus_to_aac, self.config.aac_bitrate)
            session.ingest = ingest
            try:
                if sends_video:
                    video = pc.addTransceiver("video", direction="recvonly")
                    video.setCodecPreferences(preferences("video", "video/H264"))
                    tap_receiver(video.receiver, ingest.on_video)
                if sends_audio:
                    audio = pc.addTransceiver("audio", direction="recvonly")
                    audio.setCodecPreferences(preferences("audio", "audio/opus"))
                    tap_receiver(audio.receiver, ingest.on_audio)
            except TapUnsupported as exc:
                raise Rejected(501, "whip_unsupported", str(exc)) from exc
            try:
                await pc.setRemoteDescription(RTCSessionDescription(strip_mdns_candidates(text), "offer"))
            except Exception as exc:
                raise Rejected(400, "bad_offer", f"the offer cannot be used: {exc}") from exc
            answer = await pc.createAnswer()
            try:
                await self.hosts.prepare(pc)
            except IceSetupError as exc:
                log.warning("event=webrtc_no_candidates error=%s", exc)
                raise Rejected(503, "no_ice_candidates", "no UDP port is free for a new session") from exc
            await pc.setLocalDescription(answer)
            ingest.start(sends_audio)
            self._watch_state(session)
            self._register(session)
        except BaseException:
            session.closing = True
            session.release()
            await self._close_quietly(pc)
            raise
        return session

    async def _whip_keyframes(self, session: WhipSession, now: float) -> None:
        ingest = session.ingest
        if ingest is None:
            return
        self.stats.bytes_received += ingest.bytes_in - session.bytes_seen
        if self.traffic is not None:
            self.traffic.bytes_in["webrtc"] += ingest.bytes_in - session.bytes_seen
        session.bytes_seen = ingest.bytes_in
        session.last_activity = max(session.last_activity, ingest.last_media)
        interval = self.config.whip_keyframe_interval
        due = interval > 0 and now - session.last_pli >= interval
        if due or (ingest.keyframe_wanted and now - session.last_pli >= 0.5):
            await self._send_pli(session)

    async def _send_pli(self, session: WhipSession) -> None:
        """Ask a WHIP publisher for a keyframe (RTCP PLI on its video SSRC)."""
        session.last_pli = time.monotonic()
        for transceiver in session.pc.getTransceivers():
            if transceiver.kind != "video":
                continue
            receiver = transceiver.receiver
            send_pli = getattr(receiver, "_send_rtcp_pli", None)
            if send_pli is None:
                return
            for source in receiver.getSynchronizationSources():
                with contextlib.suppress(Exception):
                    await send_pli(source.source)
                    self.stats.keyframe_requests["sent"] += 1


class _WebrtcCollector(Collector):
    def __init__(self, service: WebrtcService) -> None:
        self._service = service

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        service = self._service
        stats = service.stats
        sessions = GaugeMetricFamily(
            "mediaserver_webrtc_sessions", "WebRTC sessions by kind and state", labels=["kind", "state"]
        )
        counts: dict[tuple[str, str], int] = defaultdict(int)
        for kind in ("whep", "whip"):
            for state in STATES:
                counts[(kind, state)] = 0
        frames = dict(stats.frames_sent)
        payload = dict(stats.payload_bytes_sent)
        dropped = stats.frames_dropped
        for session in list(service.sessions.values()):
            counts[(session.kind, session.state)] += 1
            if isinstance(session, WhepSession):
                for media, counters in session.counters():
                    frames[media] = frames.get(media, 0) + counters.frames
                    payload[media] = payload.get(media, 0) + counters.bytes
                    dropped += counters.dropped
        for (kind, state), count in counts.items():
            sessions.add_metric([kind, state], count)
        yield sessions
        yield GaugeMetricFamily(
            "mediaserver_webrtc_peer_connections",
            "Peer connections held, sessions being closed included",
            value=len(service.sessions) + len(service._closing),
        )
        yield GaugeMetricFamily("mediaserver_webrtc_feeds", "Streams with WebRTC viewers", value=len(service.feeds))
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
            "RTP packets viewers asked to be resent (aiortc resends from a 128-packet history)",
            value=stats.nack_requested_packets,
        )
        keyframes = CounterMetricFamily(
            "mediaserver_webrtc_keyframe_requests",
            "Keyframe requests: received from viewers (PLI/FIR, not honoured on the pass-through path) and sent "
            "to WHIP publishers",
            labels=["direction"],
        )
        for direction in ("received", "sent"):
            keyframes.add_metric([direction], stats.keyframe_requests.get(direction, 0))
        yield keyframes
        received = CounterMetricFamily("mediaserver_webrtc_received_frames", "WHIP frames received", labels=["media"])
        video_in = sum(
            s.ingest.video_frames for s in service.sessions.values() if isinstance(s, WhipSession) and s.ingest
        )
        audio_in = sum(
            s.ingest.audio_frames for s in service.sessions.values() if isinstance(s, WhipSession) and s.ingest
        )
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
        calls = CounterMetricFamily(
            "mediaserver_webrtc_transcode_calls", "Audio transcoder calls", labels=["direction"]
        )
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
