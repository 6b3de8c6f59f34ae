"""Events between the workers of one machine when there is no Redis: each worker sends its own events to its
parent, which passes them to the other workers (mediaserver.cluster.coordinator)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from control.events.bus import Event, EventBus


class EventLink(Protocol):
    """What a worker's parent link offers for events (mediaserver.cluster.link.MachineLink)."""

    on_event: Callable[[str], None] | None

    def send_event(self, raw: str) -> None: ...


class MachineRelay:
    def __init__(self, bus: EventBus, link: EventLink) -> None:
        self._bus = bus
        self._link = link

    def send(self, event: Event) -> None:
        self._link.send_event(event.relayed())

    def start(self) -> None:
        self._bus.relay = self
        self._link.on_event = self._bus.deliver

    async def stop(self) -> None:
        self._bus.relay = None
        self._link.on_event = None
