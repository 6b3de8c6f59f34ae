"""The RTMP handshake, as pure functions over byte strings (no I/O).

The connection opens with C0+C1 from the client (1 + 1536 bytes), the server answers
S0+S1+S2 (1 + 1536 + 1536 bytes) and the client finishes with C2 (1536 bytes).

Two flavours exist in the wild:

* The plain handshake of the published RTMP specification: C1/S1 are a 4-byte time,
  4 zero bytes and 1528 random bytes; S2 echoes C1 and C2 echoes S1.  OBS and
  librtmp (rtmpdump) without SWF verification use it.

* The "complex" or digest handshake introduced with Flash Player 9.  C1 carries a
  Flash Player version in bytes 4..7 and a 32-byte HMAC-SHA256 digest somewhere in its
  body.  The digest position is derived from four bytes of C1 itself:

  - scheme 0 ("digest first"): offset = (sum of bytes 8..11) % 728 + 12
  - scheme 1 ("digest second"): offset = (sum of bytes 772..775) % 728 + 776

  (Some implementations, e.g. SRS, number these the other way round.)  The digest is
  keyed with the first 30 bytes of the Flash Player key and covers C1 minus the
  32 digest bytes.  A server that recognises it answers with an S1 that carries its
  own digest (same scheme, keyed with the first 36 bytes of the Flash Media Server key
  and a server version in bytes 4..7) and an S2 whose last 32 bytes sign the first
  1504 with a key derived from the client's digest.  The client's C2 does the same in
  the other direction.  ffmpeg's native RTMP client sends a digest C1 (scheme 0) and,
  when playing, verifies S1 and S2; when publishing it simply echoes S1.  rtmpdump
  does the digest handshake only when given SWF verification parameters.

RTMPE (C0 = 6, or 8/9 for the later Flash Player variants) layers Diffie-Hellman and
RC4 on top of the digest handshake; it is refused here.
"""

from __future__ import annotations

import hmac
import os
import time
from dataclasses import dataclass

__all__ = [
    "HANDSHAKE_SIZE",
    "RTMP_VERSION",
    "HandshakeError",
    "ServerHandshakeReply",
    "client_c0c1",
    "client_c2",
    "server_reply",
    "validate_c2",
]

HANDSHAKE_SIZE = 1536
RTMP_VERSION = 3

#: C0 values used by RTMPE (6: Flash Player 9 style, 8 and 9: the later variants).
_RTMPE_VERSIONS = frozenset({6, 8, 9})

_DIGEST_SIZE = 32
_C0C1_SIZE = 1 + HANDSHAKE_SIZE
_S0S1S2_SIZE = 1 + 2 * HANDSHAKE_SIZE
#: S2/C2 of the digest handshake: this many random bytes, then their digest.
_SIGNED_SIZE = HANDSHAKE_SIZE - _DIGEST_SIZE

# The 32 fixed bytes Adobe appends to both key strings.
_KEY_TAIL = bytes(
    (
        0xF0, 0xEE, 0xC2, 0x4A, 0x80, 0x68, 0xBE, 0xE8,
        0x2E, 0x00, 0xD0, 0xD1, 0x02, 0x9E, 0x7E, 0x57,
        0x6E, 0xEC, 0x5D, 0x2D, 0x29, 0x80, 0x6F, 0xAB,
        0x93, 0xB8, 0xE6, 0x36, 0xCF, 0xEB, 0x31, 0xAE,
    )
)  # fmt: skip
_PLAYER_KEY_TEXT = b"Genuine Adobe Flash Player 001"  # 30 bytes
_SERVER_KEY_TEXT = b"Genuine Adobe Flash Media Server 001"  # 36 bytes
#: Keys for the C1 and S1 digests (the text part only).
_PLAYER_KEY_SHORT = _PLAYER_KEY_TEXT
_SERVER_KEY_SHORT = _SERVER_KEY_TEXT
#: Keys from which the C2 and S2 signing keys are derived (text + fixed bytes).
_PLAYER_KEY_FULL = _PLAYER_KEY_TEXT + _KEY_TAIL  # 62 bytes
_SERVER_KEY_FULL = _SERVER_KEY_TEXT + _KEY_TAIL  # 68 bytes

#: Version we advertise in S1 bytes 4..7 for the digest handshake.  Any non-zero
#: value will do: librtmp falls back to the plain handshake when byte 4 is 0, ffmpeg
#: only verifies the server digest when byte 4 is at least 3.
_SERVER_VERSION = bytes((0x0D, 0x0E, 0x0A, 0x0D))
#: Flash Player version our own digest clients put in C1 bytes 4..7 (10.0.45.2).
_CLIENT_VERSION = bytes((0x0A, 0x00, 0x2D, 0x02))
_ZERO_VERSION = bytes(4)

