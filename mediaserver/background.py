"""A long-running coroutine owned by a service: started once, cancelled and awaited on stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

log = logging.getLogger("mediaserver.background")


class BackgroundTask:
    def __init__(self, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._run = run
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @classmethod
    def every(cls, seconds: float, tick: Callable[[], Awaitable[None] | None], name: str) -> BackgroundTask:
        """`tick()` (plain or async) every `seconds`; a failing tick is logged and the next one still runs."""

        async def run() -> None:
            while True:
                await asyncio.sleep(seconds)
                try:
                    result = tick()
                    if result is not None:
                        await result
                except Exception:
                    log.exception("event=periodic_task_failed task=%s", name)

        return cls(run)
