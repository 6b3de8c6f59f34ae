"""The WHEP viewers of `benchmarks.webrtc_load` (its own part, no other tool uses it): a worker process
of aiortc viewers on 127.0.0.1, driven by JSON lines on stdin, and the SEI send-time mark they read.

    python -m benchmarks.webrtc_viewers      # started by webrtc_load's `Worker`, one per --workers

Commands (one JSON object a line, one answer a line on stdout): `add` {count, full, url, interval}: add
`count` viewers, the first `full` of them complete receivers, and answer their set-up times and failures
once each has media or 15 s passed; `reset`: forget the latencies and frame counts; `report`: latencies
(s), frames of the full viewers, viewers and viewers receiving; `quit`.

Every video frame the publisher sends carries its send time (wall clock, µs) in an SEI NAL unit (user
data unregistered, our UUID); a full viewer takes the time when the frame's last RTP packet arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

# SEI user_data_unregistered: our UUID (no zero bytes, so no emulation prevention is needed), then the
# send time in microseconds as 16 ASCII digits.
SEI_UUID = bytes.fromhex("5745425254432d42454e43482d544d53")
SEI_PAYLOAD = len(SEI_UUID) + 16


def sei_nal(sent_us: int) -> bytes:
    return bytes((0x06, 0x05, SEI_PAYLOAD)) + SEI_UUID + b"%016d" % sent_us + b"\x80"


def sei_time(annexb: bytes) -> float | None:
    """The send time (s) carried by our SEI in an Annex-B access unit, if any."""
    at = annexb.find(SEI_UUID)
    if at < 0:
        return None
    digits = annexb[at + len(SEI_UUID) : at + len(SEI_UUID) + 16]
    return int(digits) / 1e6 if digits.isdigit() else None


@dataclass
class ViewerState:
    posted: float
    light: bool = False
    first_frame: float | None = None  # full viewers: first complete video frame; light ones: first RTP packet
    frames: int = 0  # full viewers: video frames; light ones: RTP packets (audio and video)
    failed: str | None = None
    pc: Any = None


class SkippingSrtp:
    """A light viewer's SRTP receive side: counts RTP packets and drops them undecrypted.

    The server does the same work for every viewer; a light viewer costs the load generator about half as
    much as a full one (no decryption, RTP parsing, jitter buffer), so one 2-core machine can hold more.
    RTCP is still decrypted (the server's sender reports), and ICE consent keeps running.
    """

    def __init__(self, real: Any, state: ViewerState) -> None:
        self._real = real
        self._state = state

    def unprotect(self, data: bytes) -> bytes:
        import pylibsrtp

        state = self._state
        state.frames += 1
        if state.first_frame is None:
            state.first_frame = time.monotonic()
        raise pylibsrtp.Error("not decrypted (light viewer)")

    def unprotect_rtcp(self, data: bytes) -> bytes:
        result: bytes = self._real.unprotect_rtcp(data)
        return result


async def worker_main() -> None:
    """Viewers of one worker process, driven by JSON lines on stdin; answers on stdout."""
    import aiohttp
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from mediaserver.webrtc.ice import HostCandidates
    from mediaserver.webrtc.ingest import tap_receiver

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    viewers: list[ViewerState] = []
    latencies: list[float] = []
    loopback = HostCandidates(["127.0.0.1"])
    http = aiohttp.ClientSession()

    def reply(data: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(data) + "\n")
        sys.stdout.flush()

    async def add_viewer(url: str, light: bool) -> ViewerState:
        state = ViewerState(time.monotonic(), light)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        state.pc = pc
        video = pc.addTransceiver("video", direction="recvonly")
        audio = pc.addTransceiver("audio", direction="recvonly")
        if light:

            @pc.on("connectionstatechange")
            def skip_srtp() -> None:
                dtls = video.receiver.transport
                if pc.connectionState == "connected" and not isinstance(dtls._rx_srtp, SkippingSrtp):
                    dtls._rx_srtp = SkippingSrtp(dtls._rx_srtp, state)  # type: ignore[assignment]

        def on_video(codec: Any, frame: Any) -> None:
            if state.first_frame is None:
                state.first_frame = time.monotonic()
            state.frames += 1

        # aiortc's jitter buffer hands a frame over only when the next one starts (one frame interval
        # later): time the frames at the RTP level instead, from the packet carrying our SEI (the first of
        # the frame) to the one with the marker bit (the last).
        pending: dict[int, float] = {}
        handle_rtp = video.receiver._handle_rtp_packet

        async def timed_rtp(packet: Any, arrival_time_ms: int) -> None:
            if SEI_UUID in packet.payload:
                sent = sei_time(packet.payload)
                if sent is not None:
                    pending[packet.timestamp] = sent
            if packet.marker:
                sent = pending.pop(packet.timestamp, None)
                if sent is not None:
                    latencies.append(time.time() - sent)
                if len(pending) > 100:
                    pending.clear()
            await handle_rtp(packet, arrival_time_ms=arrival_time_ms)

        video.receiver._handle_rtp_packet = timed_rtp  # type: ignore[method-assign]
        tap_receiver(video.receiver, on_video)
        tap_receiver(audio.receiver, lambda codec, frame: None)
        offer = await pc.createOffer()
        await loopback.prepare(pc)
        await pc.setLocalDescription(offer)
        state.posted = time.monotonic()
        try:
            async with http.post(
                url, data=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"}
            ) as response:
                body = await response.text()
                if response.status != 201:
                    state.failed = f"HTTP {response.status}: {body[:200]}"
                    return state
            await pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
        except Exception as exc:
            state.failed = f"{type(exc).__name__}: {exc}"
        return state

    while True:
        line = await reader.readline()
        if not line:
            break
        command = json.loads(line)
        if command["cmd"] == "add":
            added = []
            for index in range(command["count"]):
                added.append(await add_viewer(command["url"], light=index >= command.get("full", command["count"])))
                await asyncio.sleep(command.get("interval", 0.05))
            viewers.extend(added)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and any(v.first_frame is None and v.failed is None for v in added):
                await asyncio.sleep(0.05)
            reply(
                {
                    "setup": [v.first_frame - v.posted for v in added if v.first_frame is not None and not v.light],
                    "setup_light": [v.first_frame - v.posted for v in added if v.first_frame is not None and v.light],
                    "failed": [v.failed or "no media in 15 s" for v in added if v.first_frame is None],
                }
            )
        elif command["cmd"] == "reset":
            latencies.clear()
            for viewer in viewers:
                viewer.frames = 0
            reply({"ok": True})
        elif command["cmd"] == "report":
            reply(
                {
                    "latency": latencies[:],
                    "frames": sum(v.frames for v in viewers if not v.light),
                    "full": sum(1 for v in viewers if not v.light),
                    "viewers": len(viewers),
                    "receiving": sum(1 for v in viewers if v.frames > 0),
                }
            )
        elif command["cmd"] == "quit":
            break
    for viewer in viewers:
        if viewer.pc is not None:
            with contextlib.suppress(Exception):
                await viewer.pc.close()
    await http.close()


class Worker:
    """One viewer worker process (`python -m benchmarks.webrtc_viewers`), called over its pipes."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.webrtc_viewers"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        self.count = 0

    def call(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("a viewer worker died")
        result: dict[str, Any] = json.loads(line)
        return result

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(Exception):
                self.call({"cmd": "quit"})
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


if __name__ == "__main__":
    asyncio.run(worker_main())
