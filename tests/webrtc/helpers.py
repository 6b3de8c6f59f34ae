"""Test-side WebRTC clients (aiortc) restricted to 127.0.0.1, and server probes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from mediaserver.webrtc.ice import HostCandidates
from tests.conftest import ServerProcess

SDP = {"Content-Type": "application/sdp"}
# The server offers 127.0.0.1 only; short timeouts keep the clean-up tests quick.
WEBRTC_ENV = {
    "MEDIASERVER_WEBRTC_HOST_ADDRESSES": "127.0.0.1",
    "MEDIASERVER_WEBRTC_SESSION_TIMEOUT": "3",
    "MEDIASERVER_WEBRTC_MAX_SESSIONS": "3",
    "MEDIASERVER_WEBRTC_WHIP_KEYFRAME_INTERVAL": "1",
    # aiortc/aioice at info level; the server keeps them there anyway.
    "MEDIASERVER_SERVER_LOG_LEVEL": "info",
}


def loopback_pc() -> RTCPeerConnection:
    """A client peer connection without STUN (no traffic leaves the machine)."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


async def loopback_offer(pc: RTCPeerConnection) -> str:
    """Create and set the offer with host candidates on 127.0.0.1 only (aioice leaves loopback out)."""
    offer = await pc.createOffer()
    await HostCandidates(["127.0.0.1"]).prepare(pc)
    await pc.setLocalDescription(offer)
    assert pc.localDescription is not None
    return pc.localDescription.sdp


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: str

    def json(self) -> Any:
        return json.loads(self.body)


async def post(url: str, body: str | bytes, headers: dict[str, str] | None = None) -> Answer:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers if headers is not None else SDP) as response,
    ):
        return Answer(response.status, dict(response.headers), await response.text())


async def request(method: str, url: str) -> Answer:
    async with aiohttp.ClientSession() as session, session.request(method, url) as response:
        return Answer(response.status, dict(response.headers), await response.text())


@dataclass
class Received:
    video: list[Any] = field(default_factory=list)
    audio: list[Any] = field(default_factory=list)
    first_video_at: float | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def collect(pc: RTCPeerConnection) -> Received:
    """Decode whatever the server sends into `Received`."""
    received = Received()

    async def pump(track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    if received.first_video_at is None:
                        received.first_video_at = time.monotonic()
                    received.video.append(frame)
                else:
                    received.audio.append(frame)

    @pc.on("track")
    def _on_track(track: MediaStreamTrack) -> None:
        received.tasks.append(asyncio.ensure_future(pump(track)))

    return received


async def whep_play(server: ServerProcess, path: str, audio: bool = True) -> tuple[RTCPeerConnection, Answer, Received]:
    pc = loopback_pc()
    pc.addTransceiver("video", direction="recvonly")
    if audio:
        pc.addTransceiver("audio", direction="recvonly")
    received = collect(pc)
    answer = await post(server.http_url(path), await loopback_offer(pc))
    if answer.status == 201:
        await pc.setRemoteDescription(RTCSessionDescription(answer.body, "answer"))
    return pc, answer, received


async def wait_until(predicate: Any, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(step)
    return bool(predicate())


async def probe(url: str) -> list[dict[str, object]]:
    """The streams ffprobe finds at `url` (codec_name, width, height, sample_rate)."""
    ffprobe = shutil.which("ffprobe")
    assert ffprobe is not None, "ffprobe is not installed"
    process = await asyncio.create_subprocess_exec(
        ffprobe,
        "-v",
        "error",
        "-rw_timeout",
        "10000000",
        "-show_entries",
        "stream=codec_name,width,height,sample_rate",
        "-of",
        "json",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    streams: list[dict[str, object]] = json.loads(out)["streams"]
    return streams


def sessions(server: ServerProcess) -> dict[str, Any]:
    data = server.get_json("/api/v1/webrtc/sessions", auth=server.env.get("MEDIASERVER_API_ENABLED") != "false")
    assert isinstance(data, dict)
    return data


def metric(server: ServerProcess, name: str, labels: str = "") -> float:
    """One sample of /metrics (`labels` as written there, e.g. 'kind="whep",state="connected"')."""
    text = server.get_text("/metrics")
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" ([-+0-9.e]+)"
    found = re.search("^" + pattern + "$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def live_peer_connections(server: ServerProcess) -> float:
    return metric(server, "mediaserver_webrtc_peer_connections")


async def wait_no_sessions(server: ServerProcess, timeout: float = 8.0) -> None:
    """Every session gone and every peer connection closed (the clean-up tasks included)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = sessions(server)
        if data["count"] == 0 and data["closing"] == 0 and live_peer_connections(server) == 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"sessions left: {sessions(server)}\n{server.log()[-3000:]}")


def http_status(server: ServerProcess, path: str) -> int:
    try:
        with urllib.request.urlopen(server.http_url(path), timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def log_tail(server: ServerProcess) -> str:
    return server.log()[-3000:]


def project_root() -> Path:
    return Path(__file__).resolve().parents[2]
