"""The HLS routes' answers, made cheaply: thousands of viewers of one stream ask for the same few resources.

- A playlist is rendered once per change of its stream, per variant (delta update or not), and compressed once per
  change for the clients that take gzip; its header sets are built then too, so a request copies a ready answer.
- Media (init segments, parts, segments) goes out as the buffers it is held in: a large body is written after its
  headers, never joined with them into a new copy (aiohttp does that for a plain body on Python < 3.12.9).
- A segment written out of memory goes from its file to the socket with sendfile, as far as the socket takes it at
  once; the rest (a slow or busy client) from the copy read back into memory, shared by the viewers.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload
from multidict import CIMultiDict

from mediaserver.hls import playlist
from mediaserver.hls.segmenter import HlsStream
from mediaserver.hls.spill import SpilledRange, send_spilled_after
from mediaserver.http.fastpath import prepared_head
from mediaserver.vectored_io import Buffer, past

PLAYLIST_TYPE = "application/vnd.apple.mpegurl; charset=utf-8"
IMMUTABLE = "public, max-age=31536000, immutable"
# Bodies at least this large are written after their headers rather than joined with them (the join is a copy of
# the body; a separate write costs one more system call, cheaper than copying this much).
SEPARATE_HEADERS_FROM = 16 * 1024
# Bytes queued on a viewer's transport beyond which a body's writer waits for them to leave.
_DRAIN_ABOVE = 64 * 1024

_PLAYLIST_HEADERS = {
    hdrs.CONTENT_TYPE: PLAYLIST_TYPE,
    hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: "*",
    hdrs.VARY: "Accept-Encoding",
}
# A blocking reload (_HLS_msn) names a playlist state that will not change: caches may keep it a little.
_BLOCKING_CACHE = "public, max-age=2"
_RELOAD_CACHE = "no-cache"


def _media_headers(content_type: str) -> CIMultiDict[str]:
    return CIMultiDict(
        {
            hdrs.CONTENT_TYPE: content_type,
            hdrs.CACHE_CONTROL: IMMUTABLE,
            hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: "*",
            hdrs.ACCESS_CONTROL_EXPOSE_HEADERS: "Content-Length, Content-Range",
            hdrs.ACCEPT_RANGES: "bytes",
        }
    )


_MEDIA_HEADERS = {"init": _media_headers("video/mp4"), "part": _media_headers("video/iso.segment")}
_MEDIA_HEADERS["segment"] = _MEDIA_HEADERS["part"]
# What the control plane's middleware adds to every answer outside /api/: the front's answers carry it too.
_FRONT_HEADERS = (("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"))
# The front's media answers, up to their Content-Length.
_MEDIA_HEADS = {
    kind: prepared_head("200 OK", (*headers.items(), *_FRONT_HEADERS)) for kind, headers in _MEDIA_HEADERS.items()
}


def error_answer(status: str, code: str, message: str) -> tuple[bytes, bytes]:
    """The front's head and body of an HLS error answer, as `HlsService._error` makes them."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    headers = (
        ("Content-Type", "application/json; charset=utf-8"),
        ("Access-Control-Allow-Origin", "*"),
        ("Cache-Control", "no-cache"),
        *_FRONT_HEADERS,
        ("Content-Length", str(len(body))),
    )
    return prepared_head(status, headers), body


def media_head(kind: str, size: int) -> bytes:
    """The front's status line and headers of a whole init segment, part or segment of `size` bytes."""
    return _MEDIA_HEADS[kind] + b"Content-Length: %d\r\n" % size


@dataclass(slots=True)
class ServeStats:
    # Media bytes that went from a written-out segment's file to a socket with sendfile.
    sendfile_bytes: int = 0


class Buffers(Payload):
    """A body sent as the buffers it is held in (a part, a segment's parts, a segment read back), one after the
    other, without joining them or copying them into the headers' write.

    With `file`, the same bytes are also at `at` within that written-out segment: they go from there with sendfile
    while the socket takes them at once, and only what it does not take from the buffers."""

    _autoclose = True

    def __init__(
        self,
        chunks: Sequence[Buffer],
        size: int,
        file: SpilledRange | None = None,
        at: int = 0,
        stats: ServeStats | None = None,
    ) -> None:
        super().__init__(chunks, content_type=None)
        self._chunks = chunks
        self._size = self._length = size
        self._file = file
        self._at = at
        self._stats = stats

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(self._chunks).decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        # The headers go first on their own for a large body, and always before bytes sent from a file (these
        # bypass the writer, which would otherwise hold the headers back to join them with the first chunk).
        if self._length >= SEPARATE_HEADERS_FROM or self._file is not None:
            send_headers = getattr(writer, "send_headers", None)  # aiohttp < 3.12 writes headers at once anyway
            if send_headers is not None:
                send_headers()
        rest = past(self._chunks, self._sendfile(writer) if self._file is not None else 0)
        if not rest:
            return
        # The first buffer goes through the writer (held headers leave with it); the others, a part's samples
        # among them, in one writelines: one system call for all, not one each.
        await writer.write(rest[0])
        if len(rest) == 1:
            return
        transport = getattr(writer, "transport", None)
        if transport is None or transport.is_closing():
            for chunk in rest[1:]:
                await writer.write(chunk)
            return
        transport.writelines(rest[1:])
        if transport.get_write_buffer_size() > _DRAIN_ABOVE:
            await writer.drain()

    def _sendfile(self, writer: AbstractStreamWriter) -> int:
        """Bytes sent straight from the file (see `send_spilled_after`)."""
        transport = getattr(writer, "transport", None)
        if transport is None or self._file is None:
            return 0
        sent = send_spilled_after(transport, self._file, self._at, self._length)
        if self._stats is not None:
            self._stats.sendfile_bytes += sent
        return sent


