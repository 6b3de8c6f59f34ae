"""One task that applies queued work in order: what sync callbacks (hub events, the recorder) hand to the database.

Callbacks on the event loop must not await; they `put` an item and one worker applies items one after the other,
so the database sees changes in the order they happened. A failing item is logged and the next one still runs.
With `every`, the worker also runs `on_quiet` when no item came for that long (periodic refreshes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger("control.ordered")

T = TypeVar("T")
_STOP = object()


class OrderedWorker(Generic[T]):
    def __init__(
        self,
        apply: Callable[[T], Awaitable[None]],
        name: str,
        every: float | None = None,
        on_quiet: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._apply = apply
        self._name = name
        self._every = every
        self._on_quiet = on_quiet
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def put(self, item: T) -> None:
        self._queue.put_nowait(item)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, timeout: float = 10.0) -> None:
        """Apply what is queued (up to `timeout`), then end the worker."""
        if self._task is None:
            return
        self._queue.put_nowait(_STOP)
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=timeout)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    async def drained(self) -> None:
        """Wait until every item queued so far has been applied, the last one included (not only taken)."""
        await self._queue.join()

    async def _run(self) -> None:
        while True:
            try:
                item = await asyncio.wait_for(self._queue.get(), timeout=self._every)
            except TimeoutError:
                if self._on_quiet is not None:
                    await self._guard(self._on_quiet())
                continue
            if item is _STOP:
                self._queue.task_done()
                return
            try:
                await self._guard(self._apply(item))  # type: ignore[arg-type]
            finally:
                self._queue.task_done()

    async def _guard(self, work: Awaitable[None]) -> None:
        try:
            await work
        except Exception:
            log.exception("event=ordered_work_failed worker=%s", self._name)
