"""A WHEP viewer's RTP stream, sent by us instead of by aiortc's `RTCRtpSender`.

aiortc's sender packetises every frame for every peer and awaits a chain of coroutines per packet. Our
viewers' senders are given a track that never yields a frame (`tracks.SenderTrack`); instead:

- the RTP payloads are made once per stream (`packetize`, kept on the shared `VideoUnit`);
- per viewer, `RtpOut` adds only what is its own: the 12-byte header (payload type, sequence number,
  timestamp from its own origin, SSRC) and the header extensions it negotiated (mid, abs-send-time);
- `SendQueue` then protects (SRTP) and sends the packets of all viewers in slices on the event loop, each
  datagram straight to the nominated ICE pair's socket (`RtpLink`).

aiortc keeps the RTCP (`FeedSender`, what the viewer's sender becomes): its sender reports and statistics
read our stream's counts and timestamps, it reads the receiver reports and REMB, and its NACK handling calls
our `retransmit` (RTX when the viewer offered it).

Hooks into aiortc and aioice, checked by `check_sender` when a session starts (aiortc is pinned below 2):
the sender's class (swapped for the `FeedSender` subclass), the private figures its reports are made of
(`_RTCRtpSender__packet_count` ...), the DTLS transport's `_tx_srtp` session and the ICE connection's
nominated pair.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import struct
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from aioice.ice import StunProtocol
from aiortc import RTCDtlsTransport, RTCRtpSender
from aiortc.rtcdtlstransport import State
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpSendParameters

log = logging.getLogger("mediaserver.webrtc")

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
# Seconds from the NTP epoch (1900) to the Unix one.
NTP_OFFSET = 2_208_988_800
# Frames a viewer's stream keeps for retransmission: seconds of video (aiortc keeps 128 packets).
HISTORY_FRAMES = 256

_HEADER = struct.Struct("!BBHII")
_MARKER = 0x80
# What aiortc's sender reports (RTCP SR) and its statistics are made of (`FeedSender` serves them), and the
# rest of the sender we use.
_SENDER_HOOKS = (
    "_RTCRtpSender__ntp_timestamp",
    "_RTCRtpSender__rtp_timestamp",
    "_RTCRtpSender__packet_count",
    "_RTCRtpSender__octet_count",
    "_retransmit",
    "_ssrc",
    "_rtx_ssrc",
)

Addr = tuple[str, int]
# (stream, first sequence number, RTP timestamp, marker on the last packet): one viewer's share of a batch.
Target = tuple["RtpOut", int, int, bool]


class SendPathUnsupported(RuntimeError):
    """This aiortc/aioice version lacks what our RTP send path hooks into."""


def check_sender(sender: RTCRtpSender) -> None:
    missing = [name for name in _SENDER_HOOKS if not hasattr(sender, name)]
    if missing:
        raise SendPathUnsupported(f"aiortc's RTCRtpSender has no {', '.join(missing)}")


def ntp_time(now: float) -> int:
    """Wall-clock time as a 64-bit NTP timestamp (32.32 fixed point)."""
    return int((now + NTP_OFFSET) * 4_294_967_296) & 0xFFFF_FFFF_FFFF_FFFF


def abs_send_time(now: float) -> bytes:
    """The abs-send-time extension's value: NTP seconds in 6.18 fixed point, 24 bits."""
    return (int((now + NTP_OFFSET) * 262_144) & 0xFFFFFF).to_bytes(3, "big")


