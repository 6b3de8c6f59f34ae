"""Complete HLS segments written out of the process's memory, as nginx-rtmp keeps its HLS on disk.

A live stream's window (6 segments of 2 s by default) is most of what the server holds per stream; the newest
segments stay in memory, older ones move to anonymous temporary files (unlinked from the start, so nothing is
left behind after a crash) and are served from there (the page cache, in practice: they were just written).

Writes run in one thread shared by every stream and reads in the default executor, never on the event loop. A
viewer's copy goes from the file to its socket with sendfile when the socket takes it at once (`send_spilled`):
no copy of the bytes through this process.
Each stream appends its segments to a file until the file holds a window's worth, then starts the next one; a
file is closed once none of its segments is in a playlist and no read is in flight, so a stream keeps at most
about two windows on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from mediaserver.vectored_io import Buffer, write_all

log = logging.getLogger("mediaserver.hls")


class SpillFile:
    """One anonymous file that a stream's segments are appended to."""

    __slots__ = ("closed", "end", "fd", "refs", "retired", "segments")

    def __init__(self) -> None:
        # Opened by the writer thread before its first write; reads only follow a finished write.
        self.fd = -1
        self.end = 0
        self.segments = 0
        # Segments in the window stored here, writes and reads in flight.
        self.refs = 0
        # No more segments will be appended.
        self.retired = False
        self.closed = False


@dataclass(slots=True, frozen=True)
class SpilledRange:
    """Where a segment's bytes are: `length` bytes at `offset` of `file`."""

    file: SpillFile
    offset: int
    length: int


class SpillWriter:
    """The thread that writes segments out (shared by every stream), and the temporary directory they go to."""

    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="hls-spill")
        self.errors = 0
        self._warned = False

    def submit(self, job: Callable[[], None]) -> Future[None]:
        return self._executor.submit(job)

    def close_fd(self, fd: int) -> None:
        # Freeing an unlinked file's blocks can take a while: not on the event loop, unless shutting down.
        try:
            self._executor.submit(os.close, fd)
        except RuntimeError:
            os.close(fd)

    def open_fd(self) -> int:
        """An anonymous file (O_TMPFILE where the file system has it): no name, gone when closed."""
        if self.directory:
            os.makedirs(self.directory, exist_ok=True)  # in the writer thread, like the file itself
        with tempfile.TemporaryFile(dir=self.directory, prefix="mediaserver-hls-") as handle:
            return os.dup(handle.fileno())

    def failed(self, exc: BaseException) -> None:
        self.errors += 1
        if not self._warned:
            # Disk full or read-only: the segment stays in memory; said once, counted always.
            self._warned = True
            log.warning("event=hls_spill_failed directory=%s error=%s", self.directory or tempfile.gettempdir(), exc)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def _read_all(fd: int, offset: int, length: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) == length:
        return data
    pieces = [data]
    got = len(data)
    while got < length:
        more = os.pread(fd, length - got, offset + got)
        if not more:
            raise OSError(f"HLS spill file ends {length - got} bytes early")
        pieces.append(more)
        got += len(more)
    return b"".join(pieces)


def send_spilled(sock: int, spilled: SpilledRange, start: int, count: int) -> int:
    """Send `count` bytes from `start` within the stored segment straight from its file to the non-blocking socket
    `sock`, as far as the socket takes them now; how many it took (0 when the file is gone or sendfile fails).

    On the event loop, and it does not wait: the socket is non-blocking, and the bytes are in the page cache (the
    segment was written moments ago, and the HLS service reads it back through the executor before it answers,
    which is also the copy a socket that takes only part of it gets the rest from)."""
    file = spilled.file
    fd = file.fd
    if fd < 0 or file.closed:
        return 0
    offset = spilled.offset + start
    sent = 0
    while sent < count:
        try:
            taken = os.sendfile(sock, fd, offset + sent, count - sent)
        except OSError:
            # The socket is full (the rest goes through the transport), the peer is gone (the transport's own
            # write reports it), or the file system has no sendfile.
            break
        if taken <= 0:
            break
        sent += taken
    return sent


def send_spilled_after(transport: asyncio.WriteTransport, spilled: SpilledRange, start: int, count: int) -> int:
    """`send_spilled` on a transport's socket, once everything written to the transport before (the headers) has
    left it, so that these bytes follow on the socket in order; 0 when they cannot go that way now."""
    if transport.is_closing() or transport.get_write_buffer_size():
        return 0
    # Not under TLS: the bytes must go through the transport to be encrypted.
    if transport.get_extra_info("ssl_object") is not None:
        return 0
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    return send_spilled(sock.fileno(), spilled, start, count)


class StreamSpill:
    """One stream's files: segments appended, read back, and files closed when nothing needs them."""

    def __init__(self, writer: SpillWriter, segments_per_file: int) -> None:
        self._writer = writer
        self._segments_per_file = max(segments_per_file, 1)
        self._file: SpillFile | None = None

    def store(self, chunks: Sequence[Buffer], size: int, done: Callable[[SpilledRange | None], None]) -> None:
        """Write `chunks` (a segment, `size` bytes) out; `done` gets where they are (None: still in memory only).

        `done` runs on the event loop; a range it gets holds a reference that `release` gives back.
        """
        file = self._file
        if file is None or file.segments >= self._segments_per_file:
            if file is not None:
                self._retire(file)
            file = self._file = SpillFile()
        offset = file.end
        file.end += size
        file.segments += 1
        # One reference for the write in flight, one for the segment it stores.
        file.refs += 2
        loop = asyncio.get_running_loop()
        writer = self._writer

        def job() -> None:
            if file.fd < 0:
                file.fd = writer.open_fd()
            write_all(file.fd, chunks, offset)

        def finished(future: Future[None]) -> None:
            exc = future.exception()
            self._unref(file)
            if exc is not None:
                writer.failed(exc)
                self._unref(file)
                done(None)
                return
            done(SpilledRange(file, offset, size))

        def hand_back(future: Future[None]) -> None:
            # A loop that is gone (shutdown) has nothing left to serve.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(finished, future)

        writer.submit(job).add_done_callback(hand_back)

    def release(self, spilled: SpilledRange) -> None:
        """The segment left the window."""
        self._unref(spilled.file)

    async def read(self, spilled: SpilledRange, start: int, length: int) -> bytes:
        """`length` bytes from `start` within the stored segment."""
        file = spilled.file
        file.refs += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, _read_all, file.fd, spilled.offset + start, length)
        finally:
            self._unref(file)

    def close(self) -> None:
        """The stream is gone: no more segments; files close as their last reads finish."""
        if self._file is not None:
            self._retire(self._file)
            self._file = None

    def _retire(self, file: SpillFile) -> None:
        file.retired = True
        self._maybe_close(file)

    def _unref(self, file: SpillFile) -> None:
        file.refs -= 1
        self._maybe_close(file)

    def _maybe_close(self, file: SpillFile) -> None:
        if file.retired and file.refs <= 0 and not file.closed:
            file.closed = True
            if file.fd >= 0:
                fd, file.fd = file.fd, -1
                self._writer.close_fd(fd)
