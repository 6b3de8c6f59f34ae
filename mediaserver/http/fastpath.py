"""The public HTTP port's front: requests that can be answered at once from memory (HLS reloads, parts and
segments) are answered here; everything else goes to aiohttp, which then owns the connection.

aiohttp spends about 45 µs of Python on every request (request and response objects, router, middlewares,
header serialisation) where the answer itself is a ready playlist or a view of a segment: thousands of HLS
viewers make that the server's whole cost. Here a request is parsed by httptools (llhttp) and answered with
prepared header bytes and the media buffers as they are held, about 5 µs.

The rules that keep both paths one server:
- A connection starts here. The first request this front does not answer (another route, a method other than
  GET, a body, pipelined requests, a header block too large, a route's "not now") hands the connection to
  aiohttp's protocol with every byte not yet answered, and aiohttp keeps it: nothing is answered twice or out of
  order, and every error answer (403, 404, 416, 503) is aiohttp's, with its logging.
- A route may ask to wait for a future (a segment being read back from its spill file): the connection stops
  reading until it is done, then the request is tried again.
- Writes follow the transport's flow control: reading pauses while the transport holds too much.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, Protocol

import httptools
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from mediaserver.hls.spill import SpilledRange, send_spilled_after
from mediaserver.http.access import PLAY_COOKIE
from mediaserver.http.handover import HandoverSender
from mediaserver.vectored_io import Buffer, past

log = logging.getLogger("mediaserver.http")

# The unanswered bytes a connection may hold before it goes to aiohttp (which applies its own header limits).
_MAX_PENDING = 16 * 1024
# Seconds an idle keep-alive connection stays open (aiohttp's default).
KEEPALIVE_TIMEOUT = 75.0
_SERVER = b"Server: mediaserver\r\n"


@dataclass(slots=True)
class FastRequest:
    """A GET without a body, as the routes see it: the path (no query), a few headers, the peer's address."""

    path: str
    peer: str
    # What follows "?" (empty: none).
    query: str = ""
    accept_encoding: str = ""
    user_agent: str = ""
    # The play credential the server handed back as a cookie (mediaserver.http.access.PLAY_COOKIE), if sent.
    play_cookie: str = ""
    # Set when the request carries a header that a route's answer depends on beyond these (Range, credentials).
    other: bool = False
    # When (loop clock) it was complete: a route that makes it wait knows for how long it has.
    since: float = 0.0
    # It waited once for its play check's lookup (`PlayAccess.prepare`), or for its stream's demand handlers: not
    # again.
    prepared: bool = False
    demanded: bool = False


@dataclass(slots=True)
class FastAnswer:
    """A ready answer: the status line and headers (without Date, Server and the blank line), then the body as
    `chunks`; with `file`, the body's first bytes may go from that written-out segment with sendfile."""

    head: bytes
    chunks: Sequence[Buffer]
    size: int
    file: SpilledRange | None = None
    at: int = 0
    # Told how many bytes went with sendfile.
    on_sendfile: Callable[[int], None] | None = None


class FastRoutes(Protocol):
    def answer(self, request: FastRequest) -> FastAnswer | asyncio.Future[Any] | None:
        """The answer now; a future to wait for before asking again (it must end by itself, in seconds); None:
        aiohttp answers it (and keeps the connection)."""


# Header names the front reads (lower case, as bytes); any of `_OTHER` makes the request `other`.
_ACCEPT_ENCODING = b"accept-encoding"
_USER_AGENT = b"user-agent"
_COOKIE = b"cookie"
_OTHER = frozenset((b"range", b"authorization", b"upgrade", b"expect", b"transfer-encoding"))
# A cookie header matters only when it carries the play credential (other cookies of the site are ignored).
_PLAY_COOKIE_NAME = PLAY_COOKIE.encode()
_PLAY_COOKIE = _PLAY_COOKIE_NAME + b"="


def _play_cookie(header: bytes) -> str:
    """The play cookie's value in a Cookie header (other cookies of the site are passed over)."""
    for pair in header.split(b";"):
        name, _, value = pair.strip().partition(b"=")
        if name == _PLAY_COOKIE_NAME:
            return value.strip(b'"').decode("latin-1")
    return ""


