"""Several aiortc viewers of one RTMP stream, on the shared send path: all decode, a late one starts on the cached
GOP and gets a keyframe when it asks for one (PLI), lost packets come back (NACK, RTX), the sender reports carry
the real counts. A real ffmpeg publisher with a 20 s GOP, so no keyframe comes from it during a test."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from typing import Any

import pylibsrtp
import pytest
from aiortc import RTCPeerConnection, RTCRtpReceiver

from tests.conftest import ServerProcess, ffmpeg_publish, start_server, wait_for_stream
from tests.webrtc.helpers import WEBRTC_ENV, Received, metric, wait_until, whep_play

GOP = 500  # frames at 25 fps: 20 s
SIZE = (320, 240)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {**WEBRTC_ENV, "MEDIASERVER_WEBRTC_MAX_SESSIONS": "8", "MEDIASERVER_WEBRTC_SESSION_TIMEOUT": "5"}
    process = start_server(tmp_path_factory.mktemp("viewers"), env)
    yield process
    process.stop()
    assert "Traceback" not in process.log(), process.log()[-5000:]


def video_ssrc(answer: str) -> int:
    """The server's video SSRC, from its answer (the first of the FID group when RTX is on)."""
    video = answer[answer.index("m=video") :]
    video = video[: video.index("m=audio")] if "m=audio" in video else video
    found = re.search(r"a=ssrc-group:FID (\d+)", video) or re.search(r"a=ssrc:(\d+) ", video)
    assert found is not None, answer
    return int(found.group(1))


def keyframes(received: Received) -> int:
    return sum(1 for frame in received.video if frame.key_frame)


def video_receiver(pc: RTCPeerConnection) -> RTCRtpReceiver:
    (transceiver,) = [t for t in pc.getTransceivers() if t.kind == "video"]
    return transceiver.receiver


async def remote_sent(pc: RTCPeerConnection) -> int:
    """The packet count of the server's last sender report for our video."""
    report = await video_receiver(pc).getStats()
    counts = [stats.packetsSent for stats in report.values() if stats.type == "remote-outbound-rtp"]
    return max(counts, default=0)


async def test_viewers_of_one_stream_decode_and_a_late_one_gets_keyframes(server: ServerProcess) -> None:
    publisher = ffmpeg_publish(server.rtmp_url("live/many"), 40, size="320x240", rate=25, gop=GOP)
    peers: list[RTCPeerConnection] = []
    try:
        wait_for_stream(server, "live", "many")
        early = []
        for _ in range(3):
            pc, answer, received = await whep_play(server, "/whep/live/many")
            peers.append(pc)
            assert answer.status == 201, answer.body
            early.append(received)
        assert await wait_until(lambda: all(len(r.video) >= 25 and len(r.audio) >= 25 for r in early), 15)

        await asyncio.sleep(2.0)  # the GOP is seconds old now; its next keyframe is many seconds away
        posted = time.monotonic()
        pc, answer, late = await whep_play(server, "/whep/live/many")
        peers.append(pc)
        assert answer.status == 201, answer.body
        assert await wait_until(lambda: len(late.video) >= 10, 10), server.log()[-3000:]
        # The cached GOP: the first picture at once, from the only keyframe there is so far.
        assert late.first_video_at is not None and late.first_video_at - posted < 2.5
        assert keyframes(late) == 1 and late.video[0].key_frame

        # The late viewer asks for a keyframe: an RTMP publisher cannot be asked, the viewer gets the cached
        # GOP again (a second after its last keyframe, the earliest the server answers).
        await asyncio.sleep(1.2)
        before = len(late.video)
        await video_receiver(pc)._send_rtcp_pli(video_ssrc(answer.body))
        assert await wait_until(lambda: keyframes(late) == 2, 3), server.log()[-3000:]
        assert metric(server, "mediaserver_webrtc_gop_resends_total") == 1
        assert metric(server, "mediaserver_webrtc_keyframe_requests_total", 'direction="received"') >= 1
        assert await wait_until(lambda: len(late.video) >= before + 25, 5)

        counts = [len(r.video) for r in early]
        assert await wait_until(lambda: all(len(r.video) >= n + 25 for r, n in zip(early, counts, strict=True)), 5)
        for received in [*early, late]:
            assert {(frame.width, frame.height) for frame in received.video} == {SIZE}
            pts = [frame.pts for frame in received.video]
            assert pts == sorted(pts)
        # aiortc's sender reports carry what our send path counted.
        assert all([await remote_sent(peer) > 0 for peer in peers])
        assert metric(server, "mediaserver_webrtc_feeds") == 1
        assert metric(server, "mediaserver_webrtc_send_queue_delay_seconds") < 0.25
        assert metric(server, "mediaserver_subscribers", 'protocol="webrtc"') == 1
    finally:
        for peer in peers:
            await peer.close()
        publisher.kill()
        publisher.wait()


class Lossy:
    """A viewer's SRTP receive side that loses one video packet in `every` (not retransmissions)."""

    def __init__(self, real: Any, payload_type: int, every: int) -> None:
        self._real = real
        self._payload_type = payload_type
        self._every = every
        self.seen = 0
        self.lost = 0

    def unprotect(self, data: bytes) -> bytes:
        if data[1] & 0x7F == self._payload_type:
            self.seen += 1
            if self.seen % self._every == 0:
                self.lost += 1
                raise pylibsrtp.Error("lost on purpose")
        result: bytes = self._real.unprotect(data)
        return result

    def unprotect_rtcp(self, data: bytes) -> bytes:
        result: bytes = self._real.unprotect_rtcp(data)
        return result


async def test_lost_packets_are_retransmitted(server: ServerProcess) -> None:
    publisher = ffmpeg_publish(server.rtmp_url("live/lossy"), 30, size="320x240", rate=25, gop=GOP)
    peers: list[RTCPeerConnection] = []
    try:
        wait_for_stream(server, "live", "lossy")
        pc, answer, clean = await whep_play(server, "/whep/live/lossy")
        peers.append(pc)
        assert answer.status == 201, answer.body
        lossy_pc, answer, lossy = await whep_play(server, "/whep/live/lossy")
        peers.append(lossy_pc)
        assert answer.status == 201, answer.body
        payload_type = int(re.findall(r"a=rtpmap:(\d+) H264/90000", answer.body)[0])
        dtls = video_receiver(lossy_pc).transport
        assert await wait_until(lambda: dtls._rx_srtp is not None, 10)
        loss = Lossy(dtls._rx_srtp, payload_type, every=10)
        dtls._rx_srtp = loss  # type: ignore[assignment]

        assert await wait_until(lambda: len(clean.video) >= 25 and loss.lost >= 5, 15)
        start_clean, start_lossy = len(clean.video), len(lossy.video)
        await asyncio.sleep(3.0)
        # Every loss came back: the lossy viewer decodes as many frames as the clean one, no keyframe needed.
        assert loss.lost >= 10
        assert len(lossy.video) - start_lossy >= 0.9 * (len(clean.video) - start_clean) - 3
        assert metric(server, "mediaserver_webrtc_rtcp_feedback_received_total", 'type="nack"') > 0
        assert metric(server, "mediaserver_webrtc_rtp_retransmitted_packets_total") >= loss.lost - 2
        assert keyframes(lossy) == 1
    finally:
        for peer in peers:
            await peer.close()
        publisher.kill()
        publisher.wait()
