"""Tests for mediaserver.rtmp.handshake, including interop with rtmpdump and ffmpeg."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediaserver.rtmp.handshake import (
    HANDSHAKE_SIZE,
    RTMP_VERSION,
    HandshakeError,
    ServerHandshakeReply,
    client_c0c1,
    client_c2,
    server_reply,
    validate_c2,
)

# An independent statement of the digest handshake, used to check the module's output
# rather than trusting it to agree with itself.
FIXED = bytes.fromhex("f0eec24a8068bee82e00d0d1029e7e576eec5d2d29806fab93b8e636cfeb31ae")
PLAYER_KEY = b"Genuine Adobe Flash Player 001" + FIXED
SERVER_KEY = b"Genuine Adobe Flash Media Server 001" + FIXED
REPLY_SIZE = 1 + 2 * HANDSHAKE_SIZE


def ref_offset(block: bytes, scheme: int) -> int:
    if scheme == 0:
        return (block[8] + block[9] + block[10] + block[11]) % 728 + 12
    return (block[772] + block[773] + block[774] + block[775]) % 728 + 776


def ref_digest(block: bytes, scheme: int, key: bytes) -> tuple[int, bytes]:
    off = ref_offset(block, scheme)
    mac = hmac.new(key, digestmod="sha256")
    mac.update(block[:off])
    mac.update(block[off + 32 :])
    return off, mac.digest()


def ref_has_digest(block: bytes, scheme: int, key: bytes) -> bool:
    off, digest = ref_digest(block, scheme, key)
    return block[off : off + 32] == digest


def ref_signed(block: bytes, key_material: bytes, peer_digest: bytes) -> bool:
    key = hmac.new(key_material, peer_digest, "sha256").digest()
    return hmac.new(key, block[:1504], "sha256").digest() == block[1504:]


def split(reply: ServerHandshakeReply) -> tuple[int, bytes, bytes]:
    data = reply.data
    return data[0], data[1 : 1 + HANDSHAKE_SIZE], data[1 + HANDSHAKE_SIZE :]


# ------------------------------------------------------------------ round trips


def test_constants_and_key_sizes() -> None:
    assert HANDSHAKE_SIZE == 1536
    assert RTMP_VERSION == 3
    assert len(PLAYER_KEY) == 62
    assert len(SERVER_KEY) == 68
    assert issubclass(HandshakeError, ValueError)


def test_plain_round_trip() -> None:
    c0c1 = client_c0c1()
    assert len(c0c1) == 1 + HANDSHAKE_SIZE
    assert c0c1[0] == RTMP_VERSION
    assert c0c1[5:9] == bytes(4)

    reply = server_reply(c0c1)
    assert reply.digest is False
    assert reply.scheme is None
    assert len(reply.data) == REPLY_SIZE
    s0, s1, s2 = split(reply)
    assert s0 == RTMP_VERSION
    assert s1[4:8] == bytes(4)  # plain S1: zero version, so clients don't verify it
    assert s2 == c0c1[1:]  # S2 echoes C1

    c2 = client_c2(reply.data, c0c1)
    assert c2 == s1  # C2 echoes S1
    assert validate_c2(c2, reply)
    assert not validate_c2(bytes(HANDSHAKE_SIZE), reply)
    assert not validate_c2(c2[:-1], reply)


def test_plain_s1_is_random() -> None:
    c0c1 = client_c0c1()
    assert split(server_reply(c0c1))[1][8:] != split(server_reply(c0c1))[1][8:]


@pytest.mark.parametrize("scheme", [0, 1])
def test_client_digest_c1_is_valid(scheme: int) -> None:
    c1 = client_c0c1(digest=True, scheme=scheme)[1:]
    assert c1[4:8] != bytes(4)  # a Flash Player version
    assert ref_has_digest(c1, scheme, PLAYER_KEY[:30])
    assert not ref_has_digest(c1, 1 - scheme, PLAYER_KEY[:30])


@pytest.mark.parametrize("scheme", [0, 1])
def test_digest_round_trip(scheme: int) -> None:
    c0c1 = client_c0c1(digest=True, scheme=scheme)
    reply = server_reply(c0c1)
    assert reply.digest is True
    assert reply.scheme == scheme
    assert len(reply.data) == REPLY_SIZE
    s0, s1, s2 = split(reply)
    assert s0 == RTMP_VERSION
    assert s1[4:8] != bytes(4)  # a server version, e.g. 13.14.10.13
    assert s1[4] >= 3  # ffmpeg only verifies S1 when this byte is >= 3

    # Checked independently of the module: S1 digest and S2 signature.
    assert ref_has_digest(s1, scheme, SERVER_KEY[:36])
    c1 = c0c1[1:]
    _c1_off, c1_digest = ref_digest(c1, scheme, PLAYER_KEY[:30])
    assert ref_signed(s2, SERVER_KEY, c1_digest)
    assert s2 != c1

    c2 = client_c2(reply.data, c0c1)
    assert len(c2) == HANDSHAKE_SIZE
    _s1_off, s1_digest = ref_digest(s1, scheme, SERVER_KEY[:36])
    assert ref_signed(c2, PLAYER_KEY, s1_digest)
    assert validate_c2(c2, reply)

    tampered = bytearray(c2)
    tampered[100] ^= 1
    assert not validate_c2(bytes(tampered), reply)
    # ffmpeg, when publishing, sends a digest C1 but echoes S1 as C2.
    assert validate_c2(s1, reply)


@pytest.mark.parametrize("scheme", [0, 1])
def test_client_rejects_bad_server_digest(scheme: int) -> None:
    c0c1 = client_c0c1(digest=True, scheme=scheme)
    reply = server_reply(c0c1)
    s1 = reply.data[1 : 1 + HANDSHAKE_SIZE]
    off = ref_offset(s1, scheme)

    bad_s1 = bytearray(reply.data)
    bad_s1[1 + off] ^= 0xFF
    with pytest.raises(HandshakeError, match="S1"):
        client_c2(bytes(bad_s1), c0c1)

    bad_s2 = bytearray(reply.data)
    bad_s2[-1] ^= 0xFF
    with pytest.raises(HandshakeError, match="S2"):
        client_c2(bytes(bad_s2), c0c1)

    # The S2 of another session does not fit our C1 digest either.
    other = server_reply(client_c0c1(digest=True, scheme=scheme))
    mixed = reply.data[: 1 + HANDSHAKE_SIZE] + other.data[1 + HANDSHAKE_SIZE :]
    with pytest.raises(HandshakeError):
        client_c2(mixed, c0c1)


def test_client_accepts_server_digest_in_other_scheme() -> None:
    # librtmp does the same: if S1's digest is not where our scheme says, try the
    # other position.
    c0c1_scheme0 = client_c0c1(digest=True, scheme=0)
    reply = server_reply(c0c1_scheme0)
    # Re-sign S1 under scheme 1 and S2 for the same client digest.
    fake_s1 = bytes(client_c0c1(digest=False)[1:])
    fake_s1 = fake_s1[:4] + b"\x01\x02\x03\x04" + fake_s1[8:]
    off, dig = ref_digest(fake_s1, 1, SERVER_KEY[:36])
    fake_s1 = fake_s1[:off] + dig + fake_s1[off + 32 :]
    assert ref_has_digest(fake_s1, 1, SERVER_KEY[:36])
    data = reply.data[:1] + fake_s1 + reply.data[1 + HANDSHAKE_SIZE :]
    c2 = client_c2(data, c0c1_scheme0)
    assert ref_signed(c2, PLAYER_KEY, dig)


def test_digest_client_falls_back_for_plain_server() -> None:
    c0c1 = client_c0c1(digest=True, scheme=1)
    s1 = client_c0c1()[1:]  # zero version: what a plain server sends
    plain_reply = bytes((RTMP_VERSION,)) + s1 + c0c1[1:]
    assert client_c2(plain_reply, c0c1) == s1


@pytest.mark.parametrize("scheme", [0, 1])
def test_corrupted_c1_digest_falls_back_to_plain(scheme: int) -> None:
    c0c1 = bytearray(client_c0c1(digest=True, scheme=scheme))
    off = ref_offset(bytes(c0c1[1:]), scheme)
    c0c1[1 + off + 5] ^= 0x55
    reply = server_reply(bytes(c0c1))
    assert reply.digest is False
    assert reply.scheme is None
    _s0, s1, s2 = split(reply)
    assert s1[4:8] == bytes(4)
    assert s2 == bytes(c0c1[1:])


def test_digest_with_wrong_key_falls_back_to_plain() -> None:
    # A C1 signed with the server key (not the player key) is not a client digest.
    c1 = bytearray(client_c0c1()[1:])
    c1[4:8] = b"\x09\x00\x7c\x02"
    off, dig = ref_digest(bytes(c1), 0, SERVER_KEY[:36])
    c1[off : off + 32] = dig
    assert server_reply(b"\x03" + bytes(c1)).digest is False


def test_client_c0c1_rejects_unknown_scheme() -> None:
    with pytest.raises(ValueError):
        client_c0c1(digest=True, scheme=2)


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("version", [0, 1, 2, 4, 0x0F, 0xFF])
def test_wrong_version(version: int) -> None:
    c0c1 = bytes((version,)) + client_c0c1()[1:]
    with pytest.raises(HandshakeError, match="version"):
        server_reply(c0c1)


@pytest.mark.parametrize("version", [6, 8, 9])
def test_rtmpe_not_supported(version: int) -> None:
    c0c1 = bytes((version,)) + client_c0c1(digest=True)[1:]
    with pytest.raises(HandshakeError, match="RTMPE not supported"):
        server_reply(c0c1)


@pytest.mark.parametrize("size", [0, 1, 1536, 1538, 3073])
def test_wrong_size(size: int) -> None:
    with pytest.raises(HandshakeError, match="1537"):
        server_reply(b"\x03" * size)


def test_client_c2_errors() -> None:
    c0c1 = client_c0c1(digest=True)
    reply = server_reply(c0c1)
    with pytest.raises(HandshakeError):
        client_c2(reply.data[:-1], c0c1)
    with pytest.raises(HandshakeError):
        client_c2(reply.data, c0c1[:-1])
    with pytest.raises(HandshakeError, match="version"):
        client_c2(b"\x04" + reply.data[1:], c0c1)
    with pytest.raises(HandshakeError, match="RTMPE"):
        client_c2(b"\x06" + reply.data[1:], c0c1)


def test_accepts_other_buffer_types() -> None:
    c0c1 = client_c0c1(digest=True, scheme=0)
    reply = server_reply(bytearray(c0c1))  # type: ignore[arg-type]
    assert reply.digest
    c2 = client_c2(memoryview(reply.data), memoryview(c0c1))  # type: ignore[arg-type]
    assert validate_c2(bytearray(c2), reply)  # type: ignore[arg-type]


# ------------------------------------------------------------------ properties


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=HANDSHAKE_SIZE, max_size=HANDSHAKE_SIZE))
def test_any_c1_gets_a_full_reply(c1: bytes) -> None:
    reply = server_reply(bytes((RTMP_VERSION,)) + c1)
    assert len(reply.data) == REPLY_SIZE
    assert reply.data[0] == RTMP_VERSION
    if not reply.digest:
        assert reply.scheme is None
        assert reply.data[1 + HANDSHAKE_SIZE :] == c1


@settings(max_examples=200, deadline=None)
@given(
    st.binary(min_size=HANDSHAKE_SIZE, max_size=HANDSHAKE_SIZE),
    st.sampled_from([0, 1]),
)
def test_any_c1_with_implanted_digest_is_recognised(c1: bytes, scheme: int) -> None:
    off, dig = ref_digest(c1, scheme, PLAYER_KEY[:30])
    signed = c1[:off] + dig + c1[off + 32 :]
    reply = server_reply(b"\x03" + signed)
    assert reply.digest
    assert reply.scheme == scheme
    assert ref_has_digest(reply.data[1 : 1 + HANDSHAKE_SIZE], scheme, SERVER_KEY[:36])
    assert ref_signed(reply.data[1 + HANDSHAKE_SIZE :], SERVER_KEY, dig)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2 * HANDSHAKE_SIZE), st.booleans())
def test_validate_c2_never_raises(c2: bytes, digest: bool) -> None:
    reply = server_reply(client_c0c1(digest=digest))
    assert validate_c2(c2, reply) in (True, False)


@settings(max_examples=200, deadline=None)
@given(
    st.binary(min_size=REPLY_SIZE - 1, max_size=REPLY_SIZE - 1),
    st.booleans(),
)
def test_client_c2_only_raises_handshake_error(body: bytes, digest: bool) -> None:
    c0c1 = client_c0c1(digest=digest)
    try:
        c2 = client_c2(b"\x03" + body, c0c1)
    except HandshakeError:
        assert digest
    else:
        assert len(c2) == HANDSHAKE_SIZE


# ------------------------------------------------------------------ interop


@dataclass
class Session:
    reply: ServerHandshakeReply | None = None
    c2: bytes | None = None
    error: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Run:
    sessions: list[Session]
    returncode: int
    stderr: str


async def _handshake_server_run(argv_for_port: Sequence[str], *, break_s2: bool = False) -> Run:
    """Serve one handshake per connection on 127.0.0.1 while running a client.

    With `break_s2` the last byte of S2 is flipped, to show that the client really
    checks the digest handshake and that its complaint is visible in stderr.
    """
    sessions: list[Session] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session()
        sessions.append(session)
        try:
            c0c1 = await reader.readexactly(1 + HANDSHAKE_SIZE)
            session.reply = server_reply(c0c1)
            data = session.reply.data
            if break_s2:
                data = data[:-1] + bytes((data[-1] ^ 0xFF,))
            writer.write(data)
            await writer.drain()
            session.c2 = await reader.readexactly(HANDSHAKE_SIZE)
        except (asyncio.IncompleteReadError, ConnectionError, HandshakeError) as exc:
            session.error = repr(exc)
        finally:
            session.done.set()
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    argv = [arg.replace("{PORT}", str(port)) for arg in argv_for_port]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), timeout=10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            pytest.fail(f"{argv[0]} did not finish within 10 s")
        for session in sessions:
            await asyncio.wait_for(session.done.wait(), timeout=5)
    finally:
        server.close()
        await server.wait_closed()
    assert proc.returncode is not None
    return Run(sessions, proc.returncode, err.decode("utf-8", "replace"))


def _run_client(argv: Sequence[str], *, break_s2: bool = False) -> Run:
    if shutil.which(argv[0]) is None:
        pytest.skip(f"{argv[0]} not installed")
    return asyncio.run(_handshake_server_run(argv, break_s2=break_s2))


def _completed(run: Run) -> tuple[ServerHandshakeReply, bytes]:
    assert run.sessions, f"client never connected; stderr:\n{run.stderr}"
    first = run.sessions[0]
    assert first.error is None, f"{first.error}; stderr:\n{run.stderr}"
    assert first.reply is not None
    assert first.c2 is not None and len(first.c2) == HANDSHAKE_SIZE
    return first.reply, first.c2


def _assert_no_complaints(stderr: str, phrases: Sequence[str]) -> None:
    lowered = stderr.lower()
    for phrase in phrases:
        assert phrase not in lowered, f"client complained ({phrase!r}):\n{stderr}"


# librtmp's messages when it dislikes a handshake (handshake.h / rtmp.c).
RTMPDUMP_COMPLAINTS = (
    "couldn't verify the server digest",
    "trying different position for server digest",
    "not genuine",
    "signature does not match",
    "handshake failed",
    "type mismatch",
    "wrong",
)
RTMP_URL = "rtmp://127.0.0.1:{PORT}/live/x"
RTMPDUMP_PLAIN = ["rtmpdump", "-V", "-r", RTMP_URL, "-o", "/dev/null", "-m", "3"]
# A (fake) SWF hash and size make librtmp use the digest handshake.
RTMPDUMP_DIGEST = [*RTMPDUMP_PLAIN, "-w", "00" * 32, "-x", "1000"]


def test_interop_rtmpdump_plain() -> None:
    # Observed: rtmpdump (librtmp 2.4) does the PLAIN handshake unless it is given
    # SWF verification parameters: C1 has a zero version and no digest, and C2
    # echoes our S1.
    run = _run_client(RTMPDUMP_PLAIN)
    reply, c2 = _completed(run)
    assert reply.digest is False
    assert validate_c2(c2, reply)
    assert c2 == reply.data[1 : 1 + HANDSHAKE_SIZE]
    _assert_no_complaints(run.stderr, RTMPDUMP_COMPLAINTS)


def test_interop_rtmpdump_digest() -> None:
    # With --swfhash/--swfsize librtmp switches to the Flash Player 9 DIGEST
    # handshake (scheme 0, version 10.0.45.2 in C1), verifies our S1 digest and S2
    # signature ("Genuine Adobe Flash Media Server" in its debug log) and sends a
    # signed C2.
    run = _run_client(RTMPDUMP_DIGEST)
    reply, c2 = _completed(run)
    assert reply.digest is True
    assert reply.scheme == 0
    assert validate_c2(c2, reply)
    assert c2 != reply.data[1 : 1 + HANDSHAKE_SIZE]  # a signed C2, not an echo
    _assert_no_complaints(run.stderr, RTMPDUMP_COMPLAINTS)
    assert "genuine adobe flash media server" in run.stderr.lower()


# ffmpeg's messages when it dislikes a handshake (libavformat/rtmpproto.c).
FFMPEG_COMPLAINTS = (
    "server response validating failed",
    "signature mismatch",
    "cannot read rtmp handshake response",
)
FFMPEG = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "debug"]
FFMPEG_PLAY = [*FFMPEG, "-i", RTMP_URL, "-t", "1", "-f", "null", "-"]
FFMPEG_PUBLISH = [
    *FFMPEG,
    *("-f", "lavfi", "-i", "anullsrc=r=44100:cl=mono", "-t", "1"),
    *("-c:a", "aac", "-f", "flv", RTMP_URL),
]


def test_interop_ffmpeg_play() -> None:
    # Observed: ffmpeg's native RTMP client always sends a DIGEST C1 (scheme 0,
    # version 9.0.124.2).  When playing (-i rtmp://...) it verifies S1 and S2 when
    # S1 byte 4 >= 3, and sends a signed C2.
    run = _run_client(FFMPEG_PLAY)
    reply, c2 = _completed(run)
    assert reply.digest is True
    assert reply.scheme == 0
    assert validate_c2(c2, reply)
    assert c2 != reply.data[1 : 1 + HANDSHAKE_SIZE]
    _assert_no_complaints(run.stderr, FFMPEG_COMPLAINTS)
    assert "server version 13.14.10.13" in run.stderr.lower()


def test_interop_ffmpeg_publish() -> None:
    # Observed: when publishing, ffmpeg still sends a DIGEST C1 (scheme 0) but does
    # not check S1/S2 and echoes S1 as C2.
    run = _run_client(FFMPEG_PUBLISH)
    reply, c2 = _completed(run)
    assert reply.digest is True
    assert reply.scheme == 0
    assert c2 == reply.data[1 : 1 + HANDSHAKE_SIZE]
    assert validate_c2(c2, reply)
    _assert_no_complaints(run.stderr, FFMPEG_COMPLAINTS)


def test_interop_rtmpdump_notices_a_bad_s2() -> None:
    # Control for the complaint checks above: a broken S2 signature makes librtmp
    # give up and say so.  (librtmp sends C2 before it reads S2, so C2 does arrive.)
    run = _run_client(RTMPDUMP_DIGEST, break_s2=True)
    assert run.sessions
    assert "server not genuine adobe" in run.stderr.lower()
    assert "handshake failed" in run.stderr.lower()


def test_interop_ffmpeg_notices_a_bad_s2() -> None:
    # ffmpeg reads S2 before sending C2, so no C2 arrives.
    run = _run_client(FFMPEG_PLAY, break_s2=True)
    assert run.sessions and run.sessions[0].c2 is None
    assert "signature mismatch" in run.stderr.lower()