_SCHEMES = (0, 1)


class HandshakeError(ValueError):
    """The peer's handshake bytes cannot be answered or are not authentic."""


@dataclass(frozen=True, slots=True)
class ServerHandshakeReply:
    """What the server sends back, and how it interpreted C1."""

    data: bytes  # S0 + S1 + S2 (1 + 1536 + 1536 bytes)
    digest: bool  # True when C1 carried a valid digest and we answered in kind
    scheme: int | None  # 0 or 1 when digest

    @property
    def s1(self) -> bytes:
        return self.data[1 : 1 + HANDSHAKE_SIZE]

    @property
    def s2(self) -> bytes:
        return self.data[1 + HANDSHAKE_SIZE :]


# --------------------------------------------------------------------------- helpers


def _timestamp() -> bytes:
    """A 4-byte millisecond clock for the time field (its epoch is arbitrary)."""
    return (time.monotonic_ns() // 1_000_000 & 0xFFFFFFFF).to_bytes(4, "big")


def _digest_offset(block: bytes, scheme: int) -> int:
    """Where the 32-byte digest sits in a 1536-byte C1/S1 under `scheme`."""
    base = 8 if scheme == 0 else 772
    return sum(block[base : base + 4]) % 728 + base + 4


def _block_digest(block: bytes, offset: int, key: bytes) -> bytes:
    """HMAC-SHA256 of `block` without its 32 digest bytes at `offset`."""
    message = block[:offset] + block[offset + _DIGEST_SIZE :]
    return hmac.digest(key, message, "sha256")


def _find_digest(block: bytes, key: bytes, schemes: tuple[int, ...]) -> tuple[int, int] | None:
    """(scheme, offset) of the first scheme whose digest validates, or None."""
    for scheme in schemes:
        offset = _digest_offset(block, scheme)
        expected = _block_digest(block, offset, key)
        if hmac.compare_digest(expected, block[offset : offset + _DIGEST_SIZE]):
            return scheme, offset
    return None


def _make_digest_block(version: bytes, scheme: int, key: bytes) -> bytes:
    """A C1/S1 carrying `version` and a digest embedded under `scheme`."""
    # The offset bytes lie before the digest region and the digest never covers
    # itself, so the random placeholder bytes can simply be replaced afterwards.
    draft = _timestamp() + version + os.urandom(HANDSHAKE_SIZE - 8)
    offset = _digest_offset(draft, scheme)
    digest = _block_digest(draft, offset, key)
    return draft[:offset] + digest + draft[offset + _DIGEST_SIZE :]


def _signing_key(full_key: bytes, peer_digest: bytes) -> bytes:
    return hmac.digest(full_key, peer_digest, "sha256")


def _make_signed_block(signing_key: bytes) -> bytes:
    """An S2/C2 of the digest handshake: 1504 random bytes followed by their HMAC."""
    body = os.urandom(_SIGNED_SIZE)
    return body + hmac.digest(signing_key, body, "sha256")


def _signed_block_ok(block: bytes, signing_key: bytes) -> bool:
    expected = hmac.digest(signing_key, block[:_SIGNED_SIZE], "sha256")
    return hmac.compare_digest(expected, block[_SIGNED_SIZE:])


def _check_version(c0: int, what: str) -> None:
    if c0 == RTMP_VERSION:
        return
    if c0 in _RTMPE_VERSIONS:
        raise HandshakeError(f"{what} is {c0}: RTMPE not supported (encrypted RTMP)")
    raise HandshakeError(f"{what} is {c0}: unsupported RTMP version (expected {RTMP_VERSION})")


def _check_scheme(scheme: int) -> None:
    if scheme not in _SCHEMES:
        raise ValueError(f"digest scheme must be 0 or 1, not {scheme!r}")


# ------------------------------------------------------------------------ server side


def server_reply(c0c1: bytes) -> ServerHandshakeReply:
    """Answer a client's C0+C1 (exactly 1537 bytes) with S0+S1+S2.

    If C1 carries a valid client digest (either scheme) the reply is a digest S1/S2 in
    the same scheme; otherwise it is the plain handshake (S2 echoes C1).
    Raises HandshakeError for a wrong length or a C0 other than 3 (RTMPE's C0 of 6,
    or 8/9, gets an "RTMPE not supported" message).
    """
    data = bytes(c0c1)
    if len(data) != _C0C1_SIZE:
        raise HandshakeError(f"C0+C1 must be {_C0C1_SIZE} bytes, got {len(data)}")
    _check_version(data[0], "C0")
    c1 = data[1:]

    found = _find_digest(c1, _PLAYER_KEY_SHORT, _SCHEMES)
    if found is None:
        s1 = _timestamp() + _ZERO_VERSION + os.urandom(HANDSHAKE_SIZE - 8)
        return ServerHandshakeReply(bytes((RTMP_VERSION,)) + s1 + c1, digest=False, scheme=None)

    scheme, offset = found
    client_digest = c1[offset : offset + _DIGEST_SIZE]
    s1 = _make_digest_block(_SERVER_VERSION, scheme, _SERVER_KEY_SHORT)
    s2 = _make_signed_block(_signing_key(_SERVER_KEY_FULL, client_digest))
    return ServerHandshakeReply(bytes((RTMP_VERSION,)) + s1 + s2, digest=True, scheme=scheme)


def validate_c2(c2: bytes, reply: ServerHandshakeReply) -> bool:
    """Lenient check of the client's C2, for logging only (never raises).

    Plain handshake: True when C2 echoes S1's random part (bytes 8..; the spec lets
    the client put its own time in bytes 4..7).  Digest handshake: True when C2's
    last 32 bytes sign the first 1504 with the key derived from our S1 digest, or when
    C2 is such an echo (ffmpeg does that when publishing).
    """
    c2 = bytes(c2)
    if len(c2) != HANDSHAKE_SIZE or len(reply.data) != _S0S1S2_SIZE:
        return False
    s1 = reply.s1
    if c2[8:] == s1[8:]:
        return True
    if not reply.digest or reply.scheme is None or reply.scheme not in _SCHEMES:
        return False
    offset = _digest_offset(s1, reply.scheme)
    server_digest = s1[offset : offset + _DIGEST_SIZE]
    return _signed_block_ok(c2, _signing_key(_PLAYER_KEY_FULL, server_digest))


# ------------------------------------------------------------------------ client side


def client_c0c1(digest: bool = False, scheme: int = 1) -> bytes:
    """C0+C1 for our own clients, benchmarks and tests.

    Plain: time + 4 zero bytes + 1528 random bytes.  With `digest`, C1 carries a
    Flash Player version and a valid client digest placed according to `scheme`.
    """
    c0 = bytes((RTMP_VERSION,))
    if not digest:
        return c0 + _timestamp() + _ZERO_VERSION + os.urandom(HANDSHAKE_SIZE - 8)
    _check_scheme(scheme)
    c1 = _make_digest_block(_CLIENT_VERSION, scheme, _PLAYER_KEY_SHORT)
    return c0 + c1


def client_c2(s0s1s2: bytes, c0c1: bytes) -> bytes:
    """Check the server's S0+S1+S2 against the C0+C1 we sent and return C2.

    When `c0c1` carried a digest and the server answered with a version in S1 (as
    digest servers do), S1's server digest and S2's signature must be valid
    (HandshakeError otherwise) and C2 is 1504 random bytes signed with the key derived
    from the server's digest.  A plain server (zero S1 version, as librtmp checks)
    and a plain C1 get the plain C2: an echo of S1.  Plain S2 is not checked, as
    servers differ in what they echo.
    """
    reply = bytes(s0s1s2)
    sent = bytes(c0c1)
    if len(sent) != _C0C1_SIZE:
        raise HandshakeError(f"C0+C1 must be {_C0C1_SIZE} bytes, got {len(sent)}")
    if len(reply) != _S0S1S2_SIZE:
        raise HandshakeError(f"S0+S1+S2 must be {_S0S1S2_SIZE} bytes, got {len(reply)}")
    _check_version(reply[0], "S0")
    c1 = sent[1:]
    s1 = reply[1 : 1 + HANDSHAKE_SIZE]
    s2 = reply[1 + HANDSHAKE_SIZE :]

    ours = _find_digest(c1, _PLAYER_KEY_SHORT, _SCHEMES)
    if ours is None or s1[4:8] == _ZERO_VERSION:
        return s1

    scheme, c1_offset = ours
    # Prefer the scheme we used, but accept the other one as librtmp does.
    theirs = _find_digest(s1, _SERVER_KEY_SHORT, (scheme, 1 - scheme))
    if theirs is None:
        raise HandshakeError("S1 does not carry a valid server digest")
    _, s1_offset = theirs
    client_digest = c1[c1_offset : c1_offset + _DIGEST_SIZE]
    if not _signed_block_ok(s2, _signing_key(_SERVER_KEY_FULL, client_digest)):
        raise HandshakeError("S2 signature does not match our C1 digest")
    server_digest = s1[s1_offset : s1_offset + _DIGEST_SIZE]
    return _make_signed_block(_signing_key(_PLAYER_KEY_FULL, server_digest))
