"""The hub as the control plane of one worker sees it: its own streams, and kicks that reach every worker.

Disabling a camera, rotating its key or deleting it must disconnect its publisher wherever it is connected: a
kick the local hub cannot do (the stream is elsewhere, or nowhere) is passed to the other workers."""

from __future__ import annotations

from mediaserver.cluster.link import MachineLink
from mediaserver.hub import Hub, Stream, StreamListener


class MachineHub:
    def __init__(self, hub: Hub, link: MachineLink) -> None:
        self._hub = hub
        self._link = link
        link.on_kick = self._kicked

    def get(self, app: str, name: str) -> Stream | None:
        return self._hub.get(app, name)

    async def find(self, app: str, name: str) -> Stream | None:
        return await self._hub.find(app, name)

    def list(self) -> list[Stream]:
        return self._hub.list()

    def listen(self, listener: StreamListener) -> None:
        self._hub.listen(listener)

    def kick(self, app: str, name: str, reason: str) -> bool:
        stream = self._hub.get(app, name)
        if stream is not None and not stream.is_copy:
            return self._hub.kick(app, name, reason)
        self._link.send_kick(app, name, reason)
        return self._link.owner(f"{app}/{name}") is not None

    def _kicked(self, app: str, name: str, reason: str) -> None:
        stream = self._hub.get(app, name)
        if stream is not None and not stream.is_copy:
            self._hub.kick(app, name, reason)
