"""Hostile RTMP input against a real server process, while a real ffmpeg stream runs through it.

Every bad connection must be closed (by the server, within a few seconds) and counted with a
sensible reason, and the good publisher and player must not notice anything.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import socket
import struct
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mediaserver.rtmp.amf import ECMAArray, decode_amf0, encode_amf0
from mediaserver.rtmp.chunk import (
    COMMAND_AMF0,
    DATA_AMF0,
    SET_CHUNK_SIZE,
    VIDEO,
    ChunkReader,
    Message,
    encode_message,
)
from mediaserver.rtmp.handshake import HANDSHAKE_SIZE, client_c0c1, client_c2
from tests.conftest import ServerProcess, ffmpeg_publish, require, wait_for_stream

PUBLISH_SECONDS = 25
FPS = 25  # ffmpeg_publish's default rate
HANDSHAKE_TIMEOUT = 1.0
READ_TIMEOUT = 2.0
MAX_MESSAGE_SIZE = 1024 * 1024
CLOSE_WITHIN = 5.0

SERVER_ENV = {
    "MEDIASERVER_RTMP_HANDSHAKE_TIMEOUT": str(HANDSHAKE_TIMEOUT),
    "MEDIASERVER_RTMP_READ_TIMEOUT": str(READ_TIMEOUT),
    "MEDIASERVER_RTMP_MAX_MESSAGE_SIZE": str(MAX_MESSAGE_SIZE),
}

# ----------------------------------------------------------------------------- raw RTMP client


class RawClient:
    """A blocking RTMP client over a plain socket, for crafting traffic byte by byte."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.sock = socket.create_connection(("127.0.0.1", server.rtmp_port), timeout=CLOSE_WITHIN)
        self.reader = ChunkReader(max_message_size=64 * 1024 * 1024)
        self.inbox: list[Message] = []
        self.handshake_done_at = 0.0

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        """Send, tolerating a server that already hung up (that is what we are provoking)."""
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.sock.sendall(data)

    def recv_exactly(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            data = self.sock.recv(n - len(out))
            if not data:
                raise AssertionError(f"connection closed after {len(out)} of {n} handshake bytes")
            out += data
        return bytes(out)

    def handshake(self) -> None:
        c0c1 = client_c0c1(digest=True)
        self.sock.sendall(c0c1)
        reply = self.recv_exactly(1 + 2 * HANDSHAKE_SIZE)
        self.sock.sendall(client_c2(reply, c0c1))
        self.handshake_done_at = time.monotonic()

    def send_message(self, csid: int, type_id: int, stream_id: int, payload: bytes, chunk_size: int = 128) -> None:
        self.send(encode_message(csid, type_id, stream_id, 0, payload, chunk_size))

    def command(self, *values: Any, stream_id: int = 0, csid: int = 3) -> None:
        self.send_message(csid, COMMAND_AMF0, stream_id, encode_amf0(*values))

    def connect(self, app: str = "live") -> None:
        tc_url = f"rtmp://127.0.0.1:{self.server.rtmp_port}/{app}"
        self.command("connect", 1.0, {"app": app, "type": "nonprivate", "tcUrl": tc_url, "objectEncoding": 0.0})
        values = self.wait_command(lambda v: v[0] in ("_result", "_error") and v[1] == 1.0)
        assert values[0] == "_result", values
        assert values[3]["code"] == "NetConnection.Connect.Success", values

    def wait_command(self, match: Callable[[list[Any]], bool], timeout: float = CLOSE_WITHIN) -> list[Any]:
        """Read until an AMF0 command the predicate accepts arrives; return its values."""
        deadline = time.monotonic() + timeout
        while True:
            while self.inbox:
                message = self.inbox.pop(0)
                if message.type_id == COMMAND_AMF0:
                    values = decode_amf0(message.payload)
                    if values and match(values):
                        return values
            remaining = deadline - time.monotonic()
            assert remaining > 0, "timed out waiting for a command from the server"
            self.sock.settimeout(remaining)
            data = self.sock.recv(65536)
            assert data, "server closed the connection before sending the expected command"
            self.inbox += self.reader.feed(data)

    def assert_closed_by_server(self, within: float = CLOSE_WITHIN) -> float:
        """Wait for EOF (or a reset) from the server; return the seconds it took."""
        start = time.monotonic()
        deadline = start + within
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"server kept the connection open for more than {within} s"
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return time.monotonic() - start
            except TimeoutError:
                continue
            if not data:
                return time.monotonic() - start


# --------------------------------------------------------------------------------- metrics

_SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(server: ServerProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in server.get_text("/metrics").splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, f"unparsable metrics line: {line!r}"
        name, labels, value = match.groups()
        samples[(name, frozenset(_LABEL.findall(labels or "")))] = float(value)
    return samples


def by_label(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, label: str, **where: str
) -> Counter[str]:
    """{label value: sample value} of one metric, restricted to samples with the `where` labels."""
    out: Counter[str] = Counter()
    for (sample_name, labels), value in samples.items():
        found = dict(labels)
        if sample_name == name and all(found.get(k) == v for k, v in where.items()) and label in found:
            out[found[label]] += int(value)
    return out


def delta(after: Counter[str], before: Counter[str]) -> dict[str, int]:
    return {key: after[key] - before[key] for key in after if after[key] != before[key]}


# ------------------------------------------------------------------------------ the cases


def garbage(server: ServerProcess) -> None:
    client = RawClient(server)
    junk = bytearray(os.urandom(5000))
    junk[0] = 0xFF  # not an RTMP version
    client.send(bytes(junk))
    client.assert_closed_by_server()
    client.close()


def garbage_after_handshake(server: ServerProcess) -> None:
    client = RawClient(server)
    client.handshake()
    # 0xFF: a type-3 chunk header on chunk stream 63, which has never had a type-0 header.
    client.send(b"\xff" * 1000)
    client.assert_closed_by_server()
    client.close()


def bad_version(server: ServerProcess) -> None:
    client = RawClient(server)
    client.send(b"\x07" + client_c0c1()[1:])
    client.assert_closed_by_server()
    client.close()


def truncated_handshake(server: ServerProcess) -> None:
    client = RawClient(server)
    client.send(client_c0c1()[:100])
    took = client.assert_closed_by_server(within=HANDSHAKE_TIMEOUT + CLOSE_WITHIN)
    client.close()
    assert took >= HANDSHAKE_TIMEOUT * 0.8, f"closed after {took:.2f} s, before the handshake timeout"


def bad_chunk_size(size: int) -> Callable[[ServerProcess], None]:
    def case(server: ServerProcess) -> None:
        client = RawClient(server)
        client.handshake()
        client.send_message(2, SET_CHUNK_SIZE, 0, struct.pack(">I", size))
        client.assert_closed_by_server()
        client.close()

    return case


def too_large(server: ServerProcess) -> None:
    client = RawClient(server)
    client.handshake()
    length = 2 * 1024 * 1024
    header = b"\x06" + b"\x00\x00\x00" + length.to_bytes(3, "big") + b"\x09" + struct.pack("<I", 1)
    client.send(header + os.urandom(128))
    client.assert_closed_by_server()
    client.close()


def amf_huge_strict_array(server: ServerProcess) -> None:
    client = RawClient(server)
    client.handshake()
    # connect, txn, then a strict array (0x0A) declaring 2**32-1 items with none present.
    payload = encode_amf0("connect", 1.0) + b"\x0a\xff\xff\xff\xff" + b"\x05"
    client.send_message(3, COMMAND_AMF0, 0, payload)
    client.assert_closed_by_server()
    client.close()


def amf_deep_nesting(server: ServerProcess) -> None:
    client = RawClient(server)
    client.handshake()
    depth = 100_000
    # Each level: an object (0x03) whose first property, named "a", is the next object.
    nested = b"\x03" + b"\x00\x01a\x03" * (depth - 1) + b"\x00\x00\x09" * depth
    payload = encode_amf0("connect", 1.0) + nested
    assert len(payload) < MAX_MESSAGE_SIZE
    client.send_message(2, SET_CHUNK_SIZE, 0, struct.pack(">I", 65536))
    client.send_message(3, COMMAND_AMF0, 0, payload, chunk_size=65536)
    client.assert_closed_by_server()
    client.close()


def publish_before_connect(server: ServerProcess) -> None:
    client = RawClient(server)
    client.handshake()
    client.command("publish", 0.0, None, "sneaky", "live", stream_id=1, csid=8)
    client.assert_closed_by_server()
    client.close()


def play_unknown_stream(server: ServerProcess) -> None:
    client = RawClient(server)
    client.handshake()
    client.connect()
    client.command("createStream", 2.0, None)
    created = client.wait_command(lambda v: v[0] == "_result" and v[1] == 2.0)
    stream_id = int(created[3])
    client.command("play", 0.0, None, "no-such-stream", stream_id=stream_id, csid=8)
    status = client.wait_command(lambda v: v[0] == "onStatus")
    assert status[3]["code"] == "NetStream.Play.StreamNotFound", status
    assert status[3]["level"] == "error", status
    client.assert_closed_by_server()
    client.close()


def silent_after_connect(server: ServerProcess) -> None:
    client = RawClient(server)
    client.handshake()
    client.connect()
    client.assert_closed_by_server(within=READ_TIMEOUT + CLOSE_WITHIN)
    took = time.monotonic() - client.handshake_done_at
    client.close()
    assert READ_TIMEOUT * 0.8 <= took <= READ_TIMEOUT + 3, f"closed {took:.2f} s after the handshake"


CASES: list[tuple[str, Callable[[ServerProcess], None]]] = [
    ("garbage", garbage),
    ("c0_version_7", bad_version),
    ("garbage_after_handshake", garbage_after_handshake),
    ("truncated_handshake", truncated_handshake),
    ("chunk_size_0", bad_chunk_size(0)),
    ("chunk_size_7fffffff", bad_chunk_size(0x7FFFFFFF)),
    ("message_too_large", too_large),
    ("amf_strict_array_2_32", amf_huge_strict_array),
    ("amf_100k_nested_objects", amf_deep_nesting),
    ("publish_before_connect", publish_before_connect),
    ("play_unknown_stream", play_unknown_stream),
    ("silent_after_connect", silent_after_connect),
]

EXPECTED_REJECTED = {
    "bad_handshake": 2,
    "handshake_timeout": 1,
    "bad_chunk_header": 1,
    "bad_chunk_size": 2,
    "message_too_large": 1,
    "bad_amf": 2,
    "command_before_connect": 1,
    "stream_not_found": 1,
    "read_timeout": 1,
}
EXPECTED_HANDSHAKE_FAILURES = {"bad_handshake": 2, "timeout": 1}
# Connections above that completed the handshake.
CRAFTED_HANDSHAKES = 9


# -------------------------------------------------------------------------------- players


def start_player(url: str, progress: Path) -> subprocess.Popen[bytes]:
    cmd = [
        require("ffmpeg"),
        "-hide_banner",
        "-nostats",
        "-loglevel",
        "error",
        "-progress",
        str(progress),
        "-stats_period",
        "0.2",
        "-i",
        url,
        "-f",
        "null",
        "-",
    ]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def frames_read(progress: Path) -> int:
    if not progress.exists():
        return 0
    found = re.findall(r"^frame=(\d+)", progress.read_text(errors="replace"), re.M)
    return int(found[-1]) if found else 0


def wait_for_frames(progress: Path, above: int, player: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frames = frames_read(progress)
        if frames > above:
            return frames
        assert player.poll() is None, f"player exited early: {player.stderr.read().decode(errors='replace')}"
        time.sleep(0.1)
    raise AssertionError(f"player stuck at {frames_read(progress)} frames (wanted more than {above})")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


ALARMING = re.compile(r"error|broken pipe|reset|refused|timed? ?out|invalid|fail", re.I)


# ----------------------------------------------------------------------------------- test


def test_bad_input_closes_only_the_offending_connection(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = server_factory(SERVER_ENV)
    publisher = ffmpeg_publish(server.rtmp_url("live/good"), seconds=PUBLISH_SECONDS)
    player: subprocess.Popen[bytes] | None = None
    try:
        wait_for_stream(server, "live", "good", timeout=15)
        progress = tmp_path / "player-progress.txt"
        player = start_player(server.rtmp_url("live/good"), progress)
        frames_before = wait_for_frames(progress, 0, player)

        before = scrape(server)
        failures: list[str] = []
        for name, case in CASES:
            try:
                case(server)
            except (AssertionError, OSError) as exc:
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
        assert not failures, "\n".join(failures) + "\n" + server.log()[-4000:]
        # Counters are bumped just before the close we observed; allow the scrape a moment anyway.
        time.sleep(0.2)
        after = scrape(server)

        rejected = delta(
            by_label(after, "mediaserver_connections_rejected_total", "reason", protocol="rtmp"),
            by_label(before, "mediaserver_connections_rejected_total", "reason", protocol="rtmp"),
        )
        assert rejected == EXPECTED_REJECTED
        handshake_failures = delta(
            by_label(after, "mediaserver_rtmp_handshake_failures_total", "reason"),
            by_label(before, "mediaserver_rtmp_handshake_failures_total", "reason"),
        )
        assert handshake_failures == EXPECTED_HANDSHAKE_FAILURES
        handshakes = delta(
            by_label(after, "mediaserver_rtmp_handshakes_total", "kind"),
            by_label(before, "mediaserver_rtmp_handshakes_total", "kind"),
        )
        assert handshakes == {"digest": CRAFTED_HANDSHAKES}
        accepted = delta(
            by_label(after, "mediaserver_connections_total", "protocol"),
            by_label(before, "mediaserver_connections_total", "protocol"),
        )
        assert accepted.get("rtmp") == len(CASES), accepted
        # Every crafted connection is gone again: only the publisher and the player remain.
        assert by_label(after, "mediaserver_connections", "protocol")["rtmp"] == 2
        assert by_label(after, "mediaserver_publishers", "protocol")["rtmp"] == 1
        assert by_label(after, "mediaserver_subscribers", "protocol")["rtmp"] == 1

        # The good stream is unharmed.
        assert server.process.poll() is None, "server process died"
        streams = server.get_json("/api/v1/streams")
        assert isinstance(streams, dict)
        good = [s for s in streams["streams"] if (s["app"], s["name"]) == ("live", "good")]
        assert len(good) == 1, streams
        assert good[0]["publisher"]["protocol"] == "rtmp"
        assert good[0]["video"] is not None and good[0]["video"]["codec"] == "h264"
        assert good[0]["subscribers"].get("rtmp") == 1, good[0]
        assert streams["count"] == 1, streams
        assert publisher.poll() is None, "publisher stopped early"
        assert player.poll() is None, "player stopped"
        frames_now = wait_for_frames(progress, frames_read(progress), player, timeout=5)
        assert frames_now > frames_before

        # The publisher finishes its run cleanly.
        _, publisher_err = publisher.communicate(timeout=PUBLISH_SECONDS + 20)
        text = publisher_err.decode(errors="replace")
        assert publisher.returncode == 0, text + server.log()[-3000:]
        assert not ALARMING.search(text), text
        assert "Traceback" not in server.log()
        # The player sees the end of the stream and finishes normally, having read the whole run.
        _, player_err = player.communicate(timeout=15)
        player_text = player_err.decode(errors="replace")
        assert player.returncode == 0, player_text
        assert not ALARMING.search(player_text), player_text
        assert frames_read(progress) >= 0.8 * PUBLISH_SECONDS * FPS
        assert server.process.poll() is None, "server process died"
    finally:
        stop(publisher)
        if player is not None:
            stop(player)


# ------------------------------------------------------------- non-finite metadata numbers


def publish_raw(server: ServerProcess, name: str) -> tuple[RawClient, int]:
    client = RawClient(server)
    client.handshake()
    client.connect()
    client.command("createStream", 2.0, None)
    stream_id = int(client.wait_command(lambda v: v[0] == "_result" and v[1] == 2.0)[3])
    client.command("publish", 3.0, None, name, "live", stream_id=stream_id, csid=8)
    status = client.wait_command(lambda v: v[0] == "onStatus")
    assert status[3]["code"] == "NetStream.Publish.Start", status
    return client, stream_id


def metadata(**values: float) -> bytes:
    return encode_amf0("@setDataFrame", "onMetaData", ECMAArray(values))


def h264_video_tags(tmp_path: Path, count: int) -> list[bytes]:
    """Bodies of the first FLV video tags (sequence header first) of a short ffmpeg encode."""
    path = tmp_path / "clip.flv"
    encode = ["-t", "1", "-c:v", "libx264", "-g", "25", "-pix_fmt", "yuv420p", "-f", "flv"]
    source = ["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25"]
    cmd = [require("ffmpeg"), "-hide_banner", "-loglevel", "error", "-y", *source, *encode, str(path)]
    subprocess.run(cmd, check=True, timeout=30)
    flv = path.read_bytes()
    pos = 9 + 4  # FLV header, PreviousTagSize0
    bodies: list[bytes] = []
    while pos + 11 <= len(flv) and len(bodies) < count:
        size = int.from_bytes(flv[pos + 1 : pos + 4], "big")
        if flv[pos] == 9:
            bodies.append(flv[pos + 11 : pos + 11 + size])
        pos += 11 + size + 4
    return bodies


def strict_json(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_metadata_size_is_handled(server: ServerProcess, value: float) -> None:
    before = by_label(scrape(server), "mediaserver_connections_rejected_total", "reason")
    client, stream_id = publish_raw(server, "meta")
    client.send_message(5, DATA_AMF0, stream_id, metadata(width=value, height=360.0))
    # Either outcome is acceptable: the values are ignored and the publisher stays, or it is
    # closed like any other protocol error, with a counted reason.
    try:
        client.assert_closed_by_server(within=1.0)
        closed = True
    except AssertionError:
        closed = False
    client.close()
    time.sleep(0.2)
    rejected = delta(by_label(scrape(server), "mediaserver_connections_rejected_total", "reason"), before)
    log = server.log()
    assert "Traceback" not in log and "Fatal error" not in log, log[-3000:]
    if closed:
        assert sum(rejected.values()) == 1, rejected


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_stats_api_stays_valid_json_with_non_finite_framerate(
    server: ServerProcess, tmp_path: Path, value: float
) -> None:
    tags = h264_video_tags(tmp_path, 3)
    client, stream_id = publish_raw(server, "fps")
    try:
        client.send_message(5, DATA_AMF0, stream_id, metadata(framerate=value, width=320.0, height=240.0))
        for body in tags:
            client.send_message(6, VIDEO, stream_id, body)
        wait_for_stream(server, "live", "fps", timeout=5)
        for path in ("/api/v1/streams", "/api/v1/streams/live/fps"):
            strict_json(server.get_text(path))
    finally:
        client.close()