def media_response(
    kind: str,
    chunks: Sequence[Buffer],
    start: int,
    end: int,
    total: int,
    file: SpilledRange | None = None,
    at: int = 0,
    stats: ServeStats | None = None,
) -> web.Response:
    """The answer for bytes [start, end) of a `total`-byte resource, held as `chunks` (and, when `file` is given,
    also at `at` within that written-out segment)."""
    size = end - start
    partial = size != total
    if file is None and len(chunks) == 1 and size < SEPARATE_HEADERS_FROM and isinstance(chunks[0], bytes):
        body: bytes | Buffers = chunks[0]
    else:
        body = Buffers(chunks, size, file, at, stats)
    # The response copies the shared header set once; its own copy takes the length (and range).
    response = web.Response(status=206 if partial else 200, body=body, headers=_MEDIA_HEADERS[kind])
    headers = response.headers
    headers[hdrs.CONTENT_LENGTH] = str(size)
    if partial:
        headers[hdrs.CONTENT_RANGE] = f"bytes {start}-{end - 1}/{total}"
    return response


class PlaylistVariant:
    """One encoding of a rendered playlist: its body and its two header sets (blocking reload or not)."""

    __slots__ = ("blocking", "blocking_head", "body", "reload", "reload_head")

    def __init__(self, body: bytes, gzipped: bool) -> None:
        self.body = body
        headers = CIMultiDict(_PLAYLIST_HEADERS)
        if gzipped:
            headers[hdrs.CONTENT_ENCODING] = "gzip"
        headers[hdrs.CONTENT_LENGTH] = str(len(body))
        self.reload = headers.copy()
        self.reload[hdrs.CACHE_CONTROL] = _RELOAD_CACHE
        self.blocking = headers
        self.blocking[hdrs.CACHE_CONTROL] = _BLOCKING_CACHE
        # The front's answers to a plain and to a blocking reload.
        self.reload_head = prepared_head("200 OK", (*self.reload.items(), *_FRONT_HEADERS))
        self.blocking_head = prepared_head("200 OK", (*self.blocking.items(), *_FRONT_HEADERS))

    def response(self, blocking: bool) -> web.Response:
        return web.Response(body=self.body, headers=self.blocking if blocking else self.reload)


class _Rendered:
    __slots__ = ("gzip", "identity", "version")

    def __init__(self, version: tuple[int, ...], identity: PlaylistVariant) -> None:
        self.version = version
        self.identity = identity
        self.gzip: PlaylistVariant | None = None


class PlaylistCache:
    """Rendered playlists by (app, name, skip), valid while the stream's version (and its renditions') is the one
    they were rendered at."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str, bool], _Rendered] = {}
        # How often a playlist was rendered and compressed: once per change and variant, whatever the requests.
        self.renders = 0
        self.compressions = 0

    def get(self, stream: HlsStream, renditions: Sequence[HlsStream], skip: bool, gzipped: bool) -> PlaylistVariant:
        key = (stream.app, stream.name, skip)
        if renditions:
            version: tuple[int, ...] = (stream.version, *(other.version for other in renditions))
        else:
            version = (stream.version,)
        entry = self._entries.get(key)
        if entry is None or entry.version != version:
            self.renders += 1
            body = playlist.render(stream, skip=skip, renditions=renditions).encode()
            entry = self._entries[key] = _Rendered(version, PlaylistVariant(body, False))
        if not gzipped:
            return entry.identity
        if entry.gzip is None:
            self.compressions += 1
            entry.gzip = PlaylistVariant(gzip.compress(entry.identity.body, compresslevel=5, mtime=0), True)
        return entry.gzip

    def forget(self, app: str, name: str) -> None:
        """The stream is gone: drop its playlists."""
        for key in [k for k in self._entries if k[0] == app and k[1] == name]:
            del self._entries[key]
