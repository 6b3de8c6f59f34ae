"""A player that stops reading must not slow the publisher or other players: it skips, counted."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.conftest import ServerProcess, ffmpeg_publish, wait_for_stream
from tests.e2e.test_bad_input import RawClient, by_label, frames_read, scrape, start_player, stop, wait_for_frames


def test_stalled_player_skips_to_keyframes_and_others_go_on(server_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # A small per-player buffer so a few seconds of a stalled reader overflow it.
    server: ServerProcess = server_factory({"MEDIASERVER_RTMP_PLAYER_MAX_BUFFER": "65536"})
    publisher = ffmpeg_publish(
        server.rtmp_url("live/busy"),
        14,
        size="640x360",
        rate=30,
        gop=30,
        # Noise makes the picture incompressible: ~8 Mbit/s, more than kernel buffers can hide.
        extra=["-vf", "noise=alls=60:allf=t+u", "-b:v", "8M", "-maxrate", "8M", "-bufsize", "2M"],
    )
    progress = tmp_path / "progress.txt"
    try:
        wait_for_stream(server, "live", "busy")
        stalled = RawClient(server)
        # A tiny receive window (set before connecting) so the kernel absorbs little of the backlog.
        stalled.sock.close()
        stalled.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        stalled.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sock.settimeout(10)
        stalled.sock.connect(("127.0.0.1", server.rtmp_port))
        stalled.handshake()
        stalled.connect()
        stalled.command("createStream", 2.0, None)
        created = stalled.wait_command(lambda v: v[0] == "_result" and v[1] == 2.0)
        stalled.command("play", 0.0, None, "busy", stream_id=int(created[3]), csid=8)
        stalled.wait_command(lambda v: v[0] == "onStatus" and v[3]["code"] == "NetStream.Play.Start")
        # ... and from now on it reads nothing.
        good = start_player(server.rtmp_url("live/busy"), progress)
        wait_for_frames(progress, 30, good)
        deadline = time.monotonic() + 15
        dropped = 0.0
        while time.monotonic() < deadline:
            dropped = by_label(scrape(server), "mediaserver_packets_dropped_total", "reason")["slow_player"]
            if dropped > 0 and frames_read(progress) > 150:
                break
            time.sleep(0.3)
        assert dropped > 0, "the stalled player never overflowed"
        # The healthy player kept receiving at full pace meanwhile, and the publisher is unharmed.
        assert frames_read(progress) > 150
        assert publisher.poll() is None
        stalled.close()
    finally:
        _, err = publisher.communicate(timeout=30)
        stop(good)
    assert publisher.returncode == 0, err
