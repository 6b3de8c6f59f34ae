"""HLS service: one segmenter per live stream, and the HTTP handlers that serve them from memory.

Thousands of viewers of one stream ask for the same few resources, so a request does little of its own: the
playlist comes ready from `responses.PlaylistCache` (rendered and compressed once per change), media goes out as
the buffers it is held in or from its spill file with sendfile (`responses.media_response`), counters are plain
integers the collector reports, and blocked LL-HLS reloads all wake on the one change they wait for.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import hdrs, web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from mediaserver.auth import AllowAll, Denied, StreamGrant
from mediaserver.background import BackgroundTask
from mediaserver.events import StreamEvent, StreamEventKind
from mediaserver.fragments import FragmentListener
from mediaserver.hls import playlist
from mediaserver.hls.responses import PlaylistCache, ServeStats, error_answer, media_head, media_response
from mediaserver.hls.segmenter import HlsSettings, HlsStream, Segment, SegmenterStats
from mediaserver.hls.spill import SpillWriter
from mediaserver.http.access import PlayAccess, play_cookie_header, set_play_cookie
from mediaserver.http.errors import error_response
from mediaserver.http.fastpath import FastAnswer, FastRequest
from mediaserver.hub import Hub, Stream
from mediaserver.vectored_io import Buffer

log = logging.getLogger("mediaserver.hls")

_FILE = re.compile(r"^(?:init-(\d{1,9})\.mp4|seg-(\d{1,19})\.m4s|part-(\d{1,19})-(\d{1,4})\.m4s)$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
# A viewer counts as watching while it made a request this recently.
_VIEWER_WINDOW = 30.0
_NOT_READY = error_answer("503 Service Unavailable", "not_ready", "the requested part did not arrive in time")
# The query parameters of a playlist the front answers: a blocking reload's, the play token (any other is aiohttp's).
_PLAYLIST_PARAMS = frozenset(("_HLS_msn", "_HLS_part", "_HLS_skip", "token"))


class HlsService:
    def __init__(
        self,
        hub: Hub,
        settings: HlsSettings,
        registry: CollectorRegistry,
        grace_seconds: float,
        play_access: PlayAccess | None = None,
    ) -> None:
        self.hub = hub
        self.play_access = play_access or PlayAccess(AllowAll(), registry)
        # Fragment listeners every stream's segmenter calls (the recorder): one muxing pass for all.
        self.fragment_listeners: list[FragmentListener] = []
        self.settings = settings
        self.grace_seconds = grace_seconds
        self.streams: dict[str, HlsStream] = {}
        self.stats = SegmenterStats()
        # One thread writes older segments out of memory for every stream.
        self.spill_writer = SpillWriter(settings.spill_dir) if settings.spill else None
        # Playlists rendered (and compressed) once per change of their stream, not per request.
        self.playlists = PlaylistCache()
        # The other renditions of a stream's picture (app, name) -> names: an ABR ladder's, set by the
        # composition root when there is one.
        self.renditions: Callable[[str, str], list[str]] | None = None
        # Whether a starting stream is segmented in this process (None: every one), and whether a stream not live
        # here is live in another worker; set by the composition root.
        self.segments: Callable[[Stream], bool] | None = None
        self.held_elsewhere: Callable[[str, str], bool] | None = None
        self._viewers: dict[tuple[str, str, str], float] = {}
        self._housekeeping = BackgroundTask.every(1.0, self._housekeep, "hls_housekeeping")
        # Counted as plain integers (the collector reports them): a labelled prometheus child costs a lookup and
        # a lock per increment, on every request.
        self.playlist_requests = {"yes": 0, "no": 0}
        self.bytes_served = {"playlist": 0, "init": 0, "segment": 0, "part": 0}
        self.serve_stats = ServeStats()
        blocked_wait = Histogram(
            "mediaserver_hls_blocking_wait_seconds",
            "How long blocking playlist and part requests waited",
            ["kind"],
            buckets=(0.01, 0.05, 0.1, 0.2, 0.35, 0.5, 1.0, 2.0, 4.0, 8.0),
            registry=registry,
        )
        self._playlist_wait = blocked_wait.labels("playlist")
        self._part_wait = blocked_wait.labels("part")
        self.request_errors = Counter(
            "mediaserver_hls_request_errors", "HLS requests refused", ["status"], registry=registry
        )
        registry.register(_HlsCollector(self))
        hub.listen(self._on_hub_event)

    # ----- lifecycle --------------------------------------------------------------------

    def _on_hub_event(self, event: StreamEvent) -> None:
        if event.kind is not StreamEventKind.STARTED:
            return
        stream = event.stream
        if self.segments is not None and not self.segments(stream):
            return
        hls = self.streams.get(stream.key)
        if hls is None:
            hls = HlsStream(
                stream.app, stream.name, self.settings, self.stats, self.fragment_listeners, self.spill_writer
            )
            self.streams[stream.key] = hls
        hls.attach(stream.video, stream.audio)
        stream.subscribe(hls)

    def start(self) -> None:
        self._housekeeping.start()

    async def stop(self) -> None:
        await self._housekeeping.stop()
        for hls in self.streams.values():
            hls.close()
        if self.spill_writer is not None:
            self.spill_writer.close()

    def _housekeep(self) -> None:
        now = time.monotonic()
        for key, hls in list(self.streams.items()):
            # A publisher that has not come back within HOLD-BACK (3 target durations, also the longest a
            # blocking request waits) ends the playlist; a reconnect before that continues it.
            reconnect_window = min(self.grace_seconds, 3 * playlist.target_duration(hls))
            if not hls.live and not hls.ended and now - hls.ended_at >= reconnect_window:
                hls.end()
                log.info("event=hls_stream_ended stream=%s", key)
            if hls.ended and now - hls.ended_at > self.grace_seconds:
                del self.streams[key]
                hls.close()
                self.playlists.forget(hls.app, hls.name)
                log.info("event=hls_stream_removed stream=%s", key)
        self._prune_viewers(now)

    def _prune_viewers(self, now: float) -> None:
        for viewer, seen in list(self._viewers.items()):
            if now - seen > _VIEWER_WINDOW:
                del self._viewers[viewer]

    def viewer_counts(self) -> dict[str, int]:
        self._prune_viewers(time.monotonic())
        counts: dict[str, int] = {}
        for key, _, _ in self._viewers:
            counts[key] = counts.get(key, 0) + 1
        return counts

    # ----- HTTP -------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/hls/{app}/{name}/index.m3u8", self.handle_playlist),
            web.get("/hls/{app}/{name}/{file}", self.handle_file),
            web.options("/hls/{app}/{name}/{file}", self.handle_options),
        ]

    async def _authorized(
        self, request: web.Request, credential: bool = False
    ) -> tuple[StreamGrant, HlsStream | None] | web.Response:
        """The grant for this request and the stream it names, or the refusal to send."""
        grant = await self.play_access.check(request, "hls", credential)
        if isinstance(grant, Denied):
            return self._error(403, "forbidden", f"playback refused: {grant.reason}")
        return grant, self.streams.get(f"{grant.app}/{grant.name}")

    def _error(self, status: int, code: str, message: str) -> web.Response:
        self.request_errors.labels(str(status)).inc()
        response = error_response(status, code, message)
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Cache-Control"] = "no-cache"
        return response

    async def handle_options(self, request: web.Request) -> web.Response:
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": "*",
                "Access-Control-Allow-Methods": "GET, OPTIONS",
                "Access-Control-Allow-Headers": "Range",
                "Access-Control-Max-Age": "86400",
            },
        )

    async def handle_playlist(self, request: web.Request) -> web.Response:
        authorized = await self._authorized(request, credential=True)
        if isinstance(authorized, web.Response):
            return authorized
        grant, stream = authorized
        # Every playlist request is a player asking (on-demand sources stay up while it reloads); a stream that
        # an on-demand source brings is started and waited for.
        # (A playlist kept after its publisher left is not live either: the source restarts and continues it.)
        if self.hub.get(grant.app, grant.name) is not None:
            self.hub.want(grant.app, grant.name)
        elif await self.hub.find(grant.app, grant.name) is not None:  # find marks the stream as wanted too
            stream = self.streams.get(f"{grant.app}/{grant.name}")
        if stream is None:
            return self._error(404, "stream_not_found", "no HLS stream with that name")
        msn = part = None
        skip = False
        # Plain reloads carry no query: no need to parse one.
        if request.query_string:
            query = request.query
            try:
                msn = _query_int(query.get("_HLS_msn"))
                part = _query_int(query.get("_HLS_part"))
            except ValueError:
                return self._error(400, "bad_request", "_HLS_msn and _HLS_part must be non-negative integers")
            skip_value = query.get("_HLS_skip")
            if skip_value not in (None, "YES", "v2"):
                return self._error(400, "bad_request", "_HLS_skip must be YES or v2")
            if part is not None and msn is None:
                return self._error(400, "bad_request", "_HLS_part requires _HLS_msn")
            skip = skip_value is not None
        now = time.monotonic()
        self._viewers[(stream.key, request.remote or "", request.headers.get(hdrs.USER_AGENT, ""))] = now
        if msn is None:
            self.playlist_requests["no"] += 1
            if not stream.segments:
                # A stream that has just gone live has no complete segment yet: answer once it has one rather
                # than with a playlist of parts only (hls.js counts only whole segments, takes that as
                # levelEmptyError and asks again only after its retry delay).
                timeout = 3 * playlist.target_duration(stream)
                while not stream.ended and not stream.segments:
                    remaining = now + timeout - time.monotonic()
                    if remaining <= 0 or not await stream.wait_change(remaining):
                        break
        else:
            self.playlist_requests["yes"] += 1
            if msn > stream.last_msn + 2:
                return self._error(400, "too_far_ahead", "the requested segment is too far in the future")
            if not stream.ended and not stream.has_reload(msn, part):
                timeout = 3 * playlist.target_duration(stream)
                # All the viewers waiting here wake on the same change and share one render of it.
                while not stream.ended and not stream.has_reload(msn, part):
                    remaining = now + timeout - time.monotonic()
                    if remaining <= 0 or not await stream.wait_change(remaining):
                        if not stream.has_reload(msn, part):
                            self._playlist_wait.observe(time.monotonic() - now)
                            return self._error(503, "not_ready", "the requested part did not arrive in time")
                        break
                self._playlist_wait.observe(time.monotonic() - now)
            else:
                self._playlist_wait.observe(0.0)
        variant = self.playlists.get(
            stream, self._renditions_of(stream), skip, "gzip" in request.headers.get(hdrs.ACCEPT_ENCODING, "")
        )
        self.bytes_served["playlist"] += len(variant.body)
        response = variant.response(msn is not None)
        if grant.credential is not None:
            set_play_cookie(request, response, grant)
        return response

    # ----- the HTTP front (`http.fastpath`): the same answers for the common requests, without aiohttp --------

    def answer(self, request: FastRequest) -> FastAnswer | asyncio.Future[Any] | None:
        """A plain reload of a live playlist, or an init segment, part or segment held now, for a play the
        authorizer grants without waiting; None for everything else (aiohttp's routes above answer it,
        errors and waits included)."""
        parts = request.path.split("/")
        if len(parts) != 5 or parts[1] != "hls" or parts[0]:
            return None
        file = parts[4]
        is_playlist = file == "index.m3u8"
        query: dict[str, str] = {}
        if request.query:
            # Only a playlist takes a query: its blocking-reload parameters and the play token of its URL.
            if not is_playlist:
                return None
            for pair in request.query.split("&"):
                name, _, value = pair.partition("=")
                if name not in _PLAYLIST_PARAMS or name in query:
                    return None
                query[name] = value
        grant = self.play_access.check_now(
            parts[2], parts[3], request.peer, query.pop("token", ""), request.play_cookie, is_playlist
        )
        if grant is None:
            # A camera the authorizer does not hold yet (the first viewer, or after a restart): its lookup is
            # waited for here, once, else the connection would stay with aiohttp.
            lookup = None if request.prepared else self.play_access.prepare(parts[2], parts[3])
            request.prepared = True
            return lookup
        live = self.hub.get(grant.app, grant.name)
        stream = self.streams.get(f"{grant.app}/{grant.name}")
        # Only streams held here: for one held by another worker, the connection goes there (or aiohttp forwards).
        if stream is None or (live is not None and live.is_copy):
            return None
        if live is None and self.held_elsewhere is not None and self.held_elsewhere(grant.app, grant.name):
            return None  # its publisher came back to another worker: the kept playlist is not the one to serve
        if live is None and is_playlist:
            # Between publishers (a camera reconnecting), or a source that starts on demand: the hub's demand
            # handlers are asked once, as aiohttp's route asks them; then the playlist kept meanwhile answers, as
            # there (its files are served from it all along). A connection left to aiohttp would stay there
            # after the camera is back.
            if not request.demanded:
                request.demanded = True
                return asyncio.ensure_future(self._demand(grant.app, grant.name))
            live = self.hub.get(grant.app, grant.name)
            if live is not None and live.is_copy:
                return None
        if is_playlist:
            return self._playlist_now(request, query, grant, stream)
        match = _FILE.match(file)
        if match is None:
            return None
        init_id, seg_msn, part_msn, part_index = match.groups()
        if init_id is not None:
            init = stream.inits.get(int(init_id))
            if init is None:
                return None
            self.bytes_served["init"] += len(init)
            return FastAnswer(media_head("init", len(init)), (init,), len(init))
        if seg_msn is not None:
            segment = stream.find_segment(int(seg_msn))
            if segment is None or not segment.complete:
                return None
            return self._media_now(stream, segment, 0, segment.size, "segment")
        msn, index = int(part_msn), int(part_index)
        segment = stream.find_segment(msn)
        if segment is None or index >= len(segment.parts):
            # The part the preload hint announced: wait for it as `_wait_part` does (aiohttp answers the rest).
            remaining = request.since + 3 * playlist.target_duration(stream) - asyncio.get_running_loop().time()
            if stream.ended or not stream.is_next_part(msn, index) or remaining <= 0:
                return None
            return stream.change_future(remaining)
        part = segment.parts[index]
        return self._media_now(stream, segment, part.offset, part.offset + part.size, "part")

    async def _demand(self, app: str, name: str) -> None:
        try:
            await self.hub.find(app, name)
        except Exception:  # a failing handler: the kept playlist still answers
            log.exception("event=hls_demand_failed stream=%s/%s", app, name)

    def _playlist_now(
        self, request: FastRequest, params: dict[str, str], grant: StreamGrant, stream: HlsStream
    ) -> FastAnswer | asyncio.Future[Any] | None:
        """`handle_playlist` for a live stream with a segment, plain or blocking reload (`params`: the query's
        blocking-reload parameters)."""
        msn = part = None
        skip = False
        if params:
            try:
                msn = _query_int(params.get("_HLS_msn"))
                part = _query_int(params.get("_HLS_part"))
            except ValueError:
                return None
            skip_value = params.get("_HLS_skip")
            if skip_value not in (None, "YES", "v2") or (part is not None and msn is None):
                return None
            skip = skip_value is not None
        if not stream.segments:
            return None  # aiohttp waits for the first segment
        if msn is not None:
            if msn > stream.last_msn + 2:
                return None
            if not stream.ended and not stream.has_reload(msn, part):
                waited = asyncio.get_running_loop().time() - request.since
                remaining = 3 * playlist.target_duration(stream) - waited
                if remaining > 0:
                    return stream.change_future(remaining)
                self._playlist_wait.observe(waited)
                self.request_errors.labels("503").inc()
                head, body = _NOT_READY
                return FastAnswer(head, (body,), len(body))
            self._playlist_wait.observe(asyncio.get_running_loop().time() - request.since)
        self.hub.want(grant.app, grant.name)
        self._viewers[(stream.key, request.peer, request.user_agent)] = time.monotonic()
        self.playlist_requests["no" if msn is None else "yes"] += 1
        variant = self.playlists.get(stream, self._renditions_of(stream), skip, "gzip" in request.accept_encoding)
        self.bytes_served["playlist"] += len(variant.body)
        head = variant.reload_head if msn is None else variant.blocking_head
        if grant.credential is not None:
            # Handed back as aiohttp's route does (scoped to the requested folder), first or renewed.
            _, _, app, name, _ = request.path.split("/")
            head += play_cookie_header(app, name, grant)
        return FastAnswer(head, (variant.body,), len(variant.body))

    def _media_now(
        self, stream: HlsStream, segment: Segment, first: int, last: int, kind: str
    ) -> FastAnswer | asyncio.Future[Any] | None:
        chunks = stream.read_now(segment, first, last)
        if chunks is None or isinstance(chunks, asyncio.Future):
            return chunks  # a read-back to wait for (its bytes are not looked at)
        size = last - first
        self.bytes_served[kind] += size
        spilled = segment.spilled
        if spilled is None:
            return FastAnswer(media_head(kind, size), chunks, size)
        return FastAnswer(media_head(kind, size), chunks, size, spilled, first, self._sent_from_file)

    def _sent_from_file(self, sent: int) -> None:
        self.serve_stats.sendfile_bytes += sent

    def _renditions_of(self, stream: HlsStream) -> list[HlsStream]:
        """The streams of the other renditions of `stream`'s picture that have a playlist here."""
        if self.renditions is None:
            return []
        others: list[HlsStream] = []
        for name in self.renditions(stream.app, stream.name):
            other = self.streams.get(f"{stream.app}/{name}")
            if other is not None:
                others.append(other)
        return others

    async def handle_file(self, request: web.Request) -> web.Response:
        authorized = await self._authorized(request)
        if isinstance(authorized, web.Response):
            return authorized
        stream = authorized[1]
        if stream is None:
            return self._error(404, "stream_not_found", "no HLS stream with that name")
        match = _FILE.match(request.match_info["file"])
        if match is None:
            return self._error(404, "not_found", "no such HLS resource")
        init_id, seg_msn, part_msn, part_index = match.groups()
        if init_id is not None:
            init = stream.inits.get(int(init_id))
            if init is None:
                return self._error(404, "not_found", "init segment not available")
            return self._media(request, init, "init")
        if seg_msn is not None:
            segment = stream.find_segment(int(seg_msn))
            if segment is None or not segment.complete:
                return self._error(404, "not_found", "segment not available")
            return await self._segment_media(request, stream, segment, 0, segment.size, "segment")
        msn, index = int(part_msn), int(part_index)
        found = await self._wait_part(stream, msn, index)
        if found is None:
            return self._error(404, "not_found", "part not available")
        segment, part = found, found.parts[index]
        return await self._segment_media(request, stream, segment, part.offset, part.offset + part.size, "part")

    async def _wait_part(self, stream: HlsStream, msn: int, index: int) -> Segment | None:
        """The segment holding a part, waiting for the part when it is the one announced by the preload hint."""
        segment = stream.find_segment(msn)
        if segment is not None and index < len(segment.parts):
            return segment
        started = time.monotonic()
        timeout = 3 * playlist.target_duration(stream)
        while True:
            if stream.ended or not stream.is_next_part(msn, index):
                return None
            remaining = started + timeout - time.monotonic()
            if remaining <= 0 or not await stream.wait_change(remaining):
                return None
            segment = stream.find_segment(msn)
            if segment is not None and index < len(segment.parts):
                self._part_wait.observe(time.monotonic() - started)
                return segment

    def _media(self, request: web.Request, data: Buffer, kind: str) -> web.Response:
        """A resource held as one buffer (init segments, parts of the open segment)."""
        total = len(data)
        if hdrs.RANGE not in request.headers:
            self.bytes_served[kind] += total
            return media_response(kind, (data,), 0, total, total)
        parsed = self._range(request, total)
        if isinstance(parsed, web.Response):
            return parsed
        start, end = parsed
        # A range is a view of the buffer, not a copy.
        body = data if (start, end) == (0, total) else memoryview(data)[start:end]
        self.bytes_served[kind] += end - start
        return media_response(kind, (body,), start, end, total)

    async def _segment_media(
        self, request: web.Request, stream: HlsStream, segment: Segment, first: int, last: int, kind: str
    ) -> web.Response:
        """Bytes [first, last) of a segment (the whole segment, or one of its parts), from memory or from where
        the segment was written out to."""
        total = last - first
        parsed = self._range(request, total)
        if isinstance(parsed, web.Response):
            return parsed
        start, end = parsed
        try:
            chunks = await stream.read(segment, first + start, first + end)
        except OSError as exc:
            log.warning("event=hls_read_failed stream=%s/%s msn=%d error=%s", stream.app, stream.name, segment.msn, exc)
            return self._error(500, "read_failed", "the segment could not be read")
        self.bytes_served[kind] += end - start
        # Written out (it may have left the window meanwhile): the file can send what the socket takes at once.
        spilled = segment.spilled
        if spilled is None:
            return media_response(kind, chunks, start, end, total)
        return media_response(kind, chunks, start, end, total, spilled, first + start, self.serve_stats)

    def _range(self, request: web.Request, total: int) -> tuple[int, int] | web.Response:
        """[start, end) to send: the whole resource, the Range asked for, or the 416 answer."""
        range_header = request.headers.get(hdrs.RANGE)
        if range_header is None:
            return 0, total
        parsed = _parse_range(range_header, total)
        if parsed is None:
            response = self._error(416, "range_not_satisfiable", "bad or unsatisfiable Range")
            response.headers["Content-Range"] = f"bytes */{total}"
            return response
        return parsed[0], parsed[1] + 1