class _Date:
    """The Date header's value, formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def line(self) -> bytes:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._line = b"Date: " + formatdate(second, usegmt=True).encode() + b"\r\n"
        return self._line


@dataclass(slots=True)
class FastStats:
    answered: int = 0
    handed_over: int = 0
    # Connections passed to the worker holding their stream, and taken from other workers.
    passed: int = 0
    adopted: int = 0
    waits: int = 0
    connections: set[FastProtocol] = field(default_factory=set)


class FastProtocol(asyncio.Protocol):
    """One connection on the public HTTP port, until it is handed to aiohttp (or to the worker holding its stream)."""

    def __init__(self, front: FastFront, carried: bytes = b"", adopted: bool = False) -> None:
        self._front = front
        # Another worker handed this connection over, with the bytes it had read and not answered.
        self._carried = carried
        self._adopted = adopted
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._peer = ""
        # Bytes of requests the parser took but that are not answered yet, and bytes that came while waiting.
        self._pending = bytearray()
        self._backlog = bytearray()
        self._requests: list[FastRequest] = []
        # The path of the first request not answered yet, answerable here or not: where the connection may go.
        self._first_path = ""
        self._current: FastRequest | None = None
        self._url = b""
        self._in_message = False
        self._refused = False  # the current message cannot be answered here (a body, an upgrade)
        self._waiting = False
        self._paused_by_writes = False
        self._last_active = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None

    # ----- asyncio.Protocol ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport is not an asyncio.Transport
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) else ""
        self._front.stats.connections.add(self)
        self._last_active = self._front.loop.time()
        self._idle_timer = self._front.loop.call_later(KEEPALIVE_TIMEOUT, self._check_idle)
        if self._carried:
            carried, self._carried = self._carried, b""
            self.data_received(carried)

    def connection_lost(self, exc: Exception | None) -> None:
        self._front.stats.connections.discard(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._transport = None

    def pause_writing(self) -> None:
        self._paused_by_writes = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused_by_writes = False
        if self._transport is not None and not self._waiting:
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._waiting:
            self._backlog += data
            return
        self._pending += data
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            # aiohttp answers malformed requests (400, and closes) and upgrades (the dashboard's WebSocket); outside
            # this block, so that its own error is not chained to the parser's.
            self._refused = True
        if self._refused or len(self._requests) > 1 or (self._requests and self._in_message):
            self._hand_over()
        elif self._requests:
            self._answer()
        elif len(self._pending) > _MAX_PENDING:
            self._hand_over()

    # ----- httptools callbacks ------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = True
        self._url = b""
        self._current = FastRequest("", self._peer)

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self._current
        if request is None:
            return
        lowered = name.lower()
        if lowered == _ACCEPT_ENCODING:
            request.accept_encoding = value.decode("latin-1")
        elif lowered == _USER_AGENT:
            request.user_agent = value.decode("latin-1")
        elif lowered == _COOKIE:
            if _PLAY_COOKIE in value:
                request.play_cookie = _play_cookie(value)
        elif lowered in _OTHER:
            request.other = True

    def on_body(self, body: bytes) -> None:
        self._refused = True

    def on_message_complete(self) -> None:
        self._in_message = False
        request, self._current = self._current, None
        parser = self._parser
        url = self._url
        if not self._first_path:
            self._first_path = url.partition(b"?")[0].decode("latin-1")
        # Only plain GETs of a plain path on a kept-alive HTTP/1.1 connection: anything else is aiohttp's.
        if (
            request is None
            or parser.get_method() != b"GET"
            or parser.get_http_version() != "1.1"
            or not parser.should_keep_alive()
            or parser.should_upgrade()
            or b"%" in url
        ):
            self._refused = True
            return
        path, _, query = url.decode("latin-1").partition("?")
        request.path, request.query = path, query
        request.since = self._front.loop.time()
        self._requests.append(request)

    # ----- answering ----------------------------------------------------------------------------------------

    def _answer(self) -> None:
        transport = self._transport
        if transport is None:
            return
        request = self._requests[0]
        front = self._front
        try:
            answer = front.routes.answer(request) if not request.other else None
        except Exception:
            # A bug in a route must not cost the connection: aiohttp's route answers (or fails with its 500).
            log.exception("event=http_front_failed path=%s", request.path)
            answer = None
        if answer is None:
            self._hand_over()
            return
        if isinstance(answer, asyncio.Future):
            front.stats.waits += 1
            self._waiting = True
            transport.pause_reading()
            answer.add_done_callback(self._waited)
            return
        self._requests.clear()
        self._pending.clear()
        self._first_path = ""
        self._adopted = False  # answered here: it may be passed on again for another stream
        front.stats.answered += 1
        self._last_active = front.loop.time()
        head = answer.head + front.date.line() + _SERVER + b"\r\n"
        if answer.file is None:
            transport.writelines((head, *answer.chunks))
            return
        transport.write(head)
        rest = past(answer.chunks, self._sendfile(transport, answer))
        if rest:
            transport.writelines(rest)

    @staticmethod
    def _sendfile(transport: asyncio.Transport, answer: FastAnswer) -> int:
        """Bytes sent straight from the file (see `send_spilled_after`)."""
        if answer.file is None:
            return 0
        sent = send_spilled_after(transport, answer.file, answer.at, answer.size)
        if sent and answer.on_sendfile is not None:
            answer.on_sendfile(sent)
        return sent

    def _waited(self, future: asyncio.Future[Any]) -> None:
        self._waiting = False
        transport = self._transport
        if transport is None:
            return
        if not self._paused_by_writes:
            transport.resume_reading()
        self._answer()  # again: ready now, or aiohttp's (a failed read is answered there, backlog and all)
        if self._transport is not None and not self._waiting and self._backlog:
            backlog, self._backlog = bytes(self._backlog), bytearray()
            self.data_received(backlog)

    def _hand_over(self) -> None:
        """aiohttp takes the connection, with every byte not answered here (unless the worker holding the stream
        takes it)."""
        transport = self._transport
        if transport is None or self._pass_to_worker(transport):
            return
        self._front.stats.handed_over += 1
        self._front.stats.connections.discard(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._transport = None
        data = bytes(self._pending) + bytes(self._backlog)
        self._pending.clear()
        self._backlog.clear()
        if self._paused_by_writes:  # (a wait has always ended before a hand-over)
            transport.resume_reading()
        handler = self._front.server()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if data:
            handler.data_received(data)

    def _pass_to_worker(self, transport: asyncio.Transport) -> bool:
        """Hand the connection to the worker of this machine that holds the stream the first request names,
        when it is between answers; whether it went."""
        front = self._front
        if front.pass_to is None or self._adopted or not self._first_path or self._backlog:
            return False  # (an adopted connection's first request is answered here, whatever the mirror says)
        target = front.pass_to(self._first_path)
        if target is None or transport.get_write_buffer_size():
            return False
        sock = transport.get_extra_info("socket")
        if sock is None or not front.sender.send(target, sock.fileno(), bytes(self._pending)):
            return False
        front.stats.passed += 1
        front.stats.connections.discard(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._transport = None
        self._pending.clear()
        self._requests.clear()
        self._first_path = ""
        transport.abort()  # our descriptor only: the connection goes on in the other worker
        return True

    def _check_idle(self) -> None:
        transport = self._transport
        if transport is None:
            return
        idle = self._front.loop.time() - self._last_active
        if idle >= KEEPALIVE_TIMEOUT and not self._waiting and not self._pending:
            transport.close()
            return
        self._idle_timer = self._front.loop.call_later(max(KEEPALIVE_TIMEOUT - idle, 1.0), self._check_idle)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class FastFront:
    """The protocol factory of the public HTTP port: `FastProtocol`s in front of aiohttp's `server`."""

    def __init__(self, routes: FastRoutes, server: web.Server, registry: CollectorRegistry) -> None:
        self.routes = routes
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.date = _Date()
        self.stats = FastStats()
        # With workers: the handover socket of the other worker holding the stream a request path names.
        self.pass_to: Callable[[str], str | None] | None = None
        self.sender = HandoverSender()
        self._adopting: set[asyncio.Task[None]] = set()
        registry.register(_FrontCollector(self.stats))

    def __call__(self) -> FastProtocol:
        return FastProtocol(self)

    def adopt(self, sock: socket.socket, carried: bytes) -> None:
        """A connection another worker handed over (`mediaserver.http.handover`): served here from now on."""
        self.stats.adopted += 1
        task = self.loop.create_task(self._adopt(sock, carried))
        self._adopting.add(task)
        task.add_done_callback(self._adopting.discard)

    async def _adopt(self, sock: socket.socket, carried: bytes) -> None:
        try:
            await self.loop.connect_accepted_socket(lambda: FastProtocol(self, carried, adopted=True), sock)
        except OSError as exc:
            log.warning("event=http_adopt_failed error=%s", exc)
            sock.close()

    def close_connections(self) -> None:
        for protocol in list(self.stats.connections):
            protocol.close()


