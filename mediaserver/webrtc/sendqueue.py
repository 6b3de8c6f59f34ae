"""The RTP sends of every WHEP viewer, done on the event loop in bounded slices.

A feed hands over one batch per frame: the frame's payloads (shared) and, for each viewer, its numbered
share (`rtpout.Target`). A slice protects and sends at most `slice_packets` packets (about a millisecond),
then lets the loop run before the next one, so a keyframe for a hundred viewers never holds the loop long.
Batches go out in order, so each viewer's packets do too.

Why the loop and not a thread: the per-packet work is two short C calls (SRTP protect, sendto) around a little
Python. Both release the GIL, and a thread that gives the GIL up a few microseconds at a time gets it back only
when the loop thread pauses or after the 5 ms switch interval: whenever the loop is busy the thread would
crawl (the GIL's convoy effect), and the hand-overs cost more than they save.
"""

from __future__ import annotations

import asyncio
import collections
import time

from mediaserver.webrtc.rtpout import Target, abs_send_time

# Packets per slice: a few microseconds each, so about a millisecond of loop time.
SLICE_PACKETS = 128
# The oldest batch waiting longer than this (seconds) and the loop is not keeping up: new delta frames are
# dropped, viewers wait for the next keyframe (the delay stays bounded, the publisher is never slowed). A
# keyframe for a hundred viewers takes a few tens of milliseconds.
MAX_QUEUE_DELAY = 0.25


class _Batch:
    __slots__ = ("index", "payloads", "submitted", "targets")

    def __init__(self, payloads: list[bytes], targets: list[Target], submitted: float) -> None:
        self.payloads = payloads
        self.targets = targets
        self.submitted = submitted  # time.monotonic()
        self.index = 0  # the next target to send to


class SendQueue:
    def __init__(self, slice_packets: int = SLICE_PACKETS, max_delay: float = MAX_QUEUE_DELAY) -> None:
        self._slice = slice_packets
        self._max_delay = max_delay
        self._batches: collections.deque[_Batch] = collections.deque()
        self._handle: asyncio.Handle | None = None
        self.backlog = 0
        self.slices = 0
        self.packets = 0

    @property
    def delay(self) -> float:
        """How long the oldest batch has waited (s)."""
        return time.monotonic() - self._batches[0].submitted if self._batches else 0.0

    @property
    def overloaded(self) -> bool:
        """The oldest batch has waited `max_delay` or longer."""
        batches = self._batches
        return bool(batches) and time.monotonic() - batches[0].submitted >= self._max_delay

    def submit(self, payloads: list[bytes], targets: list[Target]) -> None:
        self._batches.append(_Batch(payloads, targets, time.monotonic()))
        self.backlog += len(payloads) * len(targets)
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_soon(self._run)

    def _run(self) -> None:
        self._handle = None
        self.slices += 1
        budget = self._slice
        abs_time = abs_send_time(time.time())
        batches = self._batches
        sent = 0
        while batches and sent < budget:
            batch = batches[0]
            payloads = batch.payloads
            targets = batch.targets
            index = batch.index
            size = len(payloads)
            count = len(targets)
            while index < count and sent < budget:
                out, seq, timestamp, marker = targets[index]
                out.send(payloads, seq, timestamp, marker, abs_time)
                index += 1
                sent += size
            if index == count:
                batches.popleft()
            else:
                batch.index = index
        self.backlog -= sent
        self.packets += sent
        if batches:
            self._handle = asyncio.get_running_loop().call_soon(self._run)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._batches.clear()
        self.backlog = 0