def _query_int(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isdigit() or len(value) > 19:
        raise ValueError(value)
    return int(value)


def _parse_range(header: str, total: int) -> tuple[int, int] | None:
    match = _RANGE.match(header.strip())
    if match is None or total == 0:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        length = int(last)
        if length == 0:
            return None
        return max(total - length, 0), total - 1
    start = int(first)
    end = int(last) if last else total - 1
    if start >= total or end < start:
        return None
    return start, min(end, total - 1)


class _HlsCollector(Collector):
    def __init__(self, service: HlsService) -> None:
        self._service = service

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self._service.stats
        yield CounterMetricFamily("mediaserver_hls_segments", "HLS segments produced", value=stats.segments)
        yield CounterMetricFamily("mediaserver_hls_parts", "LL-HLS parts produced", value=stats.parts)
        yield CounterMetricFamily(
            "mediaserver_hls_fragment_errors", "Fragments dropped for bad media", value=stats.errors
        )
        yield CounterMetricFamily(
            "mediaserver_hls_fragment_build_seconds",
            "Time spent building fMP4 fragments",
            value=stats.fragment_seconds,
        )
        yield GaugeMetricFamily(
            "mediaserver_hls_fragment_build_max_seconds",
            "Longest single fragment build",
            value=stats.fragment_max_seconds,
        )
        streams = list(self._service.streams.values())
        yield GaugeMetricFamily("mediaserver_hls_streams", "Streams with an HLS playlist", value=len(streams))
        memory = GaugeMetricFamily("mediaserver_hls_memory_bytes", "Bytes held for HLS, per stream", labels=["stream"])
        for hls in streams:
            memory.add_metric([f"{hls.app}/{hls.name}"], hls.memory_bytes())
        yield memory
        spilled = GaugeMetricFamily(
            "mediaserver_hls_spilled_bytes",
            "Bytes of the HLS window written to temporary files instead of held in memory, per stream",
            labels=["stream"],
        )
        for hls in streams:
            spilled.add_metric([f"{hls.app}/{hls.name}"], hls.spilled_bytes())
        yield spilled
        writer = self._service.spill_writer
        yield CounterMetricFamily(
            "mediaserver_hls_spill_errors",
            "Segments that could not be written out of memory (kept in memory instead)",
            value=writer.errors if writer is not None else 0,
        )
        service = self._service
        requests = CounterMetricFamily("mediaserver_hls_playlist_requests", "Playlist requests", labels=["blocking"])
        for blocking, count in service.playlist_requests.items():
            requests.add_metric([blocking], count)
        yield requests
        sent = CounterMetricFamily("mediaserver_hls_sent_bytes", "HLS bytes served", labels=["kind"])
        for kind, count in service.bytes_served.items():
            sent.add_metric([kind], count)
        yield sent
        yield CounterMetricFamily(
            "mediaserver_hls_sendfile_bytes",
            "Media bytes sent from written-out segments' files with sendfile (no copy through the process)",
            value=service.serve_stats.sendfile_bytes,
        )
        yield CounterMetricFamily(
            "mediaserver_hls_playlist_renders",
            "Playlists rendered (once per change of a stream and variant, whatever the number of requests)",
            value=service.playlists.renders,
        )
        yield CounterMetricFamily(
            "mediaserver_hls_playlist_compressions",
            "Rendered playlists compressed with gzip (once per change and variant)",
            value=service.playlists.compressions,
        )
        viewers = GaugeMetricFamily("mediaserver_hls_viewers", "Distinct recent HLS clients", labels=["stream"])
        for key, count in self._service.viewer_counts().items():
            viewers.add_metric([key], count)
        yield viewers
