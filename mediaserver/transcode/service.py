"""The ABR ladders: one worker process per source stream, its rungs published into the hub as streams of their
own (`live/cam_720p`), so RTMP, HLS and WebRTC serve them unchanged.

A ladder starts when a player asks for one of its rungs (the hub's demand seam: `hub.find("live", "cam_720p")`)
or for the stream's master playlist, and stops `idle` seconds after the last of them, unless `always_on`. The
server feeds the worker the source's video over stdin through a bounded queue (on overflow it skips to the next
keyframe and counts the drop), turns what comes back into hub packets, and passes the source's audio into every
rung as it is. A worker that dies is restarted (with back-off) while the ladder is wanted; a source that ends
ends its rungs.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fnmatch
import logging
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from mediaserver.auth import AllowAll, Denied
from mediaserver.background import BackgroundTask
from mediaserver.codecs import CodecError
from mediaserver.codecs.strings import codec_string
from mediaserver.config import TranscodeConfig
from mediaserver.events import StreamEvent, StreamEventKind
from mediaserver.formats.flv import avc_frame, avc_sequence_header, parse_audio, parse_video
from mediaserver.http.access import PlayAccess
from mediaserver.http.errors import error_response
from mediaserver.hub import DropCounter, Hub, PacketQueue, Stream, StreamTaken
from mediaserver.media import Codec, Packet, TrackKind
from mediaserver.transcode import framing
from mediaserver.transcode.framing import FramingError, Kind, Message
from mediaserver.transcode.ladder import Rung, parse_ladder, rung_stream, select_rungs, split_rung_stream
from mediaserver.transcode.master import Variant, render_master

log = logging.getLogger("mediaserver.transcode")

PROTOCOL = "transcode"
# Hub subscribers that are the server's own, not players: they never keep a ladder running.
# Workers run below the server's priority: on a busy machine ingest and fan-out come first.
WORKER_NICE = 5
# Audio packets held per rung while its video is in the worker (about 20 s of AAC at 48 kHz).
AUDIO_BACKLOG = 1000
RESTART_MIN, RESTART_MAX = 0.5, 10.0
# A worker that ran this long before dying starts its back-off over.
STABLE_SECONDS = 30.0
# Assumed audio share of a rung's BANDWIDTH while the rung has no measured bitrate yet.
AUDIO_ALLOWANCE = 128_000
PLAYLIST_TYPE = "application/vnd.apple.mpegurl"


class RungPublisher:
    """What the hub holds as a rung stream's publisher: the ladder."""

    protocol = PROTOCOL

    def __init__(self, ladder: Ladder) -> None:
        self._ladder = ladder
        self.peer = f"transcode:{ladder.key}"

    def stop(self, reason: str) -> None:
        """Hub request (idle timeout, kicked by an operator): the whole ladder stops."""
        self._ladder.request_stop(reason)


@dataclass(slots=True)
class RungState:
    rung: Rung
    stream: Stream | None = None
    config: bytes = b""
    # Source audio not yet pushed: it follows the rung's video, which the worker returns a little later.
    audio: collections.deque[Packet] = field(default_factory=lambda: collections.deque(maxlen=AUDIO_BACKLOG))
    video_started: bool = False
    taken: bool = False


