"""Connections handed between processes (`mediaserver.http.handover`), over real sockets in one process: the
socket and its unanswered bytes arrive, the connection outlives the sender's descriptor, and a receiver that is
not there refuses without blocking."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from mediaserver.http.handover import MAX_CARRIED, HandoverReceiver, HandoverSender


async def test_a_connection_and_its_bytes_reach_the_receiver_and_outlive_the_senders_descriptor(
    tmp_path: Path,
) -> None:
    adopted: asyncio.Queue[tuple[socket.socket, bytes]] = asyncio.Queue()
    receiver = HandoverReceiver(
        str(tmp_path / "handover-1.sock"), lambda sock, carried: adopted.put_nowait((sock, carried))
    )
    receiver.start()
    sender = HandoverSender()
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    try:
        assert sender.send(receiver.path, accepted.fileno(), b"GET /hls/live/cam/index.m3u8 HTTP/1.1\r\n")
        accepted.close()  # the sender's descriptor: the connection lives on in the receiver's
        sock, carried = await asyncio.wait_for(adopted.get(), 5)
        assert carried == b"GET /hls/live/cam/index.m3u8 HTTP/1.1\r\n" and receiver.received == 1
        with sock:
            assert sock.getpeername() == client.getsockname()
            client.sendall(b"more")
            assert sock.recv(16) == b"more"
            sock.sendall(b"answer")
            assert client.recv(16) == b"answer"
        # Too much to carry, or nobody listening: refused at once, the descriptor still the caller's.
        assert not sender.send(receiver.path, client.fileno(), b"x" * (MAX_CARRIED + 1))
        assert not sender.send(str(tmp_path / "gone.sock"), client.fileno(), b"")
        assert sender.failures == 1
    finally:
        receiver.close()
        sender.close()
        client.close()
        listener.close()
    assert not Path(receiver.path).exists()