def extension_block(elements: Sequence[tuple[int, bytes]]) -> tuple[bytes, list[int]]:
    """An RTP header extension block (RFC 8285): one-byte elements when they all fit, two-byte ones otherwise,
    zero-padded to 32 bits. Returns the block and where each element's value starts in it."""
    one_byte = all(0 < ident <= 14 and 0 < len(value) <= 16 for ident, value in elements)
    parts: list[bytes] = []
    offsets: list[int] = []
    at = 4
    for ident, value in elements:
        head = bytes(((ident << 4) | (len(value) - 1),)) if one_byte else bytes((ident, len(value)))
        offsets.append(at + len(head))
        parts.append(head + value)
        at += len(head) + len(value)
    body = b"".join(parts)
    body += bytes(-len(body) % 4)
    return struct.pack("!HH", 0xBEDE if one_byte else 0x1000, len(body) // 4) + body, offsets


def rtx_payload_type(codecs: Sequence[RTCRtpCodecParameters], payload_type: int) -> int | None:
    for codec in codecs:
        if codec.mimeType.lower().endswith("/rtx") and str(codec.parameters.get("apt")) == str(payload_type):
            return codec.payloadType
    return None


class Link(Protocol):
    """Where a stream's packets go (`RtpLink`; tests capture them instead)."""

    @property
    def addr(self) -> Addr | None: ...

    def protect(self, data: bytes, /) -> bytes: ...

    def sendto(self, data: bytes, addr: Addr | None, /) -> None: ...

    def ready(self) -> bool: ...


class RtpLink:
    """Where one sender's packets go: its DTLS transport's SRTP session, then the nominated ICE pair's UDP
    socket; through a TURN relay, aioice's own (asynchronous) send, in order."""

    def __init__(self, dtls: RTCDtlsTransport) -> None:
        self._dtls = dtls
        self.protect: Callable[[bytes], bytes] = dtls._tx_srtp.protect
        connection = dtls.transport._connection
        pair = connection._nominated.get(1)
        self._transport: asyncio.DatagramTransport | None = None
        self.addr: Addr | None = None
        self.sendto: Callable[[bytes, Addr | None], None] = self._queue_datagram
        if pair is not None and isinstance(pair.protocol, StunProtocol) and pair.protocol.transport is not None:
            self._transport = pair.protocol.transport
            self.addr = pair.remote_addr
            self.sendto = self._transport.sendto
        self._relay_send = connection.send
        self._relayed: collections.deque[bytes] = collections.deque()
        self._relay_task: asyncio.Task[None] | None = None

    @property
    def direct(self) -> bool:
        return self._transport is not None

    def ready(self) -> bool:
        """Connected: datagrams sent now would go out (not into a closed socket)."""
        if self._dtls._state is not State.CONNECTED:
            return False
        return self._transport is None or not self._transport.is_closing()

    def _queue_datagram(self, data: bytes, addr: Addr | None = None) -> None:
        self._relayed.append(data)
        if self._relay_task is None:
            self._relay_task = asyncio.get_running_loop().create_task(self._relay())

    async def _relay(self) -> None:
        try:
            while self._relayed:
                await self._relay_send(self._relayed.popleft())
        except ConnectionError:
            self._relayed.clear()
        finally:
            self._relay_task = None


class RtpOut:
    """One sender's RTP stream: header fields, history for retransmission, and the figures of its reports."""

    def __init__(
        self,
        sender: RTCRtpSender,
        parameters: RTCRtpSendParameters,
        on_retransmit: Callable[[], None] | None = None,
        link: Link | None = None,
    ) -> None:
        check_sender(sender)
        codec = parameters.codecs[0]
        if codec.payloadType is None:
            raise SendPathUnsupported("the negotiated codec has no payload type")
        self.payload_type: int = codec.payloadType
        self.rtx_payload_type = rtx_payload_type(parameters.codecs, codec.payloadType)
        self.ssrc: int = sender._ssrc
        self.rtx_ssrc: int = sender._rtx_ssrc
        # Kept for retransmission only when the viewer can ask for it (NACK; browsers offer it for video only).
        self._keeps_history = any(feedback.type == "nack" for feedback in codec.rtcpFeedback)
        # Random origins, sequence numbers in the lower half (an early wrap-around upsets some SRTP receivers).
        self.origin = random.getrandbits(32)
        self.seq = random.getrandbits(15)
        self._rtx_seq = random.getrandbits(15)
        ids = {extension.uri: extension.id for extension in parameters.headerExtensions}
        elements: list[tuple[int, bytes]] = []
        if MID_URI in ids and parameters.muxId:
            elements.append((ids[MID_URI], parameters.muxId.encode()))
        has_abs = ABS_SEND_TIME_URI in ids
        if has_abs:
            elements.append((ids[ABS_SEND_TIME_URI], b"\0\0\0"))
        block, offsets = extension_block(elements) if elements else (b"", [])
        if has_abs:
            # Split around the abs-send-time value (the last element), filled in for each frame.
            self._ext_head, self._ext_tail = block[: offsets[-1]], block[offsets[-1] + 3 :]
        else:
            self._ext_head, self._ext_tail = block, b""
        self._has_abs = has_abs
        self._first_byte = 0x90 if block else 0x80
        self._on_retransmit = on_retransmit
        # The recent frames, a ring of plain lists (no object per frame for the garbage collector to follow):
        # first sequence number, timestamp, marker on the last packet, payloads.
        size = HISTORY_FRAMES if self._keeps_history else 0
        self._kept_seq = [0] * size
        self._kept_timestamp = [0] * size
        self._kept_marker = [False] * size
        self._kept_payloads: list[list[bytes]] = [[]] * size
        self._kept_next = 0
        # The sender reports' figures: packets and payload octets, the last frame's timestamp and wall clock.
        self.packets = 0
        self.octets = 0
        self.last_timestamp = 0
        self.last_time = 0.0
        self.retransmitted = 0
        self.closed = False
        self.link: Link = link if link is not None else RtpLink(sender.transport)

    def close(self) -> None:
        self.closed = True
        self._kept_payloads = [[]] * len(self._kept_payloads)

    def allocate(self, payloads: list[bytes], octets: int, timestamp: int, marker: bool, now: float) -> int:
        """Number a frame's packets (returns the first sequence number), keep it for retransmission and count
        it in the sender's reports."""
        seq = self.seq
        count = len(payloads)
        self.seq = (seq + count) & 0xFFFF
        if self._keeps_history:
            at = self._kept_next
            self._kept_seq[at] = seq
            self._kept_timestamp[at] = timestamp
            self._kept_marker[at] = marker
            self._kept_payloads[at] = payloads
            self._kept_next = (at + 1) % HISTORY_FRAMES
        self.packets += count
        self.octets += octets
        self.last_timestamp = timestamp
        self.last_time = now
        return seq

    def send(self, payloads: list[bytes], seq: int, timestamp: int, marker: bool, abs_time: bytes) -> None:
        """Protect and send a frame's packets (numbered by `allocate`)."""
        link = self.link
        if self.closed or not link.ready():
            return
        ext = self._ext_head + abs_time + self._ext_tail if self._has_abs else self._ext_head
        pack = _HEADER.pack
        protect = link.protect
        sendto = link.sendto
        addr = link.addr
        first = self._first_byte
        pt = self.payload_type
        ssrc = self.ssrc
        join = b"".join
        last = len(payloads) - 1
        for index, payload in enumerate(payloads):
            second = pt | _MARKER if marker and index == last else pt
            sendto(protect(join((pack(first, second, seq, timestamp, ssrc), ext, payload))), addr)
            seq = (seq + 1) & 0xFFFF

    def _find(self, seq: int) -> tuple[int, int, bool, list[bytes]] | None:
        """The packet's index in the kept frame holding packet `seq`, and that frame."""
        size = len(self._kept_seq)
        for back in range(1, size + 1):
            at = (self._kept_next - back) % size
            payloads = self._kept_payloads[at]
            offset = (seq - self._kept_seq[at]) & 0xFFFF
            if offset < len(payloads):
                return offset, self._kept_timestamp[at], self._kept_marker[at], payloads
        return None

    async def retransmit(self, seq: int) -> None:
        """Resend one packet a viewer reported lost (aiortc's NACK handling calls this)."""
        found = self._find(seq)
        link = self.link
        if found is None or self.closed or not link.ready():
            return
        offset, timestamp, marker, payloads = found
        payload = payloads[offset]
        ext = self._ext_head + abs_send_time(time.time()) + self._ext_tail if self._has_abs else self._ext_head
        flag = _MARKER if marker and offset == len(payloads) - 1 else 0
        rtx = self.rtx_payload_type
        if rtx is not None:
            header = _HEADER.pack(self._first_byte, flag | rtx, self._rtx_seq, timestamp, self.rtx_ssrc)
            self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
            packet = b"".join((header, ext, seq.to_bytes(2, "big"), payload))
        else:
            header = _HEADER.pack(self._first_byte, flag | self.payload_type, seq, timestamp, self.ssrc)
            packet = b"".join((header, ext, payload))
        link.sendto(link.protect(packet), link.addr)
        self.retransmitted += 1
        if self._on_retransmit is not None:
            self._on_retransmit()


class FeedSender(RTCRtpSender):
    """A WHEP viewer's sender. The peer connection makes a plain `RTCRtpSender`; `adopt` turns it into this
    subclass (its class is swapped, nothing else changes), whose RTP is our `RtpOut`: started when aiortc starts
    the sender, resending what NACKs ask for, and feeding aiortc's sender reports and statistics."""

    _feed_out: RtpOut | None
    _feed_start: Callable[[FeedSender, RTCRtpSendParameters], RtpOut | None]

    @classmethod
    def adopt(
        cls, sender: RTCRtpSender, start: Callable[[FeedSender, RTCRtpSendParameters], RtpOut | None]
    ) -> FeedSender:
        """Make `sender` ours (before the connection starts); `start` makes its stream when aiortc starts it
        (DTLS is connected by then)."""
        check_sender(sender)
        sender.__class__ = cls
        assert isinstance(sender, cls)
        sender._feed_out = None
        sender._feed_start = start
        return sender

    @property
    def feed_out(self) -> RtpOut | None:
        return self._feed_out

    async def send(self, parameters: RTCRtpSendParameters) -> None:
        await super().send(parameters)
        if self._feed_out is not None:
            return
        try:
            self._feed_out = self._feed_start(self, parameters)
        except Exception:
            # The viewer gets no media and times out; the server carries on.
            log.exception("event=webrtc_send_path_failed kind=%s", self.kind)

    async def _retransmit(self, sequence_number: int) -> None:
        if self._feed_out is not None:
            await self._feed_out.retransmit(sequence_number)

    # The figures aiortc's RTCP sender reports and getStats() read (its own RTP loop, which would write them,
    # never sends anything here).

    @property
    def _RTCRtpSender__packet_count(self) -> int:
        return 0 if self._feed_out is None else self._feed_out.packets

    @_RTCRtpSender__packet_count.setter
    def _RTCRtpSender__packet_count(self, value: int) -> None:
        pass

    @property
    def _RTCRtpSender__octet_count(self) -> int:
        return 0 if self._feed_out is None else self._feed_out.octets

    @_RTCRtpSender__octet_count.setter
    def _RTCRtpSender__octet_count(self, value: int) -> None:
        pass

    @property
    def _RTCRtpSender__rtp_timestamp(self) -> int:
        return 0 if self._feed_out is None else self._feed_out.last_timestamp

    @_RTCRtpSender__rtp_timestamp.setter
    def _RTCRtpSender__rtp_timestamp(self, value: int) -> None:
        pass

    @property
    def _RTCRtpSender__ntp_timestamp(self) -> int:
        out = self._feed_out
        return 0 if out is None or not out.last_time else ntp_time(out.last_time)

    @_RTCRtpSender__ntp_timestamp.setter
    def _RTCRtpSender__ntp_timestamp(self, value: int) -> None:
        pass