class Ladder:
    """One source stream's rungs and the worker process that makes them; a subscriber of the source."""

    protocol = PROTOCOL

    def __init__(self, service: TranscodeService, source: Stream) -> None:
        self.service = service
        self.source = source
        self.app, self.name = source.app, source.name
        self.rungs: list[Rung] | None = None  # chosen once the source's picture size is known
        self.states: list[RungState] = []
        self.process: asyncio.subprocess.Process | None = None
        self.queue: PacketQueue | None = None
        self.stopping = False
        self.started_at = time.monotonic()
        self.last_wanted = self.started_at
        self._sized_for = (0, 0)
        self._resized = False
        self._need_keyframe = True
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def key(self) -> str:
        return f"{self.app}/{self.name}"

    def rung_keys(self) -> list[str]:
        return [f"{self.app}/{rung_stream(self.name, r.name)}" for r in self.service.ladder]

    def start(self) -> None:
        self.source.subscribe(self)
        self._task = asyncio.get_running_loop().create_task(self._run())

    def request_stop(self, reason: str) -> None:
        if not self.stopping:
            self.service.spawn(self.service.stop_ladder(self, reason))

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, ready: Callable[[], bool], timeout: float) -> bool:
        """Wait until `ready()` (checked at every change of the ladder), the ladder stops, or `timeout`."""
        deadline = time.monotonic() + timeout
        while not ready():
            remaining = deadline - time.monotonic()
            if self.stopping or remaining <= 0:
                return False
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)
        return True

    # ----- the source's packets (a hub subscriber: never blocks) ------------------------------------------

    def on_packet(self, packet: Packet) -> None:
        if packet.kind is TrackKind.VIDEO:
            if packet.is_config:
                self._notify()  # a waiting supervisor learns the picture size
                if self.rungs is not None and self._size() != self._sized_for and self.process is not None:
                    log.info("event=transcode_source_resized stream=%s size=%dx%d", self.key, *self._size())
                    self._resized = True
                    with contextlib.suppress(ProcessLookupError):
                        self.process.terminate()
            if self.queue is not None and packet.codec is Codec.H264:
                self._queue_video(self.queue, packet)
        elif packet.kind is TrackKind.AUDIO:
            for state in self.states:
                state.audio.append(packet)

    def _queue_video(self, queue: PacketQueue, packet: Packet) -> None:
        if self._need_keyframe and not packet.is_config:
            if not packet.keyframe:
                return  # the worker's decoder starts on a keyframe
            self._need_keyframe = False
        queue.put(packet)

    def on_stream_end(self) -> None:
        self.request_stop("source_ended")

    def _size(self) -> tuple[int, int]:
        return self.source.video.width, self.source.video.height

    # ----- the worker ------------------------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while not self.stopping:
            if not await self.wait_for(lambda: self.source.video_config is not None and self._size()[1] > 0, 3600):
                return
            if self.source.video.codec is not Codec.H264:
                log.warning("event=transcode_unsupported stream=%s codec=%s", self.key, self.source.video.codec.value)
                self.rungs = []
                self._notify()
                return
            self._sized_for = self._size()
            self.rungs = select_rungs(self.service.ladder, *self._sized_for)
            self.states = [RungState(rung) for rung in self.rungs]
            self._notify()
            if not self.rungs:
                log.info("event=transcode_no_rungs stream=%s size=%dx%d", self.key, *self._sized_for)
                return
            started = time.monotonic()
            code = await self._session()
            self._end_rungs()
            if self.stopping:
                return
            if self._resized:
                self._resized, attempt = False, 0
                continue
            self.service.restarts += 1
            if time.monotonic() - started > STABLE_SECONDS:
                attempt = 0
            delay = min(RESTART_MAX, RESTART_MIN * 2**attempt)
            attempt += 1
            log.warning("event=transcode_worker_died stream=%s code=%s restart_in=%.1f", self.key, code, delay)
            await asyncio.sleep(delay)

    async def _session(self) -> int | None:
        """One worker process from start to exit; its exit code (None: it could not be started)."""
        assert self.rungs is not None
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "mediaserver.transcode.worker",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                # Its own session: a Ctrl-C meant for the server does not kill it mid-frame; the server stops it.
                start_new_session=True,
            )
        except OSError as exc:
            log.error("event=transcode_worker_failed stream=%s error=%s", self.key, exc)
            return None
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None
        self.process = process
        log.info(
            "event=transcode_worker_started stream=%s pid=%d rungs=%s",
            self.key,
            process.pid,
            ",".join(r.spec() for r in self.rungs),
        )
        config = self.service.config
        process.stdin.write(
            framing.setup(
                {
                    "rungs": [
                        {"name": r.name, "width": r.width, "height": r.height, "bitrate": r.bitrate} for r in self.rungs
                    ],
                    "preset": config.preset,
                    "threads": config.threads,
                    "nice": WORKER_NICE,
                    "fps": self.source.fps or self.source.meta_fps,
                }
            )
        )
        queue = self._seeded_queue()
        self.queue = queue
        tasks = [
            asyncio.create_task(self._feed(process.stdin, queue)),
            asyncio.create_task(self._read(process, process.stdout)),
            asyncio.create_task(self._relay_log(process.pid, process.stderr)),
        ]
        try:
            code = await process.wait()
            # What the worker wrote before it exited is still worth publishing.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*tasks[1:], return_exceptions=True), 2.0)
            return code
        finally:
            self.queue = None
            queue.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if process.returncode is None:
                await _terminate(process)
            self.process = None
            log.info(
                "event=transcode_worker_exited stream=%s pid=%d code=%s", self.key, process.pid, process.returncode
            )

    def _seeded_queue(self) -> PacketQueue:
        """A queue that starts with the source's configuration and current keyframe group, so that the rungs
        come up at once instead of at the next keyframe; the source's audio of that group goes to the rungs."""
        queue = PacketQueue(self.service.config.queue_packets, self.service.drops, "transcode_queue_full")
        self._need_keyframe = True
        if self.source.video_config is not None:
            queue.put(self.source.video_config)
        for packet in self.source.gop:
            if packet.kind is TrackKind.VIDEO:
                self._queue_video(queue, packet)
            elif packet.kind is TrackKind.AUDIO:
                for state in self.states:
                    state.audio.append(packet)
        return queue

    async def _feed(self, stdin: asyncio.StreamWriter, queue: PacketQueue) -> None:
        try:
            while (packet := await queue.get()) is not None:
                data = packet.data
                if packet.is_config:
                    stdin.write(framing.header(Kind.CONFIG, len(data)))
                else:
                    stdin.write(framing.header(Kind.VIDEO, len(data), 0, packet.pts, packet.dts, packet.keyframe))
                stdin.write(data)
                await stdin.drain()  # a slow worker holds packets in the queue, where overflow is handled
        except (ConnectionError, FramingError) as exc:
            log.info("event=transcode_feed_closed stream=%s error=%s", self.key, exc)
        finally:
            with contextlib.suppress(Exception):
                stdin.close()

    async def _read(self, process: asyncio.subprocess.Process, stdout: asyncio.StreamReader) -> None:
        try:
            while (message := await framing.read_message(stdout)) is not None:
                self._output(message)
        except (FramingError, CodecError) as exc:
            log.error("event=transcode_bad_output stream=%s pid=%d error=%s", self.key, process.pid, exc)
            with contextlib.suppress(ProcessLookupError):
                process.kill()

    async def _relay_log(self, pid: int, stderr: asyncio.StreamReader) -> None:
        """The worker's own key=value lines (anything else, a traceback, quoted), with the stream and pid."""
        while True:
            try:
                line = await stderr.readline()
            except ValueError:  # a line over the reader's limit: skip it, go on with the next
                continue
            if not line:
                return
            text = line.decode(errors="replace").strip()[:500]
            if not text:
                continue
            if not text.startswith("event="):
                text = f"event=transcode_worker_output line={text!r}"
            event = text.split(" ", 1)[0]
            level = logging.WARNING if "failed" in event or "error" in event or "output" in event else logging.INFO
            log.log(level, "%s stream=%s pid=%d", text, self.key, pid)

    # ----- the worker's output ---------------------------------------------------------------------------

    def _output(self, message: Message) -> None:
        if self.stopping:
            return
        if message.rung >= len(self.states):
            raise FramingError(f"output for rung {message.rung}, which the worker was not given")
        state = self.states[message.rung]
        if message.kind is Kind.CONFIG:
            self._rung_config(state, message.payload, message.dts)
        elif message.kind is Kind.VIDEO and state.stream is not None:
            packet = parse_video(avc_frame(message.payload, message.keyframe, message.pts - message.dts), message.dts)
            if packet is None:
                return
            self._push_audio(state, packet.dts)
            state.stream.push(packet)
            self.service.frames[state.rung.name] += 1

    def _rung_config(self, state: RungState, avcc: bytes, dts: int) -> None:
        if avcc == state.config or state.taken:
            return
        state.config = avcc
        header = parse_video(avc_sequence_header(avcc), dts)
        if state.stream is None:
            name = rung_stream(self.name, state.rung.name)
            try:
                state.stream = self.service.hub.publish(self.app, name, RungPublisher(self))
            except StreamTaken:
                state.taken = True
                log.error("event=transcode_rung_taken stream=%s/%s", self.app, name)
                return
            log.info(
                "event=transcode_rung_started stream=%s rung=%s size=%dx%d bitrate=%d",
                state.stream.key,
                state.rung.name,
                state.rung.width,
                state.rung.height,
                state.rung.bitrate,
            )
            # The source's audio goes on as it is; its onMetaData (the source's size) is not for the rung.
            audio_config = self.source.audio_config
            if audio_config is not None:
                packet = parse_audio(bytes(audio_config.flv), dts)
                if packet is not None:
                    state.stream.push(packet)
        if header is not None:
            state.stream.push(header)
        self._notify()

    def _push_audio(self, state: RungState, dts: int) -> None:
        """Push the audio up to the rung's video time, in order; audio from before its first picture is dropped."""
        assert state.stream is not None
        pending = state.audio
        if not state.video_started:
            state.video_started = True
            while pending and pending[0].dts < dts and not pending[0].is_config:
                pending.popleft()
        while pending and pending[0].dts <= dts:
            state.stream.push(pending.popleft())

    def _end_rungs(self) -> None:
        for state in self.states:
            if state.stream is not None:
                self.service.hub.unpublish(state.stream)
                log.info("event=transcode_rung_stopped stream=%s", state.stream.key)
                state.stream = None
            state.config = b""
            state.video_started = False
            state.audio.clear()
        self._notify()

    async def stop(self) -> None:
        self.stopping = True
        self.source.unsubscribe(self)
        # The rungs go at once (a restarted source may bring a new ladder at any moment); the process after.
        self._end_rungs()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._end_rungs()

    def live_rungs(self) -> list[RungState]:
        return [s for s in self.states if s.stream is not None and s.stream.video.width]


