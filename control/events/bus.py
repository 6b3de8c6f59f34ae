"""The event bus: what the WebSocket clients (the dashboard), the alert engine and other nodes hear.

`publish` is synchronous and cheap (it runs in hub callbacks and API handlers on the event loop): the event gets
the next id, goes into the replay window and to every local subscriber at once. A relay (Redis pub/sub) carries
local events to other nodes and hands theirs to `deliver`. Ids are this process's: increasing, and above every id
an earlier run of the process gave out (they start from the clock), so a client that comes back with an id from
another process or node is told to resync instead of being given the wrong events.
"""

from __future__ import annotations

import enum
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

from prometheus_client import CollectorRegistry, Counter

from control.rbac import Permission

log = logging.getLogger("control.events")


class EventName(enum.StrEnum):
    CAMERA_STATUS = "camera-status"
    CAMERA_UPDATED = "camera-updated"
    CAMERA_DELETED = "camera-deleted"
    STREAM_STARTED = "stream-started"
    STREAM_STOPPED = "stream-stopped"
    RECORDING_STARTED = "recording-started"
    RECORDING_CLOSED = "recording-closed"
    SYSTEM_ALERT = "system-alert"
    DASHBOARD_UPDATE = "dashboard-update"


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, enum.Enum):
        return value.value
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), default=_json_default)


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    name: str
    at: float
    camera_id: str | None
    data: Mapping[str, Any]
    # Who may see it: a client needs this permission.
    permission: Permission
    # The node that raised it (events from other nodes arrive through the relay).
    origin: str
    _wire: list[str] = field(default_factory=list, repr=False, compare=False)

    def wire(self) -> str:
        """The WebSocket message, encoded once however many clients get it."""
        if not self._wire:
            self._wire.append(
                dumps(
                    {
                        "type": "event",
                        "id": self.id,
                        "event": self.name,
                        "at": iso(self.at),
                        "camera_id": self.camera_id,
                        "data": self.data,
                    }
                )
            )
        return self._wire[0]

    def relayed(self) -> str:
        """The form other nodes receive (no id: each node numbers what it delivers)."""
        return dumps(
            {
                "origin": self.origin,
                "name": self.name,
                "at": self.at,
                "camera_id": self.camera_id,
                "data": self.data,
                "permission": self.permission.value,
            }
        )


class Replayable(NamedTuple):
    """What the replay window keeps of an event: its wire form and who may see it. Plain values only, so the
    garbage collector does not track thousands of event dicts (its full passes held the loop for 0.1-0.3 s)."""

    id: int
    at: float
    camera_id: str | None
    permission: str
    message: str

    def wire(self) -> str:
        return self.message


class Relay(Protocol):
    """Carries this node's events to the others (and theirs back through `EventBus.deliver`)."""

    def send(self, event: Event) -> None: ...


Subscriber = Callable[[Event], None]


class EventBus:
    def __init__(
        self,
        node_id: str,
        replay_events: int = 2000,
        replay_seconds: float = 120.0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.node_id = node_id
        self._replay_seconds = replay_seconds
        self._window: deque[Replayable] = deque(maxlen=max(1, replay_events))
        self._subscribers: list[Subscriber] = []
        self._last_id = int(time.time() * 1000) * 1000
        # The newest id no longer in the window: a client that saw less than this has missed events.
        self._lost_up_to = self._last_id
        self.relay: Relay | None = None
        self._published = Counter("mediaserver_events", "Events delivered on this node", ["event"], registry=registry)

    @property
    def last_id(self) -> int:
        return self._last_id

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe

    def publish(
        self,
        name: EventName,
        data: Mapping[str, Any],
        camera_id: str | None = None,
        permission: Permission = Permission.CAMERAS_READ,
    ) -> Event:
        """Raise an event on this node: delivered here at once, and relayed to the other nodes."""
        event = self._deliver(name.value, time.time(), camera_id, data, permission, self.node_id)
        if self.relay is not None:
            self.relay.send(event)
        return event

    def deliver(self, raw: str) -> None:
        """An event from another node (the relay's wire form); this node's own echo is ignored."""
        try:
            item = json.loads(raw)
            if item["origin"] == self.node_id:
                return
            EventName(item["name"])  # only known events travel on
            self._deliver(
                item["name"],
                float(item["at"]),
                item.get("camera_id"),
                dict(item.get("data") or {}),
                Permission(item["permission"]),
                str(item["origin"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("event=event_relay_bad_message error=%s", type(exc).__name__)

    def _deliver(
        self,
        name: str,
        at: float,
        camera_id: str | None,
        data: Mapping[str, Any],
        permission: Permission,
        origin: str,
    ) -> Event:
        self._last_id = max(self._last_id + 1, int(time.time() * 1000) * 1000)
        event = Event(self._last_id, name, at, camera_id, data, permission, origin)
        # dashboard-update is a snapshot, superseded by the next one: replaying old ones helps nobody.
        if name != EventName.DASHBOARD_UPDATE:
            self._remember(event)
        self._published.labels(name).inc()
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:
                log.exception("event=event_subscriber_failed event_name=%s", name)
        return event

    def since(self, last_id: int) -> list[Replayable] | None:
        """Events after `last_id` still in the replay window, in order; None when some of them are gone (too
        old, too many) or the id is not one this process gave out: the client reloads its state instead."""
        self._trim(time.time())
        if last_id > self._last_id or last_id < self._lost_up_to:
            return None
        return [event for event in self._window if event.id > last_id]

    def _remember(self, event: Event) -> None:
        if len(self._window) == self._window.maxlen:
            self._lost_up_to = self._window.popleft().id
        self._window.append(Replayable(event.id, event.at, event.camera_id, event.permission.value, event.wire()))
        self._trim(event.at)

    def _trim(self, now: float) -> None:
        horizon = now - self._replay_seconds
        while self._window and self._window[0].at < horizon:
            self._lost_up_to = self._window.popleft().id
