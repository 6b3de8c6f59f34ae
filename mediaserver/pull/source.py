"""One pulled source: a camera (or any server) that serves RTSP, RTMP or HTTP-FLV and waits to be read.

PyAV demuxes in a thread of the source's own (never on the event loop), without decoding; each packet is turned
into the hub's packets there and handed to the loop, which pushes them into the stream as an RTMP publisher
would. A session that fails, ends, or goes `timeout` seconds without a packet (FFmpeg's own I/O timeout) is
closed and opened again after a capped, jittered exponential back-off. The URL's credentials never
reach a log line, a metric or the API: only `shown_url` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any
from urllib.parse import urlsplit

import av

from mediaserver.auth import shown_url
from mediaserver.hub import Hub, Stream, StreamTaken
from mediaserver.media import Packet
from mediaserver.pull.audio import G711_CODECS, G711ToAac
from mediaserver.pull.convert import (
    AUDIO_CODECS,
    VIDEO_CODECS,
    SourceConverter,
    UnsupportedSource,
    avc_config_from_extradata,
)

log = logging.getLogger("mediaserver.pull")

SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https")


@dataclass(frozen=True, slots=True)
class PullSettings:
    rtsp_transport: str = "tcp"
    timeout: float = 5.0
    reconnect_min: float = 1.0
    reconnect_max: float = 30.0
    allow_loopback: bool = False


class RefusedAddress(ValueError):
    """A source whose host resolves to an address a camera URL may not reach (SSRF)."""


def check_addresses(host: str, allow_loopback: bool) -> None:
    """Refuse hosts that resolve to link-local (cloud metadata), unspecified or multicast addresses, and to
    loopback unless allowed: a camera URL set through the API must not reach the server's own services."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise RefusedAddress(f"cannot resolve the source's host: {exc.strerror or exc}") from exc
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address.is_link_local or address.is_unspecified or address.is_multicast:
            raise RefusedAddress("the source's host is a link-local, unspecified or multicast address")
        if address.is_loopback and not allow_loopback:
            raise RefusedAddress("the source's host is a loopback address (pull.allow_loopback is off)")


class PulledPublisher:
    """What the hub holds as the stream's publisher while a pulled session is up."""

    protocol = "pull"

    def __init__(self, source: PullSource) -> None:
        self._source = source
        self.peer = source.shown

    def stop(self, reason: str) -> None:
        """Hub request (idle timeout, kicked): end this session; the source opens a new one after its back-off."""
        log.info("event=pull_session_stopped stream=%s url=%s reason=%s", self._source.key, self.peer, reason)
        self._source.restart()