def prepared_head(status: str, headers: Sequence[tuple[str, str]]) -> bytes:
    """A status line and header lines as bytes, for an answer sent many times."""
    lines = [f"HTTP/1.1 {status}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in headers)
    return "".join(lines).encode("latin-1")


class _FrontCollector(Collector):
    # Plain integers reported at scrape time: a labelled child's increment costs a lock, on every request.
    def __init__(self, stats: FastStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = self._stats
        requests = CounterMetricFamily(
            "mediaserver_http_front_requests",
            "Requests on the public HTTP port answered by the front (HLS from memory), or handed with their "
            "connection to aiohttp or to the worker holding their stream",
            labels=["path"],
        )
        requests.add_metric(["answered"], stats.answered)
        requests.add_metric(["handed_over"], stats.handed_over)
        requests.add_metric(["passed_to_worker"], stats.passed)
        yield requests
        yield CounterMetricFamily(
            "mediaserver_http_front_waits",
            "Front requests that waited for their media (a segment read back)",
            value=stats.waits,
        )
        yield GaugeMetricFamily(
            "mediaserver_http_front_connections", "Connections the front holds", value=len(stats.connections)
        )
        yield CounterMetricFamily(
            "mediaserver_http_front_adopted_connections",
            "Connections another worker of this machine handed over (their stream is held here)",
            value=stats.adopted,
        )
