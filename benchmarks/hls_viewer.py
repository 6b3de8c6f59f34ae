"""The HLS viewers of `benchmarks.hls_load` (its own part, no other tool uses it), and the little of HLS
they need to read: media playlists (RFC 8216bis, parts included) and two fields of fMP4 boxes.

Viewers (viewer i watches stream i mod K):
  ll     blocking playlist reload for the next part (`_HLS_msn`/`_HLS_part`), then GET that part, as
         hls.js does at the live edge (ours only).
  plain  reload the playlist every TARGETDURATION/2 without blocking parameters and GET each new
         complete segment (ours: fMP4 `seg-N.m4s`; nginx: `/hls/<name>.m3u8` and its `.ts`).
Every sample goes to one shared `Meter`; parsed playlists are cached by body, so the viewers of one
stream share the parse.
"""

from __future__ import annotations

import array
import asyncio
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

import aiohttp

from benchmarks.lib.publish import Publisher

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
        # A private camera's URL carries its play token already.
        self._query_sep = "&" if "?" in url else "?"
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
            found = await self._playlist(f"{self.url}{self._query_sep}_HLS_msn={msn}&_HLS_part={part}")
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
