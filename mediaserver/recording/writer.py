"""File I/O for recordings, in one thread of its own: the event loop only queues work and hears results.

The queue is bounded in bytes. When the disk cannot keep up, `submit` refuses and the recorder records a
gap instead of letting memory grow or slowing the live stream. The thread wakes at most once per
`batch_window` and takes everything queued at once, each file's fragments in one `writev`: waking it per
fragment (hundreds a second with many cameras) cost more in thread switches than the writes themselves.
Every file's data is handed to the OS within that window and written to the disk (`fdatasync`) at most
`sync_interval` apart and on close, so a process crash loses at most the window and a power cut at most
the interval; the SHA-256 of what was written is kept as it goes and reported on close.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mediaserver.vectored_io import write_all

log = logging.getLogger("mediaserver.recording")

# How long the thread lets work gather after it wakes, seconds.
BATCH_WINDOW = 0.1


@dataclass(slots=True)
class Open:
    file_id: int
    path: Path
    head: bytes


@dataclass(slots=True)
class Append:
    file_id: int
    data: bytes
    # Index lines to append once `data` is written (segments that `data` completes).
    index: str = ""


@dataclass(slots=True)
class Close:
    file_id: int
    index: str = ""


Op = Open | Append | Close


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What the thread reports back (on the event loop) for a file."""

    file_id: int
    kind: str  # "closed", "failed"
    size: int = 0
    seconds: float = 0.0
    checksum: str = ""
    reason: str = ""
    detail: str = ""


@dataclass(slots=True)
class _File:
    fd: int
    index_fd: int
    size: int = 0
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)
    synced_at: float = field(default_factory=time.monotonic)


def failure_reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "disk_full"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "not_writable"
    return "io_error"