class PullSource:
    def __init__(
        self,
        hub: Hub,
        app: str,
        name: str,
        url: str,
        settings: PullSettings,
        on_state: Callable[[PullSource], None] | None = None,
    ) -> None:
        if urlsplit(url).scheme not in SCHEMES:
            raise ValueError(f"a pulled source must be one of {', '.join(SCHEMES)}: {shown_url(url)}")
        self.hub = hub
        self.app = app
        self.name = name
        self._url = url
        self.shown = shown_url(url)
        self.settings = settings
        self.state = "connecting"
        self.last_error = ""
        # Since when (monotonic) it has been started but not online: None while online or stopped.
        self.failing_since: float | None = None
        self.sessions = 0
        self.packets = 0
        self._on_state = on_state
        self._stream: Stream | None = None
        self._stopping = threading.Event()
        self._restart = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def key(self) -> str:
        return f"{self.app}/{self.name}"

    def same_url(self, url: str) -> bool:
        return url == self._url

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        """Start pulling (again, after a stop: on-demand sources stop when idle)."""
        self._stopping.clear()
        self._restart.clear()
        self.state = "connecting"
        self.failing_since = time.monotonic()
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=f"pull-{self.name}"[:15], daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stopping.set()
        self.failing_since = None
        thread, self._thread = self._thread, None
        if thread is not None:
            # The demuxer notices within its read timeout.
            await asyncio.get_running_loop().run_in_executor(None, thread.join, self.settings.timeout + 2)
        self._end_stream("stopped")

    def restart(self) -> None:
        self._restart.set()

    # ----- the loop's side ----------------------------------------------------------------------------------

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
                self._loop.call_soon_threadsafe(callback, *args)

    def _set_state(self, state: str, error: str = "") -> None:
        self.state = state
        if state == "online":
            self.failing_since = None
        elif self.failing_since is None and self.running:
            self.failing_since = time.monotonic()
        if error:
            self.last_error = error
        if self._on_state is not None:
            self._on_state(self)

    def _begin_stream(self) -> None:
        if self._stream is not None:
            return
        try:
            publisher = PulledPublisher(self)
            self._stream = self.hub.publish(self.app, self.name, publisher)
        except StreamTaken:
            self._set_state("error", "the stream name is already being published")
            self.restart()
            return
        self._set_state("online")
        log.info("event=pull_online stream=%s url=%s session=%d", self.key, self.shown, self.sessions)

    def _deliver(self, packets: list[Packet]) -> None:
        stream = self._stream
        if stream is None or stream.ended:
            return
        for packet in packets:
            stream.push(packet)

    def _end_stream(self, why: str) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            self.hub.unpublish(stream)
            log.info("event=pull_offline stream=%s url=%s reason=%s", self.key, self.shown, why)

    def _session_ended(self, error: str) -> None:
        self._end_stream(error or "ended")
        if not self._stopping.is_set():
            self._set_state("error" if error else "offline", error)

    # ----- the thread ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            self._restart.clear()
            self.sessions += 1
            started = time.monotonic()
            error = self._session()
            self._post(self._session_ended, error)
            if self._stopping.is_set():
                return
            if time.monotonic() - started > 2 * self.settings.reconnect_max:
                attempt = 0  # it ran for a good while: start the back-off over
            delay = min(self.settings.reconnect_max, self.settings.reconnect_min * 2**attempt)
            attempt += 1
            self._stopping.wait(delay * random.uniform(0.5, 1.0))

    def _options(self) -> dict[str, str]:
        # FFmpeg 8: `timeout` (microseconds) bounds every socket read and the connect; `stimeout` is gone.
        micros = str(int(self.settings.timeout * 1_000_000))
        scheme = urlsplit(self._url).scheme
        if scheme in ("rtsp", "rtsps"):
            return {"rtsp_transport": self.settings.rtsp_transport, "timeout": micros}
        if scheme in ("rtmp", "rtmps"):
            return {"rw_timeout": micros}
        return {"rw_timeout": micros}

    def _session(self) -> str:
        """One session from open to end; the error that ended it ("" when the source ended cleanly)."""
        try:
            check_addresses(urlsplit(self._url).hostname or "", self.settings.allow_loopback)
            # FFmpeg's own I/O timeouts (`_options`) bound every read; PyAV's `timeout=` would add an interrupt
            # callback that takes the GIL at every wait inside FFmpeg (measured: +55 % CPU per source).
            container: Any = av.open(self._url, "r", options=self._options())
        except (av.FFmpegError, OSError, RefusedAddress) as exc:
            return self._describe(exc)
        try:
            video = next((s for s in container.streams.video if s.codec_context.name in VIDEO_CODECS), None)
            audio = next(
                (s for s in container.streams.audio if s.codec_context.name in (*AUDIO_CODECS, *G711_CODECS)), None
            )
            if video is None and audio is None:
                raise UnsupportedSource("no H.264 video and no AAC or G.711 audio in the source")
            converter = SourceConverter()
            transcoder: G711ToAac | None = None
            if video is not None:
                converter.video_config = avc_config_from_extradata(bytes(video.codec_context.extradata or b""))
            if audio is not None and audio.codec_context.name in G711_CODECS:
                transcoder = G711ToAac(audio.codec_context.name, audio.codec_context.sample_rate)
                converter.audio_config = transcoder.config
                log.info("event=pull_audio_transcode stream=%s from=%s to=aac", self.key, audio.codec_context.name)
            elif audio is not None:
                converter.audio_config = bytes(audio.codec_context.extradata or b"") or None
            self._post(self._begin_stream)
            wanted = [s for s in (video, audio) if s is not None]
            for packet in container.demux(*wanted):
                if self._stopping.is_set() or self._restart.is_set():
                    return ""
                if packet.dts is None or not packet.size or packet.time_base is None:
                    continue
                base: Fraction = packet.time_base
                dts_ms = round(packet.dts * base * 1000)
                if video is not None and packet.stream.index == video.index:
                    pts_ms = round((packet.pts if packet.pts is not None else packet.dts) * base * 1000)
                    out = converter.video(bytes(packet), dts_ms, pts_ms, packet.is_keyframe)
                elif transcoder is not None:
                    out = [
                        p
                        for frame, ms in transcoder.transcode(bytes(packet), dts_ms)
                        for p in converter.audio(frame, ms)
                    ]
                else:
                    out = converter.audio(bytes(packet), dts_ms)
                if out:
                    self.packets += 1
                    self._post(self._deliver, out)
            return ""
        except (av.FFmpegError, OSError, UnsupportedSource) as exc:
            return self._describe(exc)
        finally:
            with contextlib.suppress(Exception):
                container.close()

    def _describe(self, exc: BaseException) -> str:
        # FFmpeg's messages may quote the URL it was given: never let the credentials through.
        text = str(exc).replace(self._url, self.shown)
        parts = urlsplit(self._url)
        for secret in (parts.password, parts.username):
            if secret:
                text = text.replace(secret, "***")
        log.warning("event=pull_failed stream=%s url=%s error=%s", self.key, self.shown, text[:300])
        return text[:300]
