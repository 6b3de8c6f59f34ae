"""The control plane's events: one bus per process, shared between nodes through Redis pub/sub when configured."""

from control.events.bus import Event, EventBus, EventName

__all__ = ["Event", "EventBus", "EventName"]