async def _terminate(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        await asyncio.wait_for(process.wait(), 3.0)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


class TranscodeService:
    def __init__(
        self,
        hub: Hub,
        config: TranscodeConfig,
        registry: CollectorRegistry,
        play_access: PlayAccess | None = None,
        viewers: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self.hub = hub
        self.config = config
        self.ladder = parse_ladder(config.ladder)
        self.rung_names = tuple(r.name for r in self.ladder)
        self.play_access = play_access or PlayAccess(AllowAll(), registry)
        # Viewers by stream key that are not hub subscribers (HLS players, counted by their requests).
        self._viewers = viewers
        self.ladders: dict[str, Ladder] = {}
        self.frames: dict[str, int] = collections.defaultdict(int)
        self.drops = DropCounter()
        self.restarts = 0
        self._running = False
        # Sources whose ladder ended with them while it had players: a quick comeback restarts it.
        self._ended_wanted: dict[str, float] = {}
        self._idle_check = BackgroundTask.every(1.0, self._stop_idle, "transcode_idle")
        # Stops requested from synchronous callbacks, held until done (the loop keeps only weak references).
        self._pending: set[asyncio.Task[None]] = set()
        hub.add_demand(self.demand)
        hub.listen(self._on_hub_event)
        registry.register(_TranscodeCollector(self))

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def matches(self, app: str, name: str) -> bool:
        key = f"{app}/{name}"
        return any(fnmatch.fnmatchcase(key, pattern) for pattern in self.config.streams)

    def start(self) -> None:
        self._running = True
        self._idle_check.start()
        if self.config.always_on:
            for stream in self.hub.list():
                self.ensure(stream)

    async def stop(self) -> None:
        self._running = False
        await self._idle_check.stop()
        for ladder in list(self.ladders.values()):
            await self.stop_ladder(ladder, "shutdown")
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    def ensure(self, source: Stream) -> Ladder | None:
        """The source's ladder, started if it is not running; None when the source may not have one."""
        if not self._running or source.ended or not self.matches(source.app, source.name):
            return None
        if source.publisher.protocol == PROTOCOL:
            return None  # never a ladder of a rung
        ladder = self.ladders.get(source.key)
        if ladder is not None and ladder.source is source and not ladder.stopping:
            return ladder
        if len(self.ladders) >= self.config.workers:
            log.warning(
                "event=transcode_refused stream=%s reason=workers_limit workers=%d", source.key, len(self.ladders)
            )
            return None
        ladder = Ladder(self, source)
        self.ladders[source.key] = ladder
        log.info("event=transcode_start stream=%s always_on=%s", source.key, self.config.always_on)
        ladder.start()
        return ladder

    async def stop_ladder(self, ladder: Ladder, reason: str) -> None:
        if ladder.stopping:
            return
        if self.ladders.get(ladder.key) is ladder:
            del self.ladders[ladder.key]
        if reason == "source_ended" and ladder.live_rungs():
            self._ended_wanted[ladder.key] = time.monotonic()
        log.info("event=transcode_stop stream=%s reason=%s", ladder.key, reason)
        await ladder.stop()

    async def demand(self, app: str, name: str) -> bool:
        """A player asked for `app/name`, which is not live: when it is a rung, start its ladder and wait."""
        split = split_rung_stream(name, self.rung_names)
        if split is None or not self._running:
            return False
        base, rung = split
        if not self.matches(app, base):
            return False
        # An on-demand pulled source is brought up first (the hub asks the pull service).
        source = self.hub.get(app, base) or await self.hub.find(app, base)
        if source is None:
            return False
        ladder = self.ensure(source)
        if ladder is None:
            return False
        ladder.last_wanted = time.monotonic()

        def ready() -> bool:
            if self.hub.get(app, name) is not None:
                return True
            return ladder.rungs is not None and rung not in [r.name for r in ladder.rungs]

        await ladder.wait_for(ready, self.config.wait)
        if self.hub.get(app, name) is None:
            log.info("event=transcode_demand_unmet stream=%s/%s", app, name)
            return False
        return True

    def _on_hub_event(self, event: StreamEvent) -> None:
        if event.kind is not StreamEventKind.STARTED or event.stream.derived:
            return
        ended = self._ended_wanted.pop(event.key, None)
        if self.config.always_on or (ended is not None and time.monotonic() - ended < self.config.idle):
            self.ensure(event.stream)

    async def _stop_idle(self) -> None:
        now = time.monotonic()
        for key, ended in list(self._ended_wanted.items()):
            if now - ended > self.config.idle:
                del self._ended_wanted[key]
        if self.config.always_on:
            return
        viewers = self._viewers() if self._viewers is not None else {}
        for ladder in list(self.ladders.values()):
            keys = ladder.rung_keys()
            if self._watched(ladder, keys, viewers):
                ladder.last_wanted = now
                continue
            last = max([ladder.last_wanted, *(self.hub.wanted.get(k, 0.0) for k in keys)])
            if now - last >= self.config.idle:
                await self.stop_ladder(ladder, "idle")

    @staticmethod
    def _watched(ladder: Ladder, keys: list[str], viewers: dict[str, int]) -> bool:
        if any(viewers.get(key) for key in keys):
            return True
        for state in ladder.states:
            stream = state.stream
            if stream is not None and stream.watched:
                return True
        return False

    def source_of(self, app: str, name: str) -> str | None:
        """The name of the stream `app/name` is a rung of (None: it is no rung), live or not."""
        split = split_rung_stream(name, self.rung_names)
        if split is None or not self.matches(app, split[0]):
            return None
        return split[0]

    def renditions(self, app: str, name: str) -> list[str]:
        """The other live renditions of the picture `app/name` shows (the original and its rungs, itself left
        out): the streams an LL-HLS media playlist names in its EXT-X-RENDITION-REPORT tags."""
        split = split_rung_stream(name, self.rung_names)
        base = split[0] if split is not None else name
        ladder = self.ladders.get(f"{app}/{base}")
        if ladder is None or ladder.stopping:
            return []
        names = [base, *(state.stream.name for state in ladder.live_rungs() if state.stream is not None)]
        return [n for n in names if n != name] if name in names else []

    # ----- the master playlist ---------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/hls/{app}/{name}/master.m3u8", self.handle_master)]

    def _error(self, status: int, code: str, message: str) -> web.Response:
        response = error_response(status, code, message)
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Cache-Control"] = "no-cache"
        return response

    async def handle_master(self, request: web.Request) -> web.Response:
        """The original and its rungs as one HLS master playlist; asking for it counts as demand for the ladder."""
        grant = await self.play_access.check(request, "hls")
        if isinstance(grant, Denied):
            return self._error(403, "forbidden", f"playback refused: {grant.reason}")
        source = await self.hub.find(grant.app, grant.name)
        if source is None:
            return self._error(404, "stream_not_found", "no live stream with that name")
        ladder = self.ensure(source)
        if ladder is not None:
            ladder.last_wanted = time.monotonic()
            # Wait (bounded) for the rungs, so that the playlist names their real codecs and they are live by the
            # time the player asks for them.
            await ladder.wait_for(
                lambda: ladder.rungs is not None and len(ladder.live_rungs()) == len(ladder.rungs), self.config.wait
            )
        # Credentials in the query go on to every child playlist (the play cookie is scoped to one stream's folder).
        query = {k: request.query[k] for k in ("key", "token") if k in request.query}
        suffix = f"?{urlencode(query)}" if query else ""
        variants = self._variants(source, ladder, suffix)
        if not variants:
            return self._error(404, "stream_not_ready", "the stream has no video configuration yet")
        return web.Response(
            text=render_master(variants),
            content_type=PLAYLIST_TYPE,
            charset="utf-8",
            headers={"Cache-Control": "no-cache", "Access-Control-Allow-Origin": "*"},
        )

    def _variants(self, source: Stream, ladder: Ladder | None, suffix: str) -> list[Variant]:
        try:
            audio = codec_string(source.audio) if source.audio.codec is Codec.AAC else ""
            video = codec_string(source.video)
        except CodecError:
            return []
        if not source.video.width:
            return []
        fps = source.fps or source.meta_fps
        bitrate = source.bitrate or (source.bytes_in * 8 / max(time.monotonic() - source.started_monotonic, 1.0))
        codecs = ",".join(c for c in (video, audio) if c)
        variants = [
            Variant(
                f"../{source.name}/index.m3u8{suffix}",
                max(int(bitrate * 1.1), 1),
                source.video.width,
                source.video.height,
                codecs,
                fps,
            )
        ]
        for state in ladder.live_rungs() if ladder is not None else []:
            assert state.stream is not None
            try:
                rung_video = codec_string(state.stream.video)
            except CodecError:
                continue
            measured = state.stream.bitrate
            estimate = state.rung.bitrate + (AUDIO_ALLOWANCE if audio else 0)
            variants.append(
                Variant(
                    f"../{state.stream.name}/index.m3u8{suffix}",
                    int(max(measured * 1.1, estimate)),
                    state.stream.video.width,
                    state.stream.video.height,
                    ",".join(c for c in (rung_video, audio) if c),
                    fps,
                )
            )
        return variants


class _TranscodeCollector(Collector):
    def __init__(self, service: TranscodeService) -> None:
        self._service = service

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        service = self._service
        workers = GaugeMetricFamily("mediaserver_transcode_workers", "Transcoding worker processes running")
        workers.add_metric(
            [],
            sum(
                1
                for ladder in service.ladders.values()
                if ladder.process is not None and ladder.process.returncode is None
            ),
        )
        yield workers
        frames = CounterMetricFamily(
            "mediaserver_transcode_frames", "Pictures encoded and published, by rung", labels=["rung"]
        )
        for rung in service.rung_names:
            frames.add_metric([rung], service.frames.get(rung, 0))
        yield frames
        dropped = CounterMetricFamily(
            "mediaserver_transcode_dropped", "Source packets a busy worker skipped (to the next keyframe)"
        )
        dropped.add_metric([], sum(service.drops.by_reason.values()))
        yield dropped
        restarts = CounterMetricFamily("mediaserver_transcode_restarts", "Worker processes restarted after dying")
        restarts.add_metric([], service.restarts)
        yield restarts
