"""WHIP ingest (RFC 9725): a WebRTC peer publishes a stream on the hub, and keyframe requests go to it (on a
schedule, when frames are lost, and on behalf of WHEP viewers of that stream)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time

from aiohttp import web
from aiortc import sdp as aiortc_sdp

from mediaserver.auth import Authorizer, AuthResult, Denied
from mediaserver.config import WebrtcConfig
from mediaserver.http.access import bearer
from mediaserver.hub import Hub, StreamTaken
from mediaserver.webrtc.codecs import preferences, usable_h264
from mediaserver.webrtc.errors import Rejected
from mediaserver.webrtc.ingest import TapUnsupported, WhipIngest, WhipPublisher, tap_receiver
from mediaserver.webrtc.metrics import WebrtcMetrics
from mediaserver.webrtc.sessions import SessionRegistry, WhipSession

log = logging.getLogger("mediaserver.webrtc")

# Keyframe requests forwarded from WHEP viewers to a WHIP publisher, at most one per this many seconds.
FORWARDED_KEYFRAME_INTERVAL = 1.0
# A publisher whose frames could not be used is asked again at most this often.
WANTED_KEYFRAME_INTERVAL = 0.5


class WhipService:
    def __init__(
        self,
        hub: Hub,
        config: WebrtcConfig,
        sessions: SessionRegistry,
        metrics: WebrtcMetrics,
        authorizer: Authorizer,
    ) -> None:
        self.hub = hub
        self.config = config
        self.sessions = sessions
        self.stats = metrics.stats
        self.authorizer = authorizer

    # ----- offers -----------------------------------------------------------------------------

    async def offer(self, request: web.Request, text: str, offer: aiortc_sdp.SessionDescription) -> WhipSession:
        name = request.match_info["name"]
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
        peer = request.remote or ""

        async def start(started: float) -> WhipSession:
            return await self._start(peer, app, name, text, sends_video, sends_audio, started)

        session = await self.sessions.set_up(start)
        log.info(
            "event=whip_start id=%s peer=%s stream=%s video=%s audio=%s",
            session.id,
            session.peer,
            session.shown,
            sends_video,
            sends_audio,
        )
        return session

    async def _authorize_publish(self, request: web.Request) -> AuthResult:
        app, name = request.match_info["app"], request.match_info["name"]
        params = dict(request.query)
        if "key" not in params and bearer(request):
            params["key"] = bearer(request)
        return await self.authorizer.authorize_publish(app, name, params, request.remote or "")

    async def _start(
        self, peer: str, app: str, name: str, text: str, sends_video: bool, sends_audio: bool, started: float
    ) -> WhipSession:
        pc = self.sessions.new_pc()
        session = WhipSession(secrets.token_hex(12), app, name, peer, pc)
        session.created = started
        try:
            publisher = WhipPublisher(session.peer, lambda reason: self.sessions.close(session, reason))
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
            await self.sessions.apply_offer(pc, text)
            await self.sessions.answer(pc)
            ingest.start(sends_audio)
            self.sessions.register(session)
        except BaseException:
            session.closing = True
            session.release()
            await self.sessions.close_quietly(pc)
            raise
        return session

    # ----- keyframe requests ------------------------------------------------------------------

    async def tick(self, session: WhipSession, now: float) -> None:
        """Housekeeping for a connected publisher: count its bytes, ask for a keyframe when one is due."""
        ingest = session.ingest
        if ingest is None:
            return
        self.sessions.count_received(session)
        session.last_activity = max(session.last_activity, ingest.last_media)
        interval = self.config.whip_keyframe_interval
        due = interval > 0 and now - session.last_pli >= interval
        if due or (ingest.keyframe_wanted and now - session.last_pli >= WANTED_KEYFRAME_INTERVAL):
            await self._send_pli(session)

    def forward_keyframe_request(self, key: str) -> bool:
        """A WHEP viewer of `key` asked for a keyframe: pass it on if a WHIP peer publishes that stream.
        True when one does (it makes the keyframe, now or at its next request)."""
        stream = self.hub.streams.get(key)
        if stream is None or not isinstance(stream.publisher, WhipPublisher):
            return False
        for session in self.sessions.sessions.values():
            if (
                isinstance(session, WhipSession)
                and session.stream is stream
                and session.ingest is not None
                and time.monotonic() - session.last_pli >= FORWARDED_KEYFRAME_INTERVAL
            ):
                session.ingest.keyframe_wanted = True
                asyncio.get_running_loop().create_task(self._send_pli(session))
        return True

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
