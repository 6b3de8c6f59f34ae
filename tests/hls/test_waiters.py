"""Waiting for a stream's next change: everyone wakes on it at once, a timeout ends a wait (a sweep late at most),
and a waiter that goes away leaves the others waiting."""

from __future__ import annotations

import asyncio

from mediaserver.hls.waiters import SWEEP, ChangeWaiters


async def test_one_wake_ends_every_wait() -> None:
    waiters = ChangeWaiters()
    tasks = [asyncio.ensure_future(waiters.wait(5.0)) for _ in range(500)]
    await asyncio.sleep(0.01)
    assert len(waiters) == 500 and not any(t.done() for t in tasks)
    waiters.wake()
    assert await asyncio.wait_for(asyncio.gather(*tasks), 1) == [True] * 500
    assert len(waiters) == 0
    # A wake with nobody waiting is remembered by nobody: the next wait waits for the next wake.
    waiters.wake()
    late = asyncio.ensure_future(waiters.wait(5.0))
    await asyncio.sleep(0.05)
    assert not late.done()
    waiters.wake()
    assert await late is True


async def test_timeouts_end_waits_within_a_sweep() -> None:
    waiters = ChangeWaiters()
    loop = asyncio.get_running_loop()
    started = loop.time()
    short = asyncio.ensure_future(waiters.wait(0.15))
    long = asyncio.ensure_future(waiters.wait(5.0))
    assert await short is False
    ended = loop.time() - started
    # Never early; late by a sweep at most (plus what a busy machine adds).
    assert 0.15 <= ended <= 0.15 + SWEEP + 0.5, ended
    assert not long.done()
    waiters.wake()
    assert await long is True


async def test_a_cancelled_waiter_leaves_the_others_waiting() -> None:
    waiters = ChangeWaiters()
    gone = asyncio.ensure_future(waiters.wait(5.0))
    staying = [asyncio.ensure_future(waiters.wait(5.0)) for _ in range(3)]
    await asyncio.sleep(0.01)
    gone.cancel()
    await asyncio.sleep(SWEEP * 2)
    assert gone.cancelled() and not any(t.done() for t in staying)
    waiters.wake()
    assert await asyncio.gather(*staying) == [True] * 3
