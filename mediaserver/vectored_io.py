"""Writing a list of buffers to a file in as few system calls as the kernel allows.

Shared by the HLS spill files and the recorder: both hand over a fragment as its boxes followed by views of
the samples, and neither should join them into one copy first.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

Buffer = bytes | memoryview

# Linux's UIO_MAXIOV: the most buffers one writev/pwritev takes.
IOV_MAX = 1024


def write_all(fd: int, chunks: Sequence[Buffer], offset: int | None = None) -> int:
    """Write every byte of `chunks` in order, at `offset` (pwritev) or at the file's position (writev).

    A short write (a signal, a nearly full disk) goes on from where it stopped. Returns the bytes written."""
    views = [memoryview(chunk) for chunk in chunks]
    total = 0
    first = 0
    while first < len(views):
        batch = views[first : first + IOV_MAX]
        written = os.writev(fd, batch) if offset is None else os.pwritev(fd, batch, offset + total)
        total += written
        # Past every buffer the call finished (empty ones too), then into the one it stopped in, if any.
        while first < len(views) and written >= len(views[first]):
            written -= len(views[first])
            first += 1
        if written:
            views[first] = views[first][written:]
    return total


def past(chunks: Sequence[Buffer], skip: int) -> list[Buffer]:
    """The buffers that follow the first `skip` bytes of `chunks` (a view where one is cut), without copying."""
    rest: list[Buffer] = []
    for chunk in chunks:
        if skip >= len(chunk):
            skip -= len(chunk)
            continue
        if skip:
            chunk, skip = memoryview(chunk)[skip:], 0
        rest.append(chunk)
    return rest