class RecordingWriter:
    def __init__(
        self,
        max_buffer_bytes: int,
        sync_interval: float,
        on_written: Callable[[int, float], None] | None = None,
        batch_window: float = BATCH_WINDOW,
    ) -> None:
        self.max_buffer_bytes = max_buffer_bytes
        self.sync_interval = sync_interval
        self.batch_window = batch_window
        self.buffered = 0
        self._lock = threading.Lock()
        # Work for the thread, in order; None asks it to finish. `_wake` is set when the list becomes non-empty.
        self._pending: list[Op | None] = []
        self._wake = threading.Event()
        self._files: dict[int, _File] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_result: Callable[[WriteResult], None] | None = None
        # Called in the writer thread after each write with (bytes, seconds): metrics are thread-safe, and a
        # hop to the event loop per fragment would cost more than the write itself.
        self._on_written = on_written

    def start(self, on_result: Callable[[WriteResult], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_result = on_result
        self._thread = threading.Thread(target=self._run, name="recording-writer", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Finish what is queued, then end the thread."""
        if self._thread is None:
            return
        with self._lock:
            self._pending.append(None)
        self._wake.set()
        thread, self._thread = self._thread, None
        await asyncio.get_running_loop().run_in_executor(None, thread.join)

    def submit(self, op: Op) -> bool:
        """Queue work; False (nothing queued) when the buffer is full: the caller records a gap."""
        size = len(op.data) if isinstance(op, Append) else len(op.head) if isinstance(op, Open) else 0
        with self._lock:
            if size and self.buffered + size > self.max_buffer_bytes:
                return False
            self.buffered += size
            self._pending.append(op)
            first = len(self._pending) == 1
        if first:
            self._wake.set()
        return True

    # ----- the thread ---------------------------------------------------------------------------------------

    def _report(self, result: WriteResult) -> None:
        if self._loop is not None and self._on_result is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
                self._loop.call_soon_threadsafe(self._on_result, result)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            # Let a batch gather: one wake-up per window, not one per fragment.
            time.sleep(self.batch_window)
            with self._lock:
                ops, self._pending = self._pending, []
                self._wake.clear()
            if self._process(ops):
                for file_id in list(self._files):
                    self._guarded(Close(file_id), 0)
                return

    def _process(self, ops: list[Op | None]) -> bool:
        """Do a batch in order, each file's consecutive appends as one write; True when asked to finish."""
        appends: dict[int, list[Append]] = {}
        finish = False
        for op in ops:
            if op is None:
                finish = True
            elif isinstance(op, Append):
                appends.setdefault(op.file_id, []).append(op)
            else:
                if isinstance(op, Close) and op.file_id in appends:
                    self._flush(appends.pop(op.file_id))
                self._guarded(op, len(op.head) if isinstance(op, Open) else 0)
        for batch in appends.values():
            self._flush(batch)
        return finish

    def _guarded(self, op: Open | Close, size: int) -> None:
        try:
            if isinstance(op, Open):
                self._open(op)
            else:
                self._close(op)
        except OSError as exc:
            self._fail(op.file_id, exc)
        except Exception as exc:
            log.exception("event=recording_writer_error file=%d", op.file_id)
            self._fail(op.file_id, OSError(errno.EIO, str(exc)))
        finally:
            with self._lock:
                self.buffered -= size

    def _flush(self, batch: list[Append]) -> None:
        file_id = batch[0].file_id
        size = sum(len(op.data) for op in batch)
        started = time.monotonic()
        try:
            self._append(file_id, batch, size, started)
        except OSError as exc:
            self._fail(file_id, exc)
        except Exception as exc:
            log.exception("event=recording_writer_error file=%d", file_id)
            self._fail(file_id, OSError(errno.EIO, str(exc)))
        finally:
            with self._lock:
                self.buffered -= size

    def _open(self, op: Open) -> None:
        op.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(op.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        try:
            index_fd = os.open(
                op.path.with_name(op.path.name + ".idx"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640
            )
        except OSError:
            os.close(fd)
            raise
        file = _File(fd, index_fd)
        try:
            self._write(file, op.head)
        except OSError:
            # A file without its head holds nothing playable: leave no husk behind (a full disk, say).
            os.close(fd)
            os.close(index_fd)
            for leftover in (op.path, op.path.with_name(op.path.name + ".idx")):
                with contextlib.suppress(OSError):
                    leftover.unlink()
            raise
        self._files[op.file_id] = file
        if self._on_written is not None:
            self._on_written(len(op.head), 0.0)
        # The folder entry must survive a power cut too.
        dir_fd = os.open(op.path.parent, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _write(self, file: _File, data: bytes) -> None:
        self._write_all(file, [data])

    def _write_all(self, file: _File, chunks: list[bytes]) -> None:
        write_all(file.fd, chunks)
        for chunk in chunks:
            file.size += len(chunk)
            file.digest.update(chunk)

    def _append(self, file_id: int, batch: list[Append], size: int, started: float) -> None:
        file = self._files.get(file_id)
        if file is None:
            return  # the file failed earlier; the recorder knows
        self._write_all(file, [op.data for op in batch])
        index = "".join(op.index for op in batch)
        if index:
            os.write(file.index_fd, index.encode())
        now = time.monotonic()
        if now - file.synced_at >= self.sync_interval:
            os.fdatasync(file.fd)
            os.fdatasync(file.index_fd)
            file.synced_at = now
        if self._on_written is not None:
            self._on_written(size, time.monotonic() - started)

    def _close(self, op: Close) -> None:
        file = self._files.pop(op.file_id, None)
        if file is None:
            return
        try:
            if op.index:
                os.write(file.index_fd, op.index.encode())
            os.fdatasync(file.fd)
            os.fdatasync(file.index_fd)
        finally:
            os.close(file.fd)
            os.close(file.index_fd)
        self._report(WriteResult(op.file_id, "closed", file.size, checksum=file.digest.hexdigest()))

    def _fail(self, file_id: int, exc: OSError) -> None:
        file = self._files.pop(file_id, None)
        if file is not None:
            for fd in (file.fd, file.index_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)
        reason = failure_reason(exc)
        self._report(WriteResult(file_id, "failed", file.size if file else 0, reason=reason, detail=str(exc)))
