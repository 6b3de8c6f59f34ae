"""Requests waiting for a stream to change (LL-HLS blocking reloads, preload-hinted parts), woken together.

Thousands of viewers of one stream wait on it at once, each for a few hundred milliseconds and with a timeout of
seconds. Each gets a bare future, no task (as `asyncio.wait_for` makes) and no timer of its own (as
`asyncio.timeout` makes): one sweep per stream, every `SWEEP` seconds while anyone waits, ends the waits that timed
out. A timeout may so end up to `SWEEP` late; the timeouts here are seconds long (HOLD-BACK).
"""

from __future__ import annotations

import asyncio

SWEEP = 0.1


class ChangeWaiters:
    __slots__ = ("_sweeper", "_waiting")

    def __init__(self) -> None:
        # (deadline on the loop's clock, the waiter's future), in the order they came.
        self._waiting: list[tuple[float, asyncio.Future[bool]]] = []
        self._sweeper: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._waiting)

    async def wait(self, timeout: float) -> bool:
        """True once `wake` is called, False if `timeout` seconds pass first."""
        # A waiter cancelled (its request gone) is its own future cancelled: the others do not notice.
        return await self.future(timeout)

    def future(self, timeout: float) -> asyncio.Future[bool]:
        """The future `wait` awaits: True once `wake` is called, False if `timeout` seconds pass first."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiting.append((loop.time() + timeout, waiter))
        if self._sweeper is None:
            self._sweeper = loop.call_later(SWEEP, self._sweep, loop)
        return waiter

    def wake(self) -> None:
        """Wake everyone waiting now."""
        waiting, self._waiting = self._waiting, []
        for _, waiter in waiting:
            if not waiter.done():
                waiter.set_result(True)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        keep: list[tuple[float, asyncio.Future[bool]]] = []
        for deadline, waiter in self._waiting:
            if waiter.done():
                continue
            if deadline <= now:
                waiter.set_result(False)
            else:
                keep.append((deadline, waiter))
        self._waiting = keep
        self._sweeper = loop.call_later(SWEEP, self._sweep, loop) if keep else None
