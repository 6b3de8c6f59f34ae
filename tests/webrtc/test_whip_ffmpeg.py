"""FFmpeg's own WHIP muxer (the FFmpeg 8 that PyAV bundles) publishes to a real server: libx264 baseline and
libopus, in a process of its own (tests/webrtc/ffmpeg_whip_publisher.py).

FFmpeg offers `a=setup:passive` (it is the DTLS server, we the client) and, in builds with GnuTLS such as
PyAV's, signs its DTLS certificate with an ECDSA P-224 key. OpenSSL takes no peer certificate on a curve it
does not list in its supported groups in (D)TLS 1.2, and the OpenSSL that pyOpenSSL/cryptography bundle (4.x)
has no P-224 group at all: our client answers FFmpeg's server flight with a fatal `illegal_parameter` alert
(FFmpeg logs "A TLS fatal alert has been received"). With a P-256 (or P-384) certificate passed through the
muxer's `cert_file`/`key_file` options the same muxer works, whichever side is the DTLS server.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import sys
from dataclasses import dataclass
from pathlib import Path

import av
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import ServerProcess, wait_for_stream
from tests.webrtc.helpers import (
    metric,
    probe,
    project_root,
    request,
    wait_no_sessions,
    wait_until,
    whep_play,
)

pytestmark = pytest.mark.skipif("whip" not in av.formats_available, reason="this FFmpeg has no WHIP muxer")

# Long enough for every check below; the test stops the publisher (closes its stdin) once they are done.
PUBLISH_SECONDS = 30


def write_certificate(directory: Path, curve: ec.EllipticCurve) -> tuple[Path, Path]:
    """A self-signed ECDSA certificate on `curve` and its key, as PEM files for the muxer."""
    key = ec.generate_private_key(curve)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "whip-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{curve.name}.crt", directory / f"{curve.name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@dataclass
class Publisher:
    process: asyncio.subprocess.Process
    log_path: Path
    up: bool

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def stop(self) -> tuple[int, str]:
        """Close its stdin (it then closes the muxer, which DELETEs the session); its exit status and the
        rest of its stdout."""
        assert self.process.stdin is not None and self.process.stdout is not None
        with contextlib.suppress(ConnectionError):
            self.process.stdin.close()
        try:
            rest = await asyncio.wait_for(self.process.stdout.read(), 15)
            return await asyncio.wait_for(self.process.wait(), 5), rest.decode()
        except TimeoutError:
            await self.kill()
            raise

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def start_publisher(
    server: ServerProcess, name: str, directory: Path, certificate: ec.EllipticCurve | None
) -> Publisher:
    """Start the FFmpeg WHIP publisher and wait until its session is up (`up`) or it has given up."""
    args = ["--seconds", str(PUBLISH_SECONDS)]
    if certificate is not None:
        cert, key = write_certificate(directory, certificate)
        args += ["--cert", str(cert), "--key", str(key)]
    log_path = directory / f"publisher-{name}.log"
    with open(log_path, "wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.webrtc.ffmpeg_whip_publisher",
            server.http_url(f"/whip/live/{name}"),
            *args,
            cwd=project_root(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
        )
    publisher = Publisher(process, log_path, False)
    assert process.stdout is not None
    try:
        # FFmpeg's own handshake timeout is 5 s; ICE and DTLS take about a second here.
        line = await asyncio.wait_for(process.stdout.readline(), 20)
    except BaseException:
        await publisher.kill()
        raise
    publisher.up = line.strip() == b"PUBLISHING"
    return publisher


async def test_ffmpeg_whip_publish_plays_over_rtmp_hls_and_whep(webrtc_server: ServerProcess, tmp_path: Path) -> None:
    server = webrtc_server
    publisher = await start_publisher(server, "ffcam", tmp_path, ec.SECP256R1())
    viewer = None
    try:
        assert publisher.up, publisher.log()[-3000:] + server.log()[-3000:]
        stream = await asyncio.to_thread(wait_for_stream, server, "live", "ffcam", 15)
        assert stream["publisher"] == {"protocol": "webrtc", "peer": "127.0.0.1"}
        assert stream["video"]["codec"] == "h264"  # type: ignore[index]
        assert (stream["video"]["width"], stream["video"]["height"]) == (320, 240)  # type: ignore[index]

        # RTMP: the H.264 as FFmpeg sent it, and AAC transcoded from its Opus.
        streams = await probe(server.rtmp_url("live/ffcam"))
        by_codec = {s["codec_name"]: s for s in streams}
        assert (by_codec["h264"]["width"], by_codec["h264"]["height"]) == (320, 240), streams
        assert by_codec["aac"]["sample_rate"] == "48000", streams

        # HLS: segments cut on FFmpeg's keyframes (one a second).
        async def playlist_ready() -> bool:
            reply = await request("GET", server.http_url("/hls/live/ffcam/index.m3u8"))
            return reply.status == 200 and "#EXTINF" in reply.body

        for _ in range(100):
            if await playlist_ready():
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("no HLS segment from the FFmpeg WHIP stream")
        hls = await probe(server.http_url("/hls/live/ffcam/index.m3u8"))
        assert {s["codec_name"] for s in hls} == {"h264", "aac"}, hls

        # WHEP: an aiortc viewer decodes FFmpeg's pictures and hears its audio.
        viewer, answer, received = await whep_play(server, "/whep/live/ffcam")
        assert answer.status == 201, answer.body
        assert await wait_until(lambda: len(received.video) >= 20 and len(received.audio) >= 10, 15), (
            len(received.video),
            len(received.audio),
        )
        assert {(f.width, f.height) for f in received.video} == {(320, 240)}

        assert metric(server, "mediaserver_webrtc_received_frames_total", 'media="audio"') > 0
        assert metric(server, "mediaserver_webrtc_transcode_calls_total", 'direction="opus_to_aac"') > 0

        # FFmpeg hangs up (DELETE on close): the stream ends, and with it the viewer's session.
        status, rest = await publisher.stop()
        assert (status, rest.strip()) == (0, "DONE"), publisher.log()[-3000:]
        gone = await request("GET", server.http_url("/api/v1/streams/live/ffcam"))
        assert gone.status == 404
        await viewer.close()
        viewer = None
        await wait_no_sessions(server, 10)
    finally:
        await publisher.kill()
        if viewer is not None:
            await viewer.close()


async def test_ffmpeg_whip_with_a_p224_certificate_fails_at_dtls_and_says_why(
    webrtc_server: ServerProcess, tmp_path: Path
) -> None:
    """The curve alone decides: the same muxer with a P-224 certificate of ours fails after ICE, and the
    server logs a DTLS failure (not an ICE one) with what the operator can do about it."""
    server = webrtc_server
    publisher = await start_publisher(server, "ffp224", tmp_path, ec.SECP224R1())
    try:
        assert not publisher.up
        assert await asyncio.wait_for(publisher.process.wait(), 15) != 0
        output = publisher.log()
        assert "ICE STUN ok" in output, output[-3000:]
        assert "DTLS session failed" in output, output[-3000:]

        def diagnosed() -> bool:
            return any(
                "event=webrtc_dtls_failed kind=whip" in line and "agent=Lavf/" in line and "P-224" in line
                for line in server.log().splitlines()
            )

        assert await wait_until(diagnosed, 5), server.log()[-3000:]
        assert (await request("GET", server.http_url("/api/v1/streams/live/ffp224"))).status == 404
        await wait_no_sessions(server, 10)
    finally:
        await publisher.kill()


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="PyAV's FFmpeg (GnuTLS) makes a P-224 DTLS certificate, which the OpenSSL under aiortc refuses",
)
async def test_ffmpeg_whip_with_its_own_certificate(webrtc_server: ServerProcess, tmp_path: Path) -> None:
    """FFmpeg's default: it generates its certificate. Passes (and so fails as XPASS) once either side
    changes, e.g. an FFmpeg that makes P-256 certificates."""
    server = webrtc_server
    publisher = await start_publisher(server, "ffdefault", tmp_path, None)
    try:
        assert publisher.up, publisher.log()[-2000:]
        await asyncio.to_thread(wait_for_stream, server, "live", "ffdefault", 15)
        assert (await publisher.stop())[0] == 0, publisher.log()[-3000:]
    finally:
        await publisher.kill()
        await wait_no_sessions(server, 10)
