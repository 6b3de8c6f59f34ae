"""WebSocket /api/v1/ws: the dashboard's live feed of events, and camera control.

A client authenticates with an access token or API token (in its first message, or as `?token=`; never logged),
joins rooms (`all`, `camera:<id>`) and gets the events of those rooms that its role may see. Events are encoded
once (`Event.wire`) and written to clients on a short tick: one write per client per tick, so a burst of events
costs a few writes, not one per event and client. A client whose backlog passes `ws_queue_events` is closed
(1013): it reconnects and resumes from the last id it saw, and nothing is buffered without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from prometheus_client import CollectorRegistry, Counter, Gauge

from control.api.authn import authenticate_credentials, bearer
from control.api.base import CAMERA_ID, ApiError
from control.api.cameras import camera_view, rotate_camera_key, set_camera_enabled
from control.api.recordings import switch_recording
from control.events import Event, EventBus
from control.events.bus import Replayable, dumps
from control.rbac import Permission
from control.services import Principal, Services, client_ip
from mediaserver.config import EventsConfig

log = logging.getLogger("control.websocket")

WS_PATH = "/api/v1/ws"
# Close codes: 1008 policy (bad token, refused), 1009 too large, 1003 unsupported data, 1013 try again later.
CLOSE_POLICY = WSCloseCode.POLICY_VIOLATION
CLOSE_TOO_LARGE = WSCloseCode.MESSAGE_TOO_BIG
CLOSE_UNSUPPORTED = WSCloseCode.UNSUPPORTED_DATA
CLOSE_BEHIND = WSCloseCode.TRY_AGAIN_LATER
# Frames above this are refused by aiohttp itself; between ws_max_message_bytes and this, we answer an error.
HARD_FRAME_LIMIT = 1 << 20
# A client making this many bad messages (unknown type, too large, not JSON) is closed.
STRIKES = 2
# Seconds a dropped client has to take the close frame before its socket is cut.
CLOSE_GRACE = 2.0
CONTROL_ACTIONS = ("start-recording", "stop-recording", "enable", "disable", "rotate-key")


@dataclass(eq=False)
class Client:
    ws: web.WebSocketResponse
    who: Principal
    # Kept (in memory only) to check the caller again before each camera-control.
    token: str
    ip: str
    batch: bool
    rooms: set[str] = field(default_factory=set)
    # Events chosen for this client since the last tick, then messages waiting to be written with the number
    # of events each carries (the backlog is their sum).
    pending: list[Event] = field(default_factory=list)
    outbox: deque[tuple[str, int]] = field(default_factory=deque)
    backlog: int = 0
    strikes: int = 0
    closing: bool = False
    transport: asyncio.Transport | None = None
    # Bytes the socket's send buffer may hold before a write would have to wait for the client.
    high_water: int = 65536
    # The client's own writer task, only while it is behind (its socket buffer full) or a reply is going out.
    writer: asyncio.Task[None] | None = None
    # The close the server started (dropped: slow, strikes, auth), which the handler waits for.
    closer: asyncio.Task[None] | None = None

    def sees(self, event: Event) -> bool:
        return event.permission in self.who.permissions and in_rooms(self.rooms, event)


def in_rooms(rooms: set[str], event: Event | Replayable) -> bool:
    return "all" in rooms or (event.camera_id is not None and f"camera:{event.camera_id}" in rooms)


def batch_message(events: list[Event]) -> str:
    return '{"type":"batch","events":[' + ",".join(e.wire() for e in events) + "]}"


class WebSocketGateway:
    def __init__(
        self, svc: Services, bus: EventBus, config: EventsConfig, registry: CollectorRegistry | None = None
    ) -> None:
        self._svc = svc
        self._bus = bus
        self._config = config
        self._clients: set[Client] = set()
        self._flush_handle: asyncio.TimerHandle | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._clients_gauge = Gauge("mediaserver_ws_clients", "WebSocket clients connected", registry=registry)
        self._dropped = Counter(
            "mediaserver_ws_dropped", "WebSocket clients closed by the server", ["reason"], registry=registry
        )
        self._sent = Counter("mediaserver_ws_messages_sent", "WebSocket messages written", registry=registry)
        for reason in ("slow", "auth", "strikes"):
            self._dropped.labels(reason)

    def start(self) -> None:
        if self._unsubscribe is None:
            self._unsubscribe = self._bus.subscribe(self._on_event)

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for client in list(self._clients):
            await client.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")

    @property
    def client_count(self) -> int:
        return len(self._clients)

    # ----- fan-out ---------------------------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        chosen = False
        for client in self._clients:
            if client.sees(event):
                client.pending.append(event)
                chosen = True
        if chosen and self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(self._config.ws_flush_interval, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        # Clients that chose the same events share one encoded batch.
        batches: dict[tuple[int, ...], str] = {}
        ready: list[Client] = []
        for client in self._clients:
            events = client.pending
            if not events:
                continue
            client.pending = []
            client.backlog += len(events)
            if client.backlog > self._config.ws_queue_events:
                self._drop(client, "slow", CLOSE_BEHIND, "too far behind: reconnect and resume")
                continue
            if client.batch and len(events) > 1:
                key = tuple(e.id for e in events)
                message = batches.get(key)
                if message is None:
                    message = batches[key] = batch_message(events)
                client.outbox.append((message, len(events)))
            else:
                client.outbox.extend((e.wire(), 1) for e in events)
            ready.append(client)
        if ready:
            asyncio.get_running_loop().create_task(self._write_ready(ready))

    async def _write_ready(self, clients: list[Client]) -> None:
        """One task per tick writes to every client whose socket takes the bytes now: those writes complete
        without waiting, so a thousand clients cost a thousand writes, not a thousand task switches."""
        sent = 0
        for client in clients:
            if client.writer is None and not client.closing:
                sent += await self._write_inline(client)
        self._sent.inc(sent)

    async def _write_inline(self, client: Client) -> int:
        transport = client.transport
        sent = 0
        try:
            while client.outbox and not client.closing:
                message, events = client.outbox[0]
                if transport is None or transport.get_write_buffer_size() + len(message) + 16 > client.high_water:
                    # This write could wait for the client: its own task waits, nobody else does.
                    self._start_writer(client)
                    break
                client.outbox.popleft()
                await client.ws.send_str(message)
                client.backlog -= events
                sent += 1
        except ConnectionError:
            client.closing = True
        return sent

    def _start_writer(self, client: Client) -> None:
        if client.writer is None and not client.closing:
            client.writer = asyncio.get_running_loop().create_task(self._writer(client))

    def _drop(self, client: Client, reason: str, code: int, message: str) -> None:
        if client.closing:
            return
        client.closing = True
        self._dropped.labels(reason).inc()
        log.info("event=ws_dropped reason=%s user=%s peer=%s", reason, client.who.username, client.ip)
        client.outbox.clear()
        # No more events for it; the handler's own clean-up runs once the connection is gone.
        self._clients.discard(client)
        self._clients_gauge.set(len(self._clients))
        client.closer = asyncio.get_running_loop().create_task(self._close(client, code, message))

    async def _close(self, client: Client, code: int, message: str) -> None:
        """A polite close, and the socket cut if the client does not take it (its buffers are full)."""
        try:
            async with asyncio.timeout(CLOSE_GRACE):
                await client.ws.close(code=code, message=message.encode())
        except (TimeoutError, ConnectionError):
            if client.transport is not None:
                client.transport.abort()

    async def _writer(self, client: Client) -> None:
        """A client's own writer: drains its outbox, waiting for its socket as long as needed, then ends."""
        ws = client.ws
        try:
            while client.outbox and not client.closing and not ws.closed:
                message, events = client.outbox.popleft()
                await ws.send_str(message)
                client.backlog -= events
                self._sent.inc()
        except ConnectionError:
            client.closing = True
        finally:
            client.writer = None

    # ----- one connection --------------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if len(self._clients) >= self._config.ws_max_clients:
            return web.json_response(
                {"error": {"code": "too_many_clients", "message": "too many WebSocket clients"}}, status=503
            )
        ws = web.WebSocketResponse(
            heartbeat=self._config.ws_heartbeat, max_msg_size=HARD_FRAME_LIMIT, compress=False, autoping=True
        )
        if not ws.can_prepare(request).ok:
            return web.json_response(
                {"error": {"code": "websocket_required", "message": "connect with a WebSocket client"}}, status=400
            )
        await ws.prepare(request)
        ip = client_ip(request)
        authenticated = await self._authenticate(request, ws)
        if authenticated is None:
            self._dropped.labels("auth").inc()
            return ws
        who, token = authenticated
        batch = request.query.get("batch", "") in ("1", "true")
        client = Client(ws, who, token, ip, batch)
        client.transport = request.transport
        if client.transport is not None:
            client.high_water = client.transport.get_write_buffer_limits()[1] or client.high_water
        self._clients.add(client)
        self._clients_gauge.set(len(self._clients))
        log.info("event=ws_connected user=%s peer=%s", who.username, ip)
        try:
            await self._send_now(
                client,
                {
                    "type": "welcome",
                    "user": {"id": who.user_id, "username": who.username, "role": who.role},
                    "permissions": sorted(p.value for p in who.permissions),
                    "last_event_id": self._bus.last_id,
                },
            )
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    await self._on_text(request, client, message.data)
                elif message.type == WSMsgType.BINARY:
                    await self._strike(client, "bad_message", "send JSON text messages", CLOSE_UNSUPPORTED)
                elif message.type == WSMsgType.ERROR:
                    break
                if client.closing:
                    break
        finally:
            client.closing = True
            self._clients.discard(client)
            self._clients_gauge.set(len(self._clients))
            writer = client.writer
            if writer is not None:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await writer
            if client.closer is not None:
                await client.closer
            log.info("event=ws_closed user=%s peer=%s code=%s", who.username, ip, ws.close_code)
        return ws

    async def _authenticate(self, request: web.Request, ws: web.WebSocketResponse) -> tuple[Principal, str] | None:
        token = request.query.get("token") or bearer(request)
        if not token:
            try:
                first = await ws.receive(timeout=self._config.ws_auth_timeout)
            except TimeoutError:
                await ws.close(code=CLOSE_POLICY, message=b"authenticate first")
                return None
            token = _auth_token(first.data) if first.type == WSMsgType.TEXT else None
            if token is None:
                await ws.close(code=CLOSE_POLICY, message=b'the first message must be {"type": "auth", "token": ...}')
                return None
        try:
            return await authenticate_credentials(request, self._svc, token), token
        except ApiError as exc:
            # The reason (expired, revoked, not valid), never the token.
            await ws.close(code=CLOSE_POLICY, message=exc.code.encode())
            return None

    async def _send_now(self, client: Client, body: dict[str, Any]) -> None:
        """Replies go through the outbox too, so that they keep their place after earlier events."""
        client.outbox.append((dumps(body), 0))
        self._start_writer(client)

    async def _strike(self, client: Client, code: str, message: str, close_code: int) -> None:
        client.strikes += 1
        if client.strikes >= STRIKES:
            self._drop(client, "strikes", close_code, message)
            return
        await self._send_now(client, {"type": "error", "code": code, "message": message})

    async def _on_text(self, request: web.Request, client: Client, text: str) -> None:
        if len(text) > self._config.ws_max_message_bytes:
            await self._strike(
                client,
                "too_large",
                f"messages are limited to {self._config.ws_max_message_bytes} bytes",
                CLOSE_TOO_LARGE,
            )
            return
        try:
            message = json.loads(text)
        except ValueError:
            message = None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            await self._strike(client, "bad_message", 'send a JSON object with a "type"', CLOSE_UNSUPPORTED)
            return
        kind = message["type"]
        handler = self._handlers().get(kind)
        if handler is None:
            await self._strike(client, "unknown_type", f"unknown message type {kind[:40]!r}", CLOSE_UNSUPPORTED)
            return
        await handler(request, client, message)

    def _handlers(
        self,
    ) -> dict[str, Callable[[web.Request, Client, dict[str, Any]], Awaitable[None]]]:
        return {
            "join-room": self._join,
            "leave-room": self._leave,
            "ping": self._ping,
            "camera-control": self._control,
            "auth": self._reauth,
        }

    async def _ping(self, request: web.Request, client: Client, message: dict[str, Any]) -> None:
        await self._send_now(client, {"type": "pong"})

    async def _join(self, request: web.Request, client: Client, message: dict[str, Any]) -> None:
        room = _room(message.get("room"))
        if room is None:
            await self._send_now(
                client, {"type": "error", "code": "bad_room", "message": 'room is "all" or "camera:<id>"'}
            )
            return
        since = message.get("since")
        replay: list[Replayable] | None = []
        if isinstance(since, int) and not isinstance(since, bool):
            replay = self._bus.since(since)
        before = set(client.rooms)
        client.rooms.add(room)
        await self._send_now(client, {"type": "joined", "room": room})
        if replay is None:
            await self._send_now(client, {"type": "resync", "room": room})
            return
        # Missed events of the new room (not those another room of the client already carried), ahead of
        # anything new: pending events are written at the next tick, after the outbox.
        perms = client.who.permissions
        for event in replay:
            if event.permission in perms and in_rooms({room}, event) and not in_rooms(before, event):
                client.outbox.append((event.wire(), 1))
                client.backlog += 1
        self._start_writer(client)

    async def _leave(self, request: web.Request, client: Client, message: dict[str, Any]) -> None:
        room = _room(message.get("room"))
        if room is not None:
            client.rooms.discard(room)
        await self._send_now(client, {"type": "left", "room": room})

    async def _reauth(self, request: web.Request, client: Client, message: dict[str, Any]) -> None:
        """A fresh token on an open connection (after a refresh): the role is read again."""
        token = message.get("token")
        try:
            if not isinstance(token, str) or not token:
                raise ApiError(401, "invalid_token", "the token is not valid")
            client.who = await authenticate_credentials(request, self._svc, token)
            client.token = token
        except ApiError as exc:
            self._drop(client, "auth", CLOSE_POLICY, exc.code)
            return
        await self._send_now(
            client, {"type": "authenticated", "permissions": sorted(p.value for p in client.who.permissions)}
        )

    async def _control(self, request: web.Request, client: Client, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        camera_id = message.get("camera_id")
        action = message.get("action")
        if not isinstance(camera_id, str) or not CAMERA_ID.match(camera_id) or action not in CONTROL_ACTIONS:
            await self._send_now(
                client,
                {
                    "type": "error",
                    "id": request_id,
                    "code": "bad_request",
                    "message": f"camera-control needs camera_id and action in {', '.join(CONTROL_ACTIONS)}",
                },
            )
            return
        try:
            # The caller as the database says now: a demotion, a sign-out or a revoked token applies at once.
            client.who = await authenticate_credentials(request, self._svc, client.token)
        except ApiError as exc:
            self._drop(client, "auth", CLOSE_POLICY, exc.code)
            return
        who = client.who.actor(client.ip)
        audit_action = _audit_action(str(action))
        if Permission.CAMERAS_WRITE not in client.who.permissions:
            await self._svc.audit.record(
                audit_action,
                who,
                "camera",
                camera_id,
                success=False,
                details={"via": "websocket", "reason": "forbidden"},
            )
            log.info("event=ws_control_refused user=%s action=%s camera=%s", client.who.username, action, camera_id)
            await self._send_now(
                client,
                {
                    "type": "error",
                    "id": request_id,
                    "code": "forbidden",
                    "message": "this needs the cameras:write permission",
                },
            )
            return
        try:
            result = await self._apply_control(camera_id, str(action), who)
        except ApiError as exc:
            await self._send_now(client, {"type": "error", "id": request_id, "code": exc.code, "message": exc.message})
            return
        await self._send_now(client, {"type": "control-result", "id": request_id, "ok": True, **result})

    async def _apply_control(self, camera_id: str, action: str, who: Any) -> dict[str, Any]:
        svc = self._svc
        if action in ("start-recording", "stop-recording"):
            recording = await switch_recording(svc, camera_id, action == "start-recording", who)
            return {"camera_id": camera_id, "recording": recording}
        if action == "rotate-key":
            camera = await rotate_camera_key(svc, camera_id, who)
        else:
            camera = await set_camera_enabled(svc, camera_id, action == "enable", who)
        return {"camera": camera_view(svc, camera, None, True).model_dump(mode="json")}


def _audit_action(action: str) -> str:
    return {
        "start-recording": "recording.start",
        "stop-recording": "recording.stop",
        "enable": "camera.enable",
        "disable": "camera.disable",
        "rotate-key": "camera.rotate_key",
    }[action]


def _auth_token(text: str) -> str | None:
    try:
        message = json.loads(text)
    except ValueError:
        return None
    if isinstance(message, dict) and message.get("type") == "auth" and isinstance(message.get("token"), str):
        return str(message["token"]) or None
    return None


def _room(value: object) -> str | None:
    if value == "all":
        return "all"
    if isinstance(value, str) and value.startswith("camera:") and CAMERA_ID.match(value[7:]):
        return value
    return None
