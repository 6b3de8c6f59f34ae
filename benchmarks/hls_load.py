"""HLS load benchmark: K RTMP publishers replaying the reference clip, M HLS viewers spread over them.

    python -m benchmarks.hls_load --target both --streams 50 --viewers 0          # ingest+HLS CPU vs nginx
    python -m benchmarks.hls_load --target ours --mode ll --streams 5 --viewers 30  # LL-HLS latency
    python -m benchmarks.hls_load --target ours --mode plain --streams 1 --viewers 1000

The tool starts the server under test (ours: `python -m mediaserver serve`; nginx: nginx-rtmp with
`hls on`, /work/shared/bench/nginx-rtmp-anchor.conf), drives it from this one process with the
publishers of `benchmarks.rtmp_load` (real-time pace, one timer for all) and with simulated HLS
viewers on one shared aiohttp session, measures over a window and stops everything it started, on
errors, Ctrl-C and SIGTERM too.

Viewers (viewer i watches stream i mod K):
  ll     blocking playlist reload for the next part (`_HLS_msn`/`_HLS_part`), then GET that part, as
         hls.js does at the live edge (ours only).
  plain  reload the playlist every TARGETDURATION/2 without blocking parameters and GET each new
         complete segment (ours: fMP4 `seg-N.m4s`; nginx: `/hls/<name>.m3u8` and its `.ts`).

Latency (ours only; nginx writes no PROGRAM-DATE-TIME): the time a viewer finished downloading a
part or segment minus the wall-clock time its media ends, i.e. PROGRAM-DATE-TIME of its segment
plus the DURATIONs of the parts up to and including it (or plus EXTINF for a segment). The server
stamps PROGRAM-DATE-TIME from its clock when the segment's first frame arrives, so this is
ingest-to-viewer latency on one machine's clock. Two more figures do not trust that stamp:
  e2e         download done minus when the publisher was due to send the media's last frame
              (the moof's tfdt + duration on the publisher's clip clock);
  ingest lag  probed after the window over every listed segment: PROGRAM-DATE-TIME minus when the
              publisher was due to send the segment's first frame (how far behind the server ingests).

Also measured over the window: requests/s and bytes/s of the viewers (playlists counted decoded),
failed requests by kind (non-2xx as http_<status>, exceptions by type; from the first viewer's
start to the window's end), viewers that got no media in the window, the server's CPU (process tree,
% of one core) and RSS, and for ours its worst event-loop lag from /metrics; this process's CPU and
how late its publishers send (`!` marks a saturated load generator). `--json` keeps everything.
Playlists are gzip'd when the server offers it (aiohttp sends Accept-Encoding: gzip, as browsers
do; `--no-gzip` turns that off). Parsed playlists are cached by body: viewers of one stream share
the parse.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import re
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import aiohttp

from benchmarks.rtmp_load import (
    APP,
    CLK_TCK,
    SATURATED_CPU_PCT,
    SATURATED_LAG_MS,
    EncodedClip,
    NginxServer,
    OurServer,
    Pacer,
    Publisher,
    Server,
    Window,
    cpu_ticks,
    http_get,
    log,
    machine_busy_ticks,
    percentile,
    raise_fd_limit,
    rss_bytes,
    run_interruptible,
    run_targets,
    write_report,
)

# A viewer waits this long after a failed request before it tries again (as a player backs off).
RETRY_DELAY = 0.25
# Kept from the start of each part or segment: enough for its moof's first traf (tfhd, tfdt).
HEAD_BYTES = 256


# --------------------------------------------------------------------------- playlists


@dataclass(slots=True)
class MediaPart:
    uri: str
    end: float  # seconds from the start of its segment to the end of this part


@dataclass(slots=True)
class MediaSegment:
    msn: int
    pdt: float | None = None  # PROGRAM-DATE-TIME, seconds since the epoch
    duration: float | None = None  # EXTINF; None while the segment is still in progress
    uri: str | None = None
    parts: list[MediaPart] = field(default_factory=list)


@dataclass(slots=True)
class MediaPlaylist:
    target: float
    first_msn: int
    segments: list[MediaSegment]
    map_uri: str | None
    ended: bool

    def find(self, msn: int) -> MediaSegment | None:
        index = msn - self.first_msn
        if 0 <= index < len(self.segments) and self.segments[index].msn == msn:
            return self.segments[index]
        for segment in self.segments:  # only if a tag we do not model broke the numbering
            if segment.msn == msn:
                return segment
        return None

    def live_edge(self) -> tuple[int, int]:
        """The part a player at the live edge asks for next: (msn, part index)."""
        if not self.segments:
            return self.first_msn, 0
        last = self.segments[-1]
        if last.duration is None:
            return last.msn, len(last.parts)
        return last.msn + 1, 0


_ATTR = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')


def _attributes(text: str) -> dict[str, str]:
    return {key: value.strip('"') for key, value in _ATTR.findall(text)}


def _epoch(value: str) -> float | None:
    try:
        return datetime.fromisoformat(value.strip()).timestamp()
    except ValueError:
        return None


def parse_playlist(text: str) -> MediaPlaylist:
    """The parts of a media playlist the viewers use (RFC 8216bis; not a validating parser)."""
    target = 0.0
    msn = 0
    segments: list[MediaSegment] = []
    map_uri: str | None = None
    ended = False
    current: MediaSegment | None = None
    part_end = 0.0
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if not line.startswith("#"):
            segment = current or MediaSegment(msn)
            segment.uri = line
            if segment.duration is None:
                segment.duration = 0.0
            segments.append(segment)
            msn = segment.msn + 1
            current = None
            part_end = 0.0
            continue
        tag, _, value = line.partition(":")
        if tag == "#EXT-X-PART":
            attributes = _attributes(value)
            if current is None:
                current = MediaSegment(msn)
            part_end += float(attributes.get("DURATION", "0"))
            current.parts.append(MediaPart(attributes.get("URI", ""), part_end))
        elif tag == "#EXTINF":
            if current is None:
                current = MediaSegment(msn)
            current.duration = float(value.split(",", 1)[0])
        elif tag == "#EXT-X-PROGRAM-DATE-TIME":
            if current is None:
                current = MediaSegment(msn)
            current.pdt = _epoch(value)
        elif tag == "#EXT-X-MEDIA-SEQUENCE":
            msn = int(value)
        elif tag == "#EXT-X-SKIP":
            msn += int(_attributes(value).get("SKIPPED-SEGMENTS", "0"))
        elif tag == "#EXT-X-TARGETDURATION":
            target = float(value)
        elif tag == "#EXT-X-MAP":
            map_uri = _attributes(value).get("URI")
        elif tag == "#EXT-X-ENDLIST":
            ended = True
    if current is not None and current.parts:
        segments.append(current)  # the segment in progress: parts only
    first = segments[0].msn if segments else msn
    return MediaPlaylist(target or 2.0, first, segments, map_uri, ended)


class PlaylistCache:
    """Parsed playlists by body: many viewers of one stream get the same text, parse it once.

    The parsed objects are shared and must not be changed.
    """

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._parsed: dict[str, MediaPlaylist] = {}

    def parse(self, text: str) -> MediaPlaylist:
        found = self._parsed.get(text)
        if found is None:
            if len(self._parsed) >= self._size:
                self._parsed.clear()
            found = self._parsed[text] = parse_playlist(text)
        return found


def init_timescale(init: bytes) -> int | None:
    """The timescale of the first track (`mdhd`) of an fMP4 init segment: the video track when there is one."""
    at = init.find(b"mdhd")
    if at < 4 or len(init) < at + 32:
        return None
    offset = at + 8 + (16 if init[at + 4] == 1 else 8)
    return int.from_bytes(init[offset : offset + 4], "big") or None


def first_decode_time(fragment: bytes) -> int | None:
    """baseMediaDecodeTime of the first `traf` of a moof (the video track's, in our server's parts)."""
    at = fragment.find(b"tfdt")
    if at < 4 or len(fragment) < at + 16:
        return None
    size = 8 if fragment[at + 4] == 1 else 4
    return int.from_bytes(fragment[at + 8 : at + 8 + size], "big")


def join_uri(base: str, uri: str) -> str:
    if "://" in uri:
        return uri
    if uri.startswith("/"):
        return base.split("/", 3)[0] + "//" + base.split("/", 3)[2] + uri
    return base + uri


# --------------------------------------------------------------------------- viewers


class Meter:
    """What all viewers share: the window flag and the samples taken inside it."""

    def __init__(self) -> None:
        self.active = False
        self.stopping = False
        self.latency_ms = array.array("f")  # download done - (PROGRAM-DATE-TIME + media end offset)
        self.e2e_ms = array.array("f")  # download done - when the publisher was due to send the media's end
        self.failures: Counter[str] = Counter()  # from the first viewer's start to the window's end
        self.failures_window: Counter[str] = Counter()
        self.resyncs = 0
        self.anomalies = 0
        self.cache = PlaylistCache()


class Viewer:
    def __init__(
        self,
        index: int,
        stream: int,
        url: str,
        mode: str,
        session: aiohttp.ClientSession,
        meter: Meter,
        headers: dict[str, str],
        publisher: Publisher,
        clock_offset: float,
    ) -> None:
        self.index = index
        self.stream = stream
        # The publisher's clip clock on the wall clock: media time T (s) was due to be sent at zero + T.
        self.media_zero = publisher.t0 + clock_offset
        self.timescale: int | None = None
        self.url = url
        self.base = url.rsplit("/", 1)[0] + "/"
        self.mode = mode
        self.session = session
        self.meter = meter
        self.headers = headers
        self.requests = 0
        self.bytes = 0
        self.failures = 0
        self.media = 0  # parts or segments downloaded
        self.first_error: str | None = None

    async def run(self) -> None:
        playlist = await self._first_playlist()
        if playlist.map_uri is not None:
            while (init := await self._media(join_uri(self.base, playlist.map_uri), keep=4096)) is None:
                await asyncio.sleep(RETRY_DELAY)
            self.timescale = init_timescale(init)
        if self.mode == "ll":
            await self._run_ll(playlist)
        else:
            await self._run_plain(playlist)

    async def _first_playlist(self) -> MediaPlaylist:
        while True:
            playlist = await self._playlist(self.url)
            if playlist is not None and playlist.segments:
                return playlist
            await asyncio.sleep(RETRY_DELAY)

    async def _run_ll(self, playlist: MediaPlaylist) -> None:
        msn, part = playlist.live_edge()
        while not playlist.ended:
            found = await self._playlist(f"{self.url}?_HLS_msn={msn}&_HLS_part={part}")
            if found is None:
                await asyncio.sleep(RETRY_DELAY)
                continue
            playlist = found
            segment = playlist.find(msn)
            if segment is None:
                if msn < playlist.first_msn:  # fell out of the window: back to the live edge
                    self.meter.resyncs += 1
                    msn, part = playlist.live_edge()
                else:  # the server answered before the part existed
                    self.meter.anomalies += 1
                    await asyncio.sleep(0.05)
                continue
            if part < len(segment.parts):
                media = segment.parts[part]
                head = await self._media(join_uri(self.base, media.uri), keep=HEAD_BYTES)
                if head is not None:
                    start = segment.parts[part - 1].end if part else 0.0
                    self._latency(segment.pdt, media.end, head, media.end - start)
                part += 1
            elif segment.duration is not None:
                if not segment.parts:  # complete, but its parts are no longer listed: behind the live edge
                    self.meter.resyncs += 1
                    msn, part = playlist.live_edge()
                else:
                    msn, part = msn + 1, 0
            else:
                self.meter.anomalies += 1
                await asyncio.sleep(0.05)

    async def _run_plain(self, playlist: MediaPlaylist) -> None:
        loop = asyncio.get_running_loop()
        complete = [s.msn for s in playlist.segments if s.duration is not None and s.uri]
        # Start with the newest complete segment, then take each new one.
        done = (complete[-1] if complete else playlist.first_msn) - 1
        while True:
            started = loop.time()
            for segment in playlist.segments:
                if segment.msn <= done or segment.duration is None or not segment.uri:
                    continue
                head = await self._media(join_uri(self.base, segment.uri), keep=HEAD_BYTES)
                if head is not None:
                    self._latency(segment.pdt, segment.duration, head, segment.duration)
                done = segment.msn
            if playlist.ended:
                return
            await asyncio.sleep(max(0.0, playlist.target / 2 - (loop.time() - started)))
            while (found := await self._playlist(self.url)) is None:
                await asyncio.sleep(RETRY_DELAY)
            playlist = found

    def _latency(self, pdt: float | None, end_offset: float, head: bytes, duration: float) -> None:
        """Samples for media just downloaded: `end_offset` is its end from the segment's start (PDT), `head`
        its first bytes (a moof, whose tfdt is its start on the publisher's clip clock), `duration` its length."""
        meter = self.meter
        if not meter.active:
            return
        now = time.time()
        if pdt is not None:
            meter.latency_ms.append((now - pdt - end_offset) * 1000)
        if self.timescale is not None:
            start = first_decode_time(head)
            if start is not None:
                meter.e2e_ms.append((now - self.media_zero - start / self.timescale - duration) * 1000)

    def _fail(self, kind: str, detail: str) -> None:
        meter = self.meter
        if meter.stopping:
            return
        self.failures += 1
        meter.failures[kind] += 1
        if meter.active:
            meter.failures_window[kind] += 1
        if self.first_error is None:
            self.first_error = f"{kind}: {detail}"[:300]

    async def _playlist(self, url: str) -> MediaPlaylist | None:
        self.requests += 1
        try:
            async with self.session.get(url, headers=self.headers) as response:
                body = await response.read()
                self.bytes += len(body)
                if response.status != 200:
                    self._fail(f"http_{response.status}", f"{url} {body[:120]!r}")
                    return None
        except Exception as exc:
            self._fail(_kind(exc), f"{url} {exc!r}")
            return None
        try:
            return self.meter.cache.parse(body.decode())
        except ValueError as exc:
            self._fail("bad_playlist", f"{url} {exc!r}")
            return None

    async def _media(self, url: str, keep: int = 0) -> bytes | None:
        """GET and discard the body but its first `keep` bytes, which it returns; None on failure."""
        self.requests += 1
        size = 0
        head = b""
        try:
            async with self.session.get(url, headers=self.headers) as response:
                async for chunk in response.content.iter_any():
                    if len(head) < keep:
                        head += chunk[: keep - len(head)]
                    size += len(chunk)
                self.bytes += size
                if response.status != 200:
                    self._fail(f"http_{response.status}", url)
                    return None
        except Exception as exc:
            self.bytes += size
            self._fail(_kind(exc), f"{url} {exc!r}")
            return None
        self.media += 1
        return head


def _kind(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    return type(exc).__name__


# --------------------------------------------------------------------------- one run


@dataclass
class HlsResult:
    target: str
    mode: str
    streams: int
    viewers: int
    window_s: float = 0.0
    server_cpu_pct: float = 0.0
    cpu_pct_per_stream: float = 0.0
    rss_mb: float = 0.0
    rss_idle_mb: float = 0.0
    server_processes: int = 0
    latency_samples: int = 0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_max_ms: float | None = None
    # From when the publisher was due to send the media's last frame (tfdt + duration on its clip clock)
    # to the download's end: also counts how late the server ingests, which PDT-based latency cannot see.
    e2e_samples: int = 0
    e2e_p50_ms: float | None = None
    e2e_p95_ms: float | None = None
    e2e_p99_ms: float | None = None
    e2e_max_ms: float | None = None
    # Ours, probed after the window over every listed segment: PROGRAM-DATE-TIME minus when the publisher
    # was due to send the segment's first frame, i.e. how far behind real time the server ingests.
    ingest_lag_samples: int = 0
    ingest_lag_p50_ms: float | None = None
    ingest_lag_p99_ms: float | None = None
    ingest_lag_max_ms: float | None = None
    server_loop_lag_max_ms: float | None = None  # ours: the worst event-loop oversleep in the window
    requests_per_s: float = 0.0
    bytes_per_s: float = 0.0
    out_mbps: float = 0.0
    in_mbps: float = 0.0
    failures: int = 0  # failed requests from the first viewer's start to the window's end
    failures_window: int = 0
    failures_by_kind: dict[str, int] = field(default_factory=dict)
    viewers_started: int = 0
    viewers_stalled: int = 0  # viewers that downloaded no media during the window
    resyncs: int = 0
    anomalies: int = 0
    publishers_connected_at_end: int = 0
    publisher_errors: int = 0
    hls_streams: int | None = None  # streams with an HLS playlist at the end
    hls_segments_in_window: int | None = None
    drops: int | None = None
    server_hls_errors: dict[str, int] = field(default_factory=dict)
    loadgen_cpu_pct: float = 0.0
    loadgen_saturated: bool = False
    send_lateness_p50_ms: float = 0.0
    send_lateness_p99_ms: float = 0.0
    other_cpu_pct: float = 0.0
    error_samples: list[str] = field(default_factory=list)
    server_log_problems: list[str] = field(default_factory=list)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def playlist_url(server: Server, stream: str) -> str:
    if isinstance(server, NginxServer):
        return f"http://127.0.0.1:{server.http_port}/hls/{stream}.m3u8"
    return f"http://127.0.0.1:{server.http_port}/hls/{APP}/{stream}/index.m3u8"


def _metric_values(text: str, name: str) -> dict[str, float]:
    """Samples of one metric family by their label text (\"\" when unlabelled)."""
    values: dict[str, float] = {}
    for match in re.finditer(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)$", text, re.M):
        values[match.group(1) or ""] = float(match.group(2))
    return values


class HlsCounters:
    """Segments produced and streams with a playlist, from the server's own books."""

    def __init__(self, server: Server, streams: int) -> None:
        self.server = server
        self.streams = streams

    def read(self) -> tuple[int, int, dict[str, int], float | None]:
        """(streams with a playlist, segments made, HLS request errors by status, worst loop lag since the last
        read in seconds)."""
        server = self.server
        if isinstance(server, NginxServer):
            hls = server.root / "hls"
            playlists = sum(1 for i in range(self.streams) if (hls / f"bench{i}.m3u8").exists())
            return playlists, server.hls_segments(), {}, None
        text = http_get(f"http://127.0.0.1:{server.http_port}/metrics")
        streams = int(sum(_metric_values(text, "mediaserver_hls_streams").values()))
        segments = int(sum(_metric_values(text, "mediaserver_hls_segments_total").values()))
        errors = {
            labels.split('"')[1] if '"' in labels else labels: int(value)
            for labels, value in _metric_values(text, "mediaserver_hls_request_errors_total").items()
        }
        lag = _metric_values(text, "mediaserver_event_loop_lag_max_seconds")
        return streams, segments, errors, (max(lag.values()) if lag else None)


async def _wait_playlists(server: Server, session: aiohttp.ClientSession, urls: list[str], timeout: float) -> int:
    """Wait until every stream's playlist lists a complete segment; how many did."""

    async def one(url: str) -> bool:
        deadline = time.monotonic() + timeout
        # nginx logs every 404: look for its playlist file first, then ask over HTTP.
        on_disk = server.root / "hls" / url.rsplit("/", 1)[1] if isinstance(server, NginxServer) else None
        while time.monotonic() < deadline:
            if on_disk is not None and not on_disk.exists():
                await asyncio.sleep(0.25)
                continue
            with contextlib.suppress(Exception):
                async with session.get(url) as response:
                    if response.status == 200 and any(
                        s.duration is not None for s in parse_playlist(await response.text()).segments
                    ):
                        return True
            await asyncio.sleep(0.25)
        return False

    return sum(await asyncio.gather(*(one(url) for url in urls)))


async def probe_ingest_lag(
    session: aiohttp.ClientSession, server: Server, publishers: list[Publisher], clock_offset: float
) -> list[float]:
    """Ours: for every segment listed now, PROGRAM-DATE-TIME minus when its publisher was due to send the segment's
    first frame (ms): the server's stamp is its clock when it ingested that frame."""
    semaphore = asyncio.Semaphore(16)
    lags: list[float] = []

    async def get(url: str, headers: dict[str, str] | None = None) -> bytes | None:
        async with semaphore:
            try:
                async with session.get(url, headers=headers) as response:
                    return await response.read() if response.status in (200, 206) else None
            except (aiohttp.ClientError, TimeoutError):
                return None

    async def one(publisher: Publisher) -> None:
        url = playlist_url(server, publisher.name)
        base = url.rsplit("/", 1)[0] + "/"
        text = await get(url)
        playlist = parse_playlist(text.decode()) if text else None
        if playlist is None or playlist.map_uri is None:
            return
        init = await get(join_uri(base, playlist.map_uri))
        timescale = init_timescale(init) if init else None
        if not timescale:
            return
        zero = publisher.t0 + clock_offset
        for segment in playlist.segments:
            if segment.uri is None or segment.pdt is None:
                continue
            head = await get(join_uri(base, segment.uri), {"Range": f"bytes=0-{HEAD_BYTES - 1}"})
            start = first_decode_time(head) if head else None
            if start is not None:
                lags.append((segment.pdt - zero - start / timescale) * 1000)

    await asyncio.gather(*(one(p) for p in publishers if p.live))
    return lags


async def _stop_viewers(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_target(target: str, args: argparse.Namespace, clip: EncodedClip) -> HlsResult:
    k, m = args.streams, args.viewers
    mode = args.mode if m else "none"
    result = HlsResult(target, mode, k, m)
    server: Server = OurServer(args.keep_temp) if target == "ours" else NginxServer(args.keep_temp)
    loop = asyncio.get_running_loop()
    publishers: list[Publisher] = []
    viewers: list[Viewer] = []
    tasks: list[asyncio.Task[None]] = []
    window = Window()
    pacer = Pacer(window)
    meter = Meter()
    pacer_task: asyncio.Task[None] | None = None
    session: aiohttp.ClientSession | None = None
    counters = HlsCounters(server, k)
    log(f"[{target}] starting the server (temp {server.root})")
    try:
        server.start()  # blocking on purpose: nothing else runs yet
        log(f"[{target}] server pid {server.pid}")
        clock_offset = time.time() - loop.time()  # wall clock minus the loop's (monotonic) clock
        result.rss_idle_mb = round(rss_bytes(server.pids()) / 1e6, 1)
        pacer_task = loop.create_task(pacer.run())
        log(f"[{target}] starting {k} publishers, {args.start_interval * 1000:.0f} ms apart")
        starts: list[asyncio.Task[bool]] = []
        for i in range(k):
            publisher = Publisher(i, clip)
            publishers.append(publisher)
            starts.append(loop.create_task(publisher.start("127.0.0.1", server.rtmp_port, pacer)))
            await asyncio.sleep(args.start_interval)
        live = sum(await asyncio.gather(*starts))
        log(f"[{target}] {live}/{k} publishers live")

        connector = aiohttp.TCPConnector(limit=max(m, 1), limit_per_host=0, force_close=False)
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=args.request_timeout),
        )
        headers = {} if args.gzip else {"Accept-Encoding": "identity"}
        if m:
            urls = [playlist_url(server, p.name) for p in publishers]
            ready = await _wait_playlists(server, session, urls, timeout=20.0)
            log(f"[{target}] {ready}/{k} playlists have a segment")
            spread = args.join_spread if args.join_spread is not None else max(2.0, m / 500)
            log(f"[{target}] starting {m} {args.mode} viewers over {spread:.1f} s")
            for j in range(m):
                stream = j % k
                viewer = Viewer(
                    j, stream, urls[stream], args.mode, session, meter, headers, publishers[stream], clock_offset
                )
                viewers.append(viewer)
                tasks.append(loop.create_task(viewer.run()))
                await asyncio.sleep(spread / m)
            result.viewers_started = len(tasks)
        log(f"[{target}] warm-up {args.warmup} s")
        await asyncio.sleep(args.warmup)

        log(f"[{target}] measuring for {args.duration} s")
        segments0: int | None = None
        with contextlib.suppress(OSError):
            _, segments0, _, _ = await asyncio.to_thread(counters.read)
        media0 = [v.media for v in viewers]
        requests0 = sum(v.requests for v in viewers)
        bytes0 = sum(v.bytes for v in viewers)
        sent0 = sum(p.client.bytes_sent for p in publishers)
        pids = server.pids()
        ticks0 = cpu_ticks(pids)
        cpu0 = _cpu_seconds()
        busy0 = machine_busy_ticks()
        t0 = loop.time()
        window.active = meter.active = True
        await asyncio.sleep(args.duration)
        window.active = meter.active = False
        elapsed = loop.time() - t0
        cpu1 = _cpu_seconds()
        pids = server.pids()
        ticks1 = cpu_ticks(pids)
        busy1 = machine_busy_ticks()
        rss = rss_bytes(pids)
        requests1 = sum(v.requests for v in viewers)
        bytes1 = sum(v.bytes for v in viewers)
        sent1 = sum(p.client.bytes_sent for p in publishers)
        meter.stopping = True  # what fails from here on is our own shutdown

        result.window_s = round(elapsed, 3)
        result.server_processes = len(pids)
        server_cpu = sum(t - ticks0.get(pid, 0) for pid, t in ticks1.items()) / CLK_TCK / elapsed * 100
        result.server_cpu_pct = round(server_cpu, 2)
        result.cpu_pct_per_stream = round(server_cpu / k, 4)
        result.rss_mb = round(rss / 1e6, 1)
        result.loadgen_cpu_pct = round((cpu1 - cpu0) / elapsed * 100, 1)
        machine = (busy1 - busy0) / CLK_TCK / elapsed * 100
        result.other_cpu_pct = round(max(0.0, machine - server_cpu - result.loadgen_cpu_pct), 1)
        result.requests_per_s = round((requests1 - requests0) / elapsed, 1)
        result.bytes_per_s = round((bytes1 - bytes0) / elapsed)
        result.out_mbps = round((bytes1 - bytes0) * 8 / elapsed / 1e6, 1)
        result.in_mbps = round((sent1 - sent0) * 8 / elapsed / 1e6, 1)
        latency = list(meter.latency_ms)
        result.latency_samples = len(latency)
        for name, pct in (("p50", 50.0), ("p95", 95.0), ("p99", 99.0), ("max", 100.0)):
            value = percentile(latency, pct)
            setattr(result, f"latency_{name}_ms", None if value is None else round(value, 1))
        e2e = list(meter.e2e_ms)
        result.e2e_samples = len(e2e)
        for name, pct in (("p50", 50.0), ("p95", 95.0), ("p99", 99.0), ("max", 100.0)):
            value = percentile(e2e, pct)
            setattr(result, f"e2e_{name}_ms", None if value is None else round(value, 1))
        result.failures = sum(meter.failures.values())
        result.failures_window = sum(meter.failures_window.values())
        result.failures_by_kind = dict(meter.failures)
        result.viewers_stalled = sum(1 for v, before in zip(viewers, media0, strict=True) if v.media == before)
        result.resyncs = meter.resyncs
        result.anomalies = meter.anomalies
        lateness = list(window.lateness_ms)
        result.send_lateness_p50_ms = round(percentile(lateness, 50) or 0.0, 1)
        result.send_lateness_p99_ms = round(percentile(lateness, 99) or 0.0, 1)
        result.loadgen_saturated = (
            result.loadgen_cpu_pct >= SATURATED_CPU_PCT or result.send_lateness_p99_ms >= SATURATED_LAG_MS
        )
        result.publishers_connected_at_end = sum(1 for p in publishers if p.live and not p.client.closed)
        result.publisher_errors = sum(1 for p in publishers if p.error is not None)
        result.error_samples = [f"publisher {p.index}: {p.error}" for p in publishers if p.error][:5] + [
            f"viewer {v.index}: {v.first_error}" for v in viewers if v.first_error
        ][:10]
        try:
            streams, segments1, errors, loop_lag = await asyncio.to_thread(counters.read)
            if loop_lag is not None:
                result.server_loop_lag_max_ms = round(loop_lag * 1000, 1)
            result.hls_streams = streams
            result.server_hls_errors = errors
            if segments0 is not None and not isinstance(server, NginxServer):
                result.hls_segments_in_window = segments1 - segments0
            result.drops, _ = await asyncio.to_thread(server.drops)
        except OSError as exc:
            log(f"[{target}] could not read the server's counters: {exc}")
        if not isinstance(server, NginxServer):
            await _stop_viewers(tasks)  # they would hold the pool's connections
            lags = await probe_ingest_lag(session, server, publishers, clock_offset)
            result.ingest_lag_samples = len(lags)
            for name, pct in (("p50", 50.0), ("p99", 99.0), ("max", 100.0)):
                value = percentile(lags, pct)
                setattr(result, f"ingest_lag_{name}_ms", None if value is None else round(value, 1))
        # nginx cannot raise its workers' fd limit to worker_rlimit_nofile (65535) past our hard limit; it runs
        # with the limit it inherits from us (raise_fd_limit above), which is enough here.
        result.server_log_problems = [line for line in server.log_problems() if "setrlimit(RLIMIT_NOFILE" not in line]
        log(
            f"[{target}] done: server CPU {result.server_cpu_pct}%, generator CPU {result.loadgen_cpu_pct}%, "
            f"{result.failures} failed requests"
        )
        return result
    finally:
        meter.stopping = True
        await _stop_viewers(tasks)
        if session is not None:
            await session.close()
        pacer.stop()
        for publisher in publishers:
            publisher.stopping = True
            publisher.client.abort()
        if pacer_task is not None:
            pacer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pacer_task
        await asyncio.sleep(0.2)
        log(f"[{target}] stopping the server")
        server.stop()


# --------------------------------------------------------------------------- report


def _num(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


COLUMNS: list[tuple[str, Callable[[HlsResult], str]]] = [
    ("target", lambda r: r.target),
    ("mode", lambda r: r.mode),
    ("K", lambda r: str(r.streams)),
    ("M", lambda r: str(r.viewers)),
    ("server CPU %", lambda r: f"{r.server_cpu_pct:.1f}"),
    ("CPU %/stream", lambda r: f"{r.cpu_pct_per_stream:.3f}"),
    ("RSS MB", lambda r: f"{r.rss_mb:.1f}"),
    ("lat p50 ms", lambda r: _num(r.latency_p50_ms)),
    ("lat p95 ms", lambda r: _num(r.latency_p95_ms)),
    ("lat p99 ms", lambda r: _num(r.latency_p99_ms)),
    ("e2e p95 ms", lambda r: _num(r.e2e_p95_ms)),
    ("ingest lag p99/max ms", lambda r: f"{_num(r.ingest_lag_p99_ms)}/{_num(r.ingest_lag_max_ms)}"),
    ("loop lag max ms", lambda r: _num(r.server_loop_lag_max_ms)),
    ("req/s", lambda r: f"{r.requests_per_s:.0f}"),
    ("out Mbit/s", lambda r: f"{r.out_mbps:.0f}"),
    ("failed req (run/window)", lambda r: f"{r.failures}/{r.failures_window}"),
    ("stalled viewers", lambda r: str(r.viewers_stalled)),
    ("pubs up", lambda r: f"{r.publishers_connected_at_end}/{r.streams}"),
    ("HLS streams", lambda r: _num(r.hls_streams)),
    ("gen CPU %", lambda r: f"{r.loadgen_cpu_pct:.0f}" + ("!" if r.loadgen_saturated else "")),
    ("send late p99 ms", lambda r: f"{r.send_lateness_p99_ms:.0f}"),
    ("other CPU %", lambda r: f"{r.other_cpu_pct:.0f}"),
]


def format_table(results: list[HlsResult]) -> str:
    rows = [[name for name, _ in COLUMNS]] + [[get(r) for _, get in COLUMNS] for r in results]
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("---" for _ in COLUMNS) + "|")
    return "\n".join(lines)


def ratios(results: list[HlsResult]) -> dict[str, float] | None:
    ours = next((r for r in results if r.target == "ours"), None)
    nginx = next((r for r in results if r.target == "nginx"), None)
    if ours is None or nginx is None or not nginx.cpu_pct_per_stream or not nginx.rss_mb:
        return None
    return {
        "cpu_per_stream_ours_over_nginx": round(ours.cpu_pct_per_stream / nginx.cpu_pct_per_stream, 2),
        "rss_ours_over_nginx": round(ours.rss_mb / nginx.rss_mb, 2),
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.hls_load",
        description="HLS load: K RTMP publishers and M HLS viewers against our server and/or nginx-rtmp `hls on`.",
    )
    parser.add_argument("--target", choices=("ours", "nginx", "both"), default="ours")
    parser.add_argument("--streams", "-k", type=int, default=10, help="streams, one RTMP publisher each")
    parser.add_argument("--viewers", "-m", type=int, default=0, help="HLS viewers in all, spread over the streams")
    parser.add_argument("--mode", choices=("ll", "plain"), default="ll", help="viewer behaviour (nginx: plain)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds after the last viewer starts")
    parser.add_argument("--duration", type=float, default=12.0, help="measurement window, seconds")
    parser.add_argument("--clip", type=Path, default=None, help="FLV clip (default: the reference clip, made once)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--start-interval", type=float, default=0.02, help="seconds between publisher starts")
    parser.add_argument(
        "--join-spread",
        type=float,
        default=None,
        help="start the viewers over this many seconds (default: max(2, M/500))",
    )
    parser.add_argument("--request-timeout", type=float, default=10.0, help="per request, seconds")
    parser.add_argument(
        "--no-gzip", dest="gzip", action="store_false", help="send Accept-Encoding: identity (default: aiohttp's gzip)"
    )
    parser.add_argument("--keep-temp", action="store_true", help="keep the servers' temp dirs (logs, HLS)")
    args = parser.parse_args(argv)
    if args.streams < 1 or args.viewers < 0 or args.duration <= 0 or args.warmup < 0:
        parser.error("need --streams >= 1, --viewers >= 0, --duration > 0, --warmup >= 0")
    if args.viewers and args.mode == "ll" and args.target != "ours":
        parser.error("nginx-rtmp has no LL-HLS: use --mode plain with --target nginx|both")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Our sockets and the server's (it inherits the limit): publishers, viewers, and some slack.
    raise_fd_limit(2 * (args.streams + args.viewers) + 512)
    started = time.monotonic()
    results = run_interruptible(run_targets(args, run_target))
    if results is None:
        return 130
    print()
    print(format_table(results))
    ratio = ratios(results)
    if ratio is not None:
        print(
            f"\nours/nginx: CPU per stream {ratio['cpu_per_stream_ours_over_nginx']:.2f}x, "
            f"RSS {ratio['rss_ours_over_nginx']:.2f}x"
        )
    for result in results:
        if result.loadgen_saturated:
            print(
                f"\nWARNING [{result.target}]: the load generator is saturated (CPU {result.loadgen_cpu_pct}%, "
                f"send lateness p99 {result.send_lateness_p99_ms} ms): the figures measure it, not the server."
            )
        if result.failures_by_kind:
            print(f"[{result.target}] failed requests by kind: {result.failures_by_kind}")
        for line in result.error_samples:
            print(f"[{result.target}] {line}")
        for line in result.server_log_problems:
            print(f"[{result.target}] server log: {line}")
    if args.json is not None:
        write_report(args.json, args, started, results, ratio)
    return 0


if __name__ == "__main__":
    sys.exit(main())
