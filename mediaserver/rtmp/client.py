"""A small asyncio RTMP client for our tools, benchmarks and tests.

It is an `asyncio.Protocol` underneath: bytes go through the handshake and the shared
`ChunkReader`, protocol control messages (Set Chunk Size, Window Acknowledgement Size,
Ping requests) are handled here, replies to our commands wake the coroutine waiting for
them, and every other message is handed to the application, either through a callback
(`on_message`, cheap enough for hundreds of players in one process) or through a bounded
queue read with `read_message()`.

What is delivered: media, data, user control events other than Ping, and commands that no
call is waiting for (onStatus events such as `NetStream.Play.UnpublishNotify`,
`onBWDone` ...). What is not: `_result`/`_error` replies and the onStatus a call waited for,
and the protocol control messages the client answers itself.

Longer than our usual module: it is the client-side twin of connection + commands + player, kept in one
file because nothing on the server's hot path uses it and its users (load tools, tests, the relay that
issue 11 plans) want one import.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import struct
from collections.abc import Callable
from typing import Any, cast

from mediaserver.rtmp import chunk
from mediaserver.rtmp.amf import AMFError, decode_amf0, decode_amf3_command, encode_amf0
from mediaserver.rtmp.chunk import ChunkError, ChunkReader, Message, encode_message
from mediaserver.rtmp.handshake import HANDSHAKE_SIZE, client_c0c1, client_c2

__all__ = ["RtmpClient", "RtmpClientError"]

# Chunk stream ids we send on (the same layout ffmpeg and OBS use).
CSID_CONTROL = 2
CSID_COMMAND = 3
CSID_AUDIO = 4
CSID_DATA = 5
CSID_VIDEO = 6
CSID_STREAM_COMMAND = 8

UC_PING_REQUEST = 6
UC_PING_RESPONSE = 7

CLOSED_CODE = "NetConnection.Connect.Closed"
PROTOCOL_ERROR_CODE = "NetConnection.Protocol.Error"

_S0S1S2_SIZE = 1 + 2 * HANDSHAKE_SIZE
_U32 = struct.Struct(">I")
_CSID_BY_TYPE = {
    chunk.VIDEO: CSID_VIDEO,
    chunk.AUDIO: CSID_AUDIO,
    chunk.DATA_AMF0: CSID_DATA,
    chunk.DATA_AMF3: CSID_DATA,
    chunk.COMMAND_AMF0: CSID_COMMAND,
    chunk.COMMAND_AMF3: CSID_COMMAND,
}
_CONTROL_TYPES = frozenset(
    (chunk.SET_CHUNK_SIZE, chunk.ABORT, chunk.ACKNOWLEDGEMENT, chunk.USER_CONTROL, chunk.WINDOW_ACK_SIZE,
     chunk.SET_PEER_BANDWIDTH)
)  # fmt: skip

MessageCallback = Callable[[Message], None]
CloseCallback = Callable[[Exception | None], None]


class RtmpClientError(Exception):
    """The server refused a call (`code` is the status code it sent) or the connection ended."""

    def __init__(self, code: str, description: str = "") -> None:
        super().__init__(f"{code}: {description}" if description else code)
        self.code = code
        self.description = description


def _info_of(values: list[Any]) -> dict[str, Any]:
    """The information object of a `_result`/`_error`/`onStatus` command (4th value)."""
    info = values[3] if len(values) > 3 else None
    return info if isinstance(info, dict) else {}


class _StatusWaiter:
    __slots__ = ("codes", "future")

    def __init__(self, codes: frozenset[str], future: asyncio.Future[dict[str, Any]]) -> None:
        self.codes = codes
        self.future = future


class _Protocol(asyncio.Protocol):
    """Forwards transport events to the client; kept apart so the client's API stays clean."""

    def __init__(self, client: RtmpClient) -> None:
        self._client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport's interface without subclassing it.
        self._client._connection_made(cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        self._client._data_received(data)

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._client._connection_lost(exc)


class RtmpClient:
    """One RTMP connection. Use `connect()` first, then `publish()` or `play()`.

    `on_message`, when set, receives every delivered message synchronously from the event
    loop (it must not block); when it is None messages are queued for `read_message()`.
    The attribute may be changed at any time. Reading from the socket pauses while the
    queue holds `max_queue` messages and no call waits for a reply.
    """

    def __init__(
        self,
        on_message: MessageCallback | None = None,
        *,
        on_close: CloseCallback | None = None,
        max_queue: int = 4096,
        max_message_size: int = 16 * 1024 * 1024,
    ) -> None:
        self.on_message = on_message
        self.on_close = on_close
        self.stream_id = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        #: `loop.time()` when the last play command went out, for join-latency measurements.
        self.play_sent_at: float | None = None
        #: Why the connection ended: None for a clean close or EOF, else the error.
        self.error: Exception | None = None
        self._max_queue = max(1, max_queue)
        self._reader = ChunkReader(max_message_size)
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timeout = 10.0
        self._out_chunk_size = chunk.DEFAULT_CHUNK_SIZE
        self._c0c1 = b""
        self._handshake = bytearray()
        self._handshake_done: asyncio.Future[None] | None = None
        self._open = False
        self._closed = False
        self._closed_future: asyncio.Future[None] | None = None
        self._window: int | None = None
        self._last_ack = 0
        self._next_txn = 1
        self._calls: dict[int, asyncio.Future[list[Any]]] = {}
        self._status_waiters: list[_StatusWaiter] = []
        self._queue: collections.deque[Message] = collections.deque()
        self._queue_waiter: asyncio.Future[None] | None = None
        self._paused = False

    # ----- public API -------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def chunk_size(self) -> int:
        """The chunk size we send with."""
        return self._out_chunk_size

    @property
    def write_buffer_size(self) -> int:
        transport = self._transport
        return transport.get_write_buffer_size() if transport is not None else 0

    async def connect(
        self,
        host: str,
        port: int,
        app: str,
        tc_url: str | None = None,
        timeout: float = 10,
        *,
        tls: ssl.SSLContext | None = None,
        path: str | None = None,
    ) -> None:
        """Open the TCP connection (TLS with `tls`: RTMPS, checked against `host`; a Unix socket at `path`
        instead when it is set: another worker's internal listener), do the handshake and the `connect` command.

        Raises RtmpClientError with the server's code if it answers `_error`, TimeoutError
        after `timeout` seconds (which is also the limit of every later call), OSError when
        the TCP connection fails (ssl.SSLError, an OSError, when the TLS handshake does).
        """
        if self._loop is not None:
            raise RuntimeError("RtmpClient.connect() called twice")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._timeout = timeout
        self._closed_future = loop.create_future()
        self._handshake_done = loop.create_future()
        try:
            async with asyncio.timeout(timeout):
                if path is not None:
                    await loop.create_unix_connection(lambda: _Protocol(self), path)
                elif tls is None:
                    await loop.create_connection(lambda: _Protocol(self), host, port)
                else:
                    await loop.create_connection(lambda: _Protocol(self), host, port, ssl=tls, server_hostname=host)
                await self._handshake_done
                command = {
                    "app": app,
                    "type": "nonprivate",
                    "flashVer": "FMLE/3.0 (compatible; mediaserver)",
                    "tcUrl": tc_url if tc_url is not None else f"rtmp://{host}:{port}/{app}",
                    "fpad": False,
                    "capabilities": 15.0,
                    "audioCodecs": 3575.0,
                    "videoCodecs": 252.0,
                    "videoFunction": 1.0,
                    "objectEncoding": 0.0,
                }
                await self._call_unbounded("connect", command)
        except BaseException:
            self.abort()
            raise

    async def create_stream(self) -> int:
        """Send createStream; return the message stream id and make it the current one."""
        values = await self._call("createStream", None)
        stream_id = values[3] if len(values) > 3 else None
        if not isinstance(stream_id, (int, float)) or isinstance(stream_id, bool) or stream_id < 0:
            raise RtmpClientError(PROTOCOL_ERROR_CODE, f"createStream answered {stream_id!r}")
        self.stream_id = int(stream_id)
        return self.stream_id

    async def publish(self, name: str, kind: str = "live") -> None:
        """releaseStream, FCPublish, createStream, publish; wait for NetStream.Publish.Start.

        Raises RtmpClientError(code) when the server answers with an error status
        (NetStream.Publish.BadName, NetStream.Publish.Unauthorized ...).
        """
        self._fire("releaseStream", None, name)
        self._fire("FCPublish", None, name)
        stream_id = await self.create_stream()
        waiter = self._expect_status("NetStream.Publish.Start")
        self._send_command(stream_id, CSID_STREAM_COMMAND, "publish", 0.0, None, name, kind)
        await self._wait(waiter)

    def unpublish(self, name: str) -> None:
        """FCUnpublish and deleteStream for the current stream; replies, if any, are not waited for."""
        self._fire("FCUnpublish", None, name)
        self._fire("deleteStream", None, float(self.stream_id))

    async def play(self, name: str, start: float = -2000.0) -> None:
        """createStream, play; wait for NetStream.Play.Start.

        Raises RtmpClientError(code) when the server answers with an error status
        (NetStream.Play.StreamNotFound, NetStream.Play.Failed ...). Media may reach
        `on_message` before this returns; `play_sent_at` is set when `play` goes out.
        """
        stream_id = await self.create_stream()
        waiter = self._expect_status("NetStream.Play.Start")
        self.play_sent_at = self._running_loop().time()
        self._send_command(stream_id, CSID_STREAM_COMMAND, "play", 0.0, None, name, float(start))
        await self._wait(waiter)

    def set_chunk_size(self, size: int) -> None:
        """Tell the server our chunk size and send with it from now on."""
        if not 1 <= size <= 0x7FFFFFFF:
            raise ValueError(f"chunk size {size} out of range")
        self.write_message(chunk.SET_CHUNK_SIZE, 0, _U32.pack(size), stream_id=0, csid=CSID_CONTROL)
        self._out_chunk_size = size

    def write_message(
        self,
        type_id: int,
        timestamp: int,
        payload: bytes | bytearray | memoryview,
        *,
        stream_id: int | None = None,
        csid: int | None = None,
    ) -> None:
        """Send one message at the current chunk size.

        Protocol control messages go on message stream 0 and chunk stream 2; everything
        else defaults to the current message stream (from createStream) and the usual
        chunk stream of its type.
        """
        control = type_id in _CONTROL_TYPES
        if stream_id is None:
            stream_id = 0 if control else self.stream_id
        if csid is None:
            csid = CSID_CONTROL if control else _CSID_BY_TYPE.get(type_id, CSID_DATA)
        self.write_raw(encode_message(csid, type_id, stream_id, timestamp, payload, self._out_chunk_size))

    def write_raw(self, data: bytes | bytearray | memoryview) -> None:
        """Send bytes that are already RTMP chunks (made for our current chunk size)."""
        transport = self._transport
        if transport is None or not self._open or transport.is_closing():
            raise RtmpClientError(CLOSED_CODE, "connection is not open")
        transport.write(data)
        self.bytes_sent += len(data)

    async def read_message(self) -> Message | None:
        """The next delivered message; None at EOF.

        Raises the error that ended the connection when it was a protocol violation by the
        server (ChunkError, AMFError), once the messages received before it are read.
        """
        while True:
            queue = self._queue
            if queue:
                message = queue.popleft()
                if self._paused and len(queue) <= self._max_queue // 2:
                    self._resume_reading()
                return message
            if self._closed:
                error = self.error
                if isinstance(error, (ChunkError, AMFError)):
                    raise error
                return None
            waiter = self._running_loop().create_future()
            self._queue_waiter = waiter
            try:
                await waiter
            finally:
                self._queue_waiter = None

    def close(self) -> None:
        """Close after sending what is buffered."""
        if self._transport is not None:
            self._transport.close()
        elif not self._closed:
            self._finish(None)

    def abort(self) -> None:
        """Close at once, dropping buffered output."""
        if self._transport is not None:
            self._transport.abort()
        elif not self._closed:
            self._finish(None)

    async def wait_closed(self) -> None:
        if self._closed_future is not None:
            await asyncio.shield(self._closed_future)

    async def __aenter__(self) -> RtmpClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        if self._transport is not None:
            try:
                async with asyncio.timeout(self._timeout):
                    await self.wait_closed()
            except TimeoutError:
                self.abort()

    # ----- calls ------------------------------------------------------------------------

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("RtmpClient is not connected")
        return self._loop

    def _send_command(self, stream_id: int, csid: int, *values: Any) -> None:
        self.write_message(chunk.COMMAND_AMF0, 0, encode_amf0(*values), stream_id=stream_id, csid=csid)

    def _send_control(self, type_id: int, payload: bytes) -> None:
        """A control message we send on our own (ack, pong): dropped when closing."""
        transport = self._transport
        if transport is not None and self._open and not transport.is_closing():
            self.write_message(type_id, 0, payload)

    def _fire(self, name: str, *args: Any) -> None:
        """A call whose reply, if any, is ignored."""
        txn = self._next_txn
        self._next_txn += 1
        self._send_command(0, CSID_COMMAND, name, float(txn), *args)

    async def _call(self, name: str, *args: Any) -> list[Any]:
        async with asyncio.timeout(self._timeout):
            return await self._call_unbounded(name, *args)

    async def _call_unbounded(self, name: str, *args: Any) -> list[Any]:
        if self._closed:
            raise RtmpClientError(CLOSED_CODE, f"connection closed before {name}")
        txn = self._next_txn
        self._next_txn += 1
        future: asyncio.Future[list[Any]] = self._running_loop().create_future()
        self._calls[txn] = future
        self._resume_reading()
        try:
            self._send_command(0, CSID_COMMAND, name, float(txn), *args)
            return await future
        finally:
            self._calls.pop(txn, None)

    def _expect_status(self, *codes: str) -> _StatusWaiter:
        if self._closed:
            raise RtmpClientError(CLOSED_CODE, "connection closed")
        waiter = _StatusWaiter(frozenset(codes), self._running_loop().create_future())
        self._status_waiters.append(waiter)
        self._resume_reading()
        return waiter

    async def _wait(self, waiter: _StatusWaiter) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await waiter.future
        finally:
            if waiter in self._status_waiters:
                self._status_waiters.remove(waiter)

    # ----- transport events -------------------------------------------------------------

    def _connection_made(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._c0c1 = client_c0c1()
        transport.write(self._c0c1)
        self.bytes_sent += len(self._c0c1)

    def _data_received(self, data: bytes) -> None:
        self.bytes_received += len(data)
        try:
            messages = self._reader.feed(data) if self._open else self._handshake_bytes(data)
            window = self._window
            if window is not None and self.bytes_received - self._last_ack >= window:
                self._last_ack = self.bytes_received
                self._send_control(chunk.ACKNOWLEDGEMENT, _U32.pack(self.bytes_received & 0xFFFFFFFF))
            for message in messages:
                if self._closed:
                    return
                self._dispatch(message)
        except Exception as exc:  # a protocol violation, or an exception from on_message
            self._protocol_failure(exc)

    def _handshake_bytes(self, data: bytes) -> list[Message]:
        self._handshake += data
        if len(self._handshake) < _S0S1S2_SIZE:
            return []
        reply = bytes(self._handshake[:_S0S1S2_SIZE])
        rest = bytes(self._handshake[_S0S1S2_SIZE:])
        self._handshake = bytearray()
        c2 = client_c2(reply, self._c0c1)
        self._open = True
        self.write_raw(c2)
        if self._handshake_done is not None and not self._handshake_done.done():
            self._handshake_done.set_result(None)
        return self._reader.feed(rest) if rest else []

    def _connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._finish(exc if self.error is None else self.error)

    def _protocol_failure(self, exc: Exception) -> None:
        self.error = exc
        if self._transport is not None:
            self._transport.abort()
        else:
            self._finish(exc)

    def _finish(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._open = False
        self.error = exc
        if self._handshake_done is not None and not self._handshake_done.done():
            self._handshake_done.set_exception(RtmpClientError(CLOSED_CODE, "closed during the handshake"))
            self._handshake_done.exception()  # consumed here if nobody awaits it
        detail = str(exc) if exc is not None else "closed by the server"
        for future in self._calls.values():
            if not future.done():
                future.set_exception(RtmpClientError(CLOSED_CODE, detail))
        for waiter in self._status_waiters:
            if not waiter.future.done():
                waiter.future.set_exception(RtmpClientError(CLOSED_CODE, detail))
        if self._queue_waiter is not None and not self._queue_waiter.done():
            self._queue_waiter.set_result(None)
        if self._closed_future is not None and not self._closed_future.done():
            self._closed_future.set_result(None)
        if self.on_close is not None:
            self.on_close(exc)

    # ----- messages ---------------------------------------------------------------------

    def _dispatch(self, message: Message) -> None:
        type_id = message.type_id
        if type_id == chunk.VIDEO or type_id == chunk.AUDIO:
            self._deliver(message)
        elif type_id == chunk.COMMAND_AMF0 or type_id == chunk.COMMAND_AMF3:
            if type_id == chunk.COMMAND_AMF0:
                values = decode_amf0(message.payload)
            else:
                values = decode_amf3_command(message.payload)
            if not self._on_command(values):
                self._deliver(message)
        elif type_id == chunk.WINDOW_ACK_SIZE:
            if len(message.payload) >= 4:
                self._window = max(1, _U32.unpack_from(message.payload)[0])
        elif type_id == chunk.USER_CONTROL:
            payload = message.payload
            if len(payload) >= 6 and (payload[0] << 8 | payload[1]) == UC_PING_REQUEST:
                answer = struct.pack(">HI", UC_PING_RESPONSE, _U32.unpack_from(payload, 2)[0])
                self._send_control(chunk.USER_CONTROL, answer)
            else:
                self._deliver(message)
        elif type_id not in _CONTROL_TYPES:
            self._deliver(message)
        # Set Chunk Size and Abort were applied by the reader; Acknowledgement and Set Peer
        # Bandwidth need nothing from a client that does not throttle.

    def _on_command(self, values: list[Any]) -> bool:
        """Handle replies; True when the command was consumed."""
        if not values or not isinstance(values[0], str):
            return False
        name = values[0]
        if name == "_result" or name == "_error":
            txn = values[1] if len(values) > 1 else None
            future = self._calls.get(int(txn)) if isinstance(txn, (int, float)) else None
            if future is not None and not future.done():
                if name == "_result":
                    future.set_result(values)
                else:
                    info = _info_of(values)
                    code = str(info.get("code", "NetConnection.Call.Failed"))
                    future.set_exception(RtmpClientError(code, str(info.get("description", ""))))
            return True  # replies nobody waits for (releaseStream, FCPublish) are dropped
        if name == "onStatus" and self._status_waiters:
            info = _info_of(values)
            code = str(info.get("code", ""))
            for waiter in self._status_waiters:
                if waiter.future.done():
                    continue
                if code in waiter.codes:
                    waiter.future.set_result(info)
                    return True
                if info.get("level") == "error":
                    waiter.future.set_exception(RtmpClientError(code, str(info.get("description", ""))))
                    return True
        return False

    def _deliver(self, message: Message) -> None:
        callback = self.on_message
        if callback is not None:
            callback(message)
            return
        self._queue.append(message)
        waiter = self._queue_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if len(self._queue) >= self._max_queue and not self._paused and not self._waiting_for_reply():
            self._paused = True
            if self._transport is not None:
                self._transport.pause_reading()

    def _waiting_for_reply(self) -> bool:
        return bool(self._calls) or bool(self._status_waiters)

    def _resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            if self._transport is not None and not self._transport.is_closing():
                self._transport.resume_reading()
