"""Passing an accepted HTTP connection to another worker of this machine: the socket itself (SCM_RIGHTS over a
Unix datagram socket) with the bytes already read from it and not answered.

With several workers, a player's connection lands in any of them (SO_REUSEPORT), while its stream lives in one.
Forwarding every request to the holder costs an HTTP client and a second HTTP server per request; handing the
connection over once lets the holder's HTTP front answer the player directly from then on.

A connection is handed over only between answers (nothing left to write on it), so the receiver starts on a
clean stream of requests. The sender then closes its own descriptor, which leaves the connection open in the
receiver: a TCP connection ends when its last descriptor closes (no `shutdown`, no linger reset here).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("mediaserver.http")

# The most unanswered bytes a handed-over connection carries along (the front holds at most 16 KiB).
MAX_CARRIED = 64 * 1024


class HandoverSender:
    """Sends connections to other workers' receivers; never blocks (a full or gone receiver: not sent)."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self.failures = 0

    def send(self, path: str, connection: int, carried: bytes) -> bool:
        """Hand the socket `connection` (a descriptor, still ours until the caller closes it) with `carried` to
        the receiver at `path`; False when it could not take it now."""
        if len(carried) > MAX_CARRIED:
            return False
        try:
            # (socket.send_fds drops its address argument on Python 3.11: sendmsg itself.)
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [connection]))]
            self._sock.sendmsg([carried], rights, 0, path)
        except OSError as exc:  # BlockingIOError (its queue is full), ConnectionRefusedError, FileNotFoundError
            self.failures += 1
            log.debug("event=http_handover_failed target=%s error=%s", path, exc)
            return False
        return True

    def close(self) -> None:
        self._sock.close()


class HandoverReceiver:
    """Takes connections handed to this worker: `adopt(sock, carried)` for each."""

    def __init__(self, path: str, adopt: Callable[[socket.socket, bytes], None]) -> None:
        self.path = path
        self._adopt = adopt
        self._sock: socket.socket | None = None
        self.received = 0

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(self.path)
        os.chmod(self.path, 0o600)  # this user's workers only
        sock.setblocking(False)
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        while True:
            try:
                carried, fds, flags, _ = socket.recv_fds(sock, MAX_CARRIED, 1)
            except BlockingIOError:
                return
            except OSError as exc:
                log.warning("event=http_handover_receive_failed error=%s", exc)
                return
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                log.warning("event=http_handover_refused reason=truncated fds=%d", len(fds))
                continue
            self.received += 1
            try:
                connection = socket.socket(fileno=fds[0])
            except OSError:
                os.close(fds[0])
                continue
            self._adopt(connection, carried)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(RuntimeError):  # the loop is gone at shutdown
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
