"""WHEP playback (draft-ietf-wish-whep): check an offer against the stream, pick the H.264 format that decodes
it, and start a viewer on the stream's shared feed.

Fan-out: hub -> one `StreamFeed` per stream (its only WebRTC subscriber) -> one send batch per frame for all
its viewers. A viewer joins its feed as soon as its media objects exist (the feed subscribes with the first one)
and starts from the feed's cached GOP when aiortc starts its RTP sender (`rtpout.FeedSender`).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiortc import RTCRtpSender
from aiortc import sdp as aiortc_sdp
from aiortc.rtcrtpparameters import RTCRtpSendParameters
from aiortc.rtp import RTCP_PSFB_FIR, RTCP_PSFB_PLI, RTCP_RTPFB_NACK, RtcpPsfbPacket, RtcpRtpfbPacket

from mediaserver.auth import Denied
from mediaserver.config import WebrtcConfig
from mediaserver.events import StreamEvent, StreamEventKind
from mediaserver.http.access import PlayAccess
from mediaserver.hub import Hub, Stream
from mediaserver.media import Codec
from mediaserver.webrtc.codecs import answer_codecs, choose_h264, preferences, usable_h264
from mediaserver.webrtc.errors import Rejected
from mediaserver.webrtc.feed import StreamFeed, Viewer
from mediaserver.webrtc.metrics import WebrtcMetrics
from mediaserver.webrtc.rtpout import FeedSender, RtpOut, SendPathUnsupported
from mediaserver.webrtc.sessions import SessionRegistry, WhepSession
from mediaserver.webrtc.tracks import AudioOut, VideoOut

log = logging.getLogger("mediaserver.webrtc")

# Seconds after a publish during which a WHEP viewer may join before the stream's video configuration came.
VIDEO_GRACE = 5.0


class WhepService:
    def __init__(
        self,
        hub: Hub,
        config: WebrtcConfig,
        sessions: SessionRegistry,
        metrics: WebrtcMetrics,
        play_access: PlayAccess,
        on_keyframe_request: Callable[[str], bool],
    ) -> None:
        self.hub = hub
        self.config = config
        self.sessions = sessions
        self.metrics = metrics
        self.stats = metrics.stats
        self.play_access = play_access
        # A viewer's PLI/FIR, by stream key: True when a WHIP publisher will honour it (RTMP ones cannot be
        # asked; the viewer gets the cached GOP again instead).
        self._on_keyframe_request = on_keyframe_request

    # ----- offers -----------------------------------------------------------------------------

    async def offer(self, request: web.Request, text: str, offer: aiortc_sdp.SessionDescription) -> WhepSession:
        result = await self.play_access.check(request, "whep")
        if isinstance(result, Denied):
            raise Rejected(403, "play_denied", "not allowed to play this stream")
        # An on-demand source is started for this viewer and waited for.
        stream = await self.hub.find(result.app, result.name)
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
        offered = video_m.rtp.codecs

        async def start(started: float) -> WhepSession:
            return await self._start(request.remote or "", stream, text, offered, wants_audio, started)

        session = await self.sessions.set_up(start)
        log.info(
            "event=whep_start id=%s peer=%s stream=%s codec=%s audio=%s answer_ms=%.1f",
            session.id,
            session.peer,
            session.shown,
            session.codec,
            wants_audio,
            (time.monotonic() - session.created) * 1000,
        )
        return session

    async def _start(
        self, peer: str, stream: Stream, text: str, offered: list[Any], wants_audio: bool, started: float
    ) -> WhepSession:
        feed = self.feed_for(stream)
        pc = self.sessions.new_pc()
        session = WhepSession(secrets.token_hex(12), stream.app, stream.name, peer, pc, feed)
        session.created = started
        try:
            video = VideoOut(feed.gop_snapshot, feed.send_queue)
            session.video = video

            def first_frame() -> None:
                session.setup_seconds = time.monotonic() - session.created
                self.metrics.setup_time.observe(session.setup_seconds)

            video.on_first_frame = first_frame
            if wants_audio:
                session.audio = AudioOut()
            # Join the feed now (nothing is sent until the senders start): the feed is held from the first
            # session that needs it, so a viewer leaving meanwhile cannot drop it under this one.
            session.viewer = Viewer(video, session.audio)
            feed.add(session.viewer)
            transceiver = pc.addTransceiver(video.track, direction="sendonly")
            transceiver.setCodecPreferences(preferences("video", "video/H264"))
            self._send_path(session, transceiver.sender, video)
            if session.audio is not None:
                audio = pc.addTransceiver(session.audio.track, direction="sendonly")
                audio.setCodecPreferences(preferences("audio", "audio/opus"))
                self._send_path(session, audio.sender, session.audio)
            await self.sessions.apply_offer(pc, text)
            chosen = choose_h264(offered, feed.avc_config())
            if chosen is not None:
                # The offered format that decodes this stream's profile, not aiortc's Constrained Baseline.
                transceiver._codecs = answer_codecs(chosen, offered)
            codecs = transceiver._codecs
            if not codecs or codecs[0].mimeType.lower() != "video/h264":
                raise Rejected(400, "no_h264", "no H.264 format in common with the offer")
            session.codec = f"H264 pt={codecs[0].payloadType} {codecs[0].parameters.get('profile-level-id', '')}"
            await self.sessions.answer(pc)
            self.sessions.register(session)
        except BaseException:
            session.closing = True
            self.sessions.release_viewer(session)
            await self.sessions.close_quietly(pc)
            raise
        return session

    # ----- feeds ------------------------------------------------------------------------------

    def feed_for(self, stream: Stream) -> StreamFeed:
        """The stream's feed, made with its first viewer."""
        if stream.ended:
            # Gone while the offer was being checked: a feed would wait for packets that never come.
            raise Rejected(404, "stream_not_found", "no live stream with that name")
        feeds = self.sessions.feeds
        feed = feeds.get(stream.key)
        if feed is None or (feed.stream is not stream and feed.stream is not None):
            feed = StreamFeed(
                stream.key,
                stream,
                self.stats.aac_to_opus,
                self.config.opus_bitrate,
                self._feed_error,
                self.sessions.send_queue,
            )
            feeds[stream.key] = feed
        return feed

    def on_hub_event(self, event: StreamEvent) -> None:
        feed = self.sessions.feeds.get(event.key)
        if feed is None:
            return
        if event.kind is StreamEventKind.STARTED and feed.stream is None:
            feed.stream_started(event.stream)
        elif event.kind is StreamEventKind.STOPPED:
            feed.stream_ended(event.stream)

    def _feed_error(self, reason: str) -> None:
        self.stats.errors[reason] += 1

    # ----- send path and feedback --------------------------------------------------------------

    def _send_path(self, session: WhepSession, sender: RTCRtpSender, media: VideoOut | AudioOut) -> None:
        """Our RTP stream for `sender`, started when aiortc starts the sender; its feedback watched."""
        stats = self.stats

        def retransmitted() -> None:
            stats.rtp_retransmitted += 1

        def start(started: FeedSender, parameters: RTCRtpSendParameters) -> RtpOut | None:
            if session.closing:
                return None
            out = RtpOut(started, parameters, retransmitted)
            media.start(out)
            return out

        try:
            FeedSender.adopt(sender, start)
        except SendPathUnsupported as exc:
            raise Rejected(501, "whep_unsupported", str(exc)) from exc
        self._watch_rtcp(session, sender)

    def _watch_rtcp(self, session: WhepSession, sender: RTCRtpSender) -> None:
        """Count the feedback a viewer sends (aiortc passes NACKs to our retransmission) and note the viewer's
        activity; a keyframe request goes to a WHIP publisher, or else the viewer gets the cached GOP again."""
        original = sender._handle_rtcp_packet
        stats = self.stats
        forward = self._on_keyframe_request

        async def handle_rtcp(packet: Any) -> None:
            session.last_activity = time.monotonic()
            if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
                stats.feedback["nack"] += 1
                stats.nack_requested_packets += len(packet.lost)
            elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
                stats.feedback["pli" if packet.fmt == RTCP_PSFB_PLI else "fir"] += 1
                stats.keyframe_requests["received"] += 1
                if not forward(session.key) and session.video is not None and session.video.resync():
                    stats.gop_resends += 1
            await original(packet)

        setattr(sender, "_handle_rtcp_packet", handle_rtcp)  # noqa: B010 - an instance attribute, on purpose
