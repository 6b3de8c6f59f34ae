"""NetConnection and NetStream commands of one server-side RTMP connection.

`connect`, `createStream`, `publish`, `play`, `deleteStream` and the handful of calls
encoders make around them. Publish and play await the authorizer: meanwhile the connection
holds later messages (`RtmpConnection.hold_messages`) and handles them, in order, once the
answer is in. A granted publish or play gives the connection its role object.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from mediaserver.auth import Denied, redact, split_stream_name
from mediaserver.hub import StreamTaken
from mediaserver.rtmp import chunk
from mediaserver.rtmp.amf import encode_amf0
from mediaserver.rtmp.chunk import encode_message
from mediaserver.rtmp.context import CSID_DATA, UC_STREAM_BEGIN, ProtocolError, finite_number, status
from mediaserver.rtmp.player import RtmpPlayer
from mediaserver.rtmp.publisher import RtmpPublisher

if TYPE_CHECKING:
    from mediaserver.rtmp.connection import RtmpConnection

log = logging.getLogger("mediaserver.rtmp")

_FOURCC_LIST = ["avc1", "hvc1", "av01", "mp4a", "Opus"]


def _stream_name(args: list[Any]) -> str:
    return args[0] if args and isinstance(args[0], str) else ""


class RtmpCommands:
    __slots__ = ("_conn", "_next_stream_id", "_pending_task")

    def __init__(self, conn: RtmpConnection) -> None:
        self._conn = conn
        self._next_stream_id = 1
        self._pending_task: asyncio.Task[None] | None = None

    def on_command(self, values: list[Any], stream_id: int) -> None:
        if not values or not isinstance(values[0], str):
            raise ProtocolError("bad_command", "command message without a name")
        conn = self._conn
        name = values[0]
        txn = values[1] if len(values) > 1 and isinstance(values[1], (int, float)) else 0.0
        command_object = values[2] if len(values) > 2 else None
        args = values[3:]
        if name == "connect":
            self._connect(txn, command_object)
            return
        if not conn.app:
            raise ProtocolError("command_before_connect", f"{name!r} before connect")
        if name == "createStream":
            stream_id_new = self._next_stream_id
            self._next_stream_id += 1
            conn.send_command(0, "_result", txn, None, float(stream_id_new))
        elif name == "publish":
            self._start_publish(args, stream_id)
        elif name == "play":
            self._start_play(args, stream_id)
        elif name in ("deleteStream", "closeStream", "FCUnpublish"):
            conn.end_roles(name)
            if name == "FCUnpublish" and txn:
                conn.send_command(0, "_result", txn, None, None)
        elif name in ("releaseStream", "FCPublish", "FCSubscribe"):
            if txn:
                conn.send_command(0, "_result", txn, None, None)
        elif name == "getStreamLength":
            conn.send_command(0, "_result", txn, None, 0.0)
        elif name == "_checkbw":
            conn.send_command(0, "_result", txn, None, None)
        elif txn:
            conn.send_command(
                0, "_error", txn, None, status("error", "NetConnection.Call.Failed", f"unknown command {name[:64]}")
            )

    def _connect(self, txn: float, command_object: Any) -> None:
        conn = self._conn
        if conn.app:
            raise ProtocolError("bad_command", "second connect on one connection")
        if not isinstance(command_object, dict):
            raise ProtocolError("bad_command", "connect without a command object")
        app = command_object.get("app")
        if not isinstance(app, str) or not app.strip("/"):
            conn.send_command(
                0, "_error", txn, None, status("error", "NetConnection.Connect.Rejected", "missing application name")
            )
            raise ProtocolError("bad_app", "connect without an application name")
        # Some clients put the query string of the URL into the app ("live?token=...").
        conn.app = app.split("?", 1)[0].strip("/")
        tc_url = command_object.get("tcUrl")
        conn.tc_url = tc_url if isinstance(tc_url, str) else ""
        encoding = finite_number(command_object, "objectEncoding")
        window = conn.ctx.config.window_ack_size
        conn.send_control(chunk.WINDOW_ACK_SIZE, struct.pack(">I", window))
        conn.send_control(chunk.SET_PEER_BANDWIDTH, struct.pack(">IB", window, 2))
        conn.send_control(chunk.SET_CHUNK_SIZE, struct.pack(">I", conn.out_chunk_size))
        properties: dict[str, Any] = {"fmsVer": "FMS/3,0,1,123", "capabilities": 31.0, "mode": 1.0}
        if "fourCcList" in command_object:
            # Enhanced RTMP: say which FourCCs we carry.
            properties["fourCcList"] = list(_FOURCC_LIST)
        information = status("status", "NetConnection.Connect.Success", "Connection succeeded.")
        information["objectEncoding"] = encoding
        conn.send_command(0, "_result", txn, properties, information)
        log.info("event=connect protocol=%s peer=%s app=%s", conn.protocol, conn.peer, conn.app)

    # ----- commands that await the authorizer -------------------------------------------

    def _start_pending(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run an awaiting command; reading pauses and later messages wait in order."""
        self._conn.hold_messages()
        self._pending_task = asyncio.get_running_loop().create_task(self._run_pending(coro))

    async def _run_pending(self, coro: Coroutine[Any, Any, None]) -> None:
        conn = self._conn
        try:
            await coro
        except Exception as exc:  # the authorizer failed: refuse, never crash the server
            log.exception("event=command_failed peer=%s", conn.peer)
            conn.fail("internal_error", str(exc))
            return
        finally:
            self._pending_task = None
        conn.release_messages()

    def cancel_pending(self) -> None:
        if self._pending_task is not None:
            self._pending_task.cancel()

    def _start_publish(self, args: list[Any], stream_id: int) -> None:
        conn = self._conn
        if conn.publisher is not None or conn.player is not None:
            raise ProtocolError("bad_command", "publish on a connection that already publishes or plays")
        name, params = split_stream_name(_stream_name(args))
        if not name or len(name) > 256:
            conn.send_status(stream_id, "error", "NetStream.Publish.BadName", "invalid stream name")
            conn.fail("bad_stream_name", "invalid stream name")
            return
        self._start_pending(self._publish(name, params, stream_id))

    async def _publish(self, name: str, params: dict[str, str], stream_id: int) -> None:
        conn = self._conn
        ctx = conn.ctx
        result = await ctx.authorizer.authorize_publish(conn.app, name, params, conn.peer)
        if conn.closed:
            return
        shown = f"{conn.app}/{redact(name)}"
        if isinstance(result, Denied):
            ctx.metrics.publish_denied.labels(result.reason).inc()
            conn.send_status(stream_id, "error", "NetStream.Publish.Unauthorized", "publish not authorized")
            log.warning("event=publish_denied peer=%s stream=%s reason=%s", conn.peer, shown, result.reason)
            conn.fail("publish_denied", result.reason)
            return
        publisher = RtmpPublisher(conn)
        try:
            # The grant names the stream: a database authorizer maps a secret key to its camera id.
            publisher.stream = ctx.hub.publish(result.app, result.name, publisher)
        except StreamTaken:
            ctx.metrics.publish_denied.labels("stream_taken").inc()
            conn.send_status(stream_id, "error", "NetStream.Publish.BadName", "stream is already being published")
            conn.fail("stream_taken", shown)
            return
        conn.publisher = publisher
        conn.cancel_timer()
        conn.send_user_control(UC_STREAM_BEGIN, stream_id)
        conn.send_status(stream_id, "status", "NetStream.Publish.Start", f"{name} is now published.")
        if result.camera_id is not None:
            # The stream is named after the camera, not the secret key: safe to log whole.
            shown = f"{result.app}/{result.name} camera={result.camera_id}"
        log.info("event=publish_start protocol=%s peer=%s stream=%s", conn.protocol, conn.peer, shown)

    def _start_play(self, args: list[Any], stream_id: int) -> None:
        conn = self._conn
        if conn.publisher is not None or conn.player is not None:
            raise ProtocolError("bad_command", "play on a connection that already publishes or plays")
        name, params = split_stream_name(_stream_name(args))
        self._start_pending(self._play(name, params, stream_id))

    async def _play(self, name: str, params: dict[str, str], stream_id: int) -> None:
        conn = self._conn
        ctx = conn.ctx
        result = await ctx.authorizer.authorize_play(conn.app, name, params, conn.peer)
        transport = conn.transport
        if conn.closed or transport is None:  # no transport means closed
            return
        # The requested name may be a key: only its redacted form is logged.
        shown = f"{conn.app}/{redact(name)}"
        if isinstance(result, Denied):
            conn.send_status(stream_id, "error", "NetStream.Play.Failed", "play not authorized")
            conn.fail("play_denied", result.reason)
            return
        # The grant names the stream, as for publish: an authorizer may map the requested name to another.
        # An on-demand source is started for this player and waited for.
        stream = await ctx.hub.find(result.app, result.name)
        if conn.closed or conn.transport is None:
            return
        transport = conn.transport
        if stream is None:
            conn.send_status(stream_id, "error", "NetStream.Play.StreamNotFound", "no such stream")
            conn.fail("stream_not_found", shown)
            return
        conn.cancel_timer()
        conn.send_user_control(UC_STREAM_BEGIN, stream_id)
        conn.send_status(stream_id, "status", "NetStream.Play.Reset", f"Playing and resetting {name}.")
        conn.send_status(stream_id, "status", "NetStream.Play.Start", f"Started playing {name}.")
        conn.write(
            encode_message(
                CSID_DATA,
                chunk.DATA_AMF0,
                stream_id,
                0,
                encode_amf0("|RtmpSampleAccess", True, True),
                conn.out_chunk_size,
            )
        )
        player = RtmpPlayer(conn, transport, stream, stream_id)
        burst_ms = player.send_join_burst()
        conn.player = player
        stream.subscribe(player)
        log.info(
            "event=play_start protocol=%s peer=%s stream=%s burst_ms=%d",
            conn.protocol,
            conn.peer,
            shown,
            burst_ms,
        )
