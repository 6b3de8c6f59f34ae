"""The hub's stream events on the bus: stream-started and stream-stopped, with the camera they belong to."""

from __future__ import annotations

from control.api.base import CAMERA_ID
from control.events.bus import EventBus, EventName
from control.rbac import Permission
from mediaserver.events import StreamEvent, StreamEventKind

NAMES = {StreamEventKind.STARTED: EventName.STREAM_STARTED, StreamEventKind.STOPPED: EventName.STREAM_STOPPED}


class StreamEvents:
    def __init__(self, bus: EventBus, app: str) -> None:
        self._bus = bus
        self._app = app

    def on_hub_event(self, event: StreamEvent) -> None:
        name = NAMES.get(event.kind)
        if name is None or event.stream.is_copy:  # the holder of the stream tells of it
            return
        stream = event.stream
        camera_id = stream.name if stream.app == self._app and CAMERA_ID.match(stream.name) else None
        data = {"app": stream.app, "name": stream.name, "protocol": stream.publisher.protocol}
        # A camera's stream is a camera's business; other streams (open publishing) are for streams:read.
        permission = Permission.CAMERAS_READ if camera_id is not None else Permission.STREAMS_READ
        self._bus.publish(name, data, camera_id, permission)
