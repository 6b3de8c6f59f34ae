"""WHIP/WHEP use the same publish/play keys as RTMP (`?key=` or `Authorization: Bearer`); ICE host candidates
stay within the configured UDP port range."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiortc import RTCSessionDescription, VideoStreamTrack

from tests.conftest import ServerProcess, start_server, wait_for_stream
from tests.webrtc.helpers import SDP, WEBRTC_ENV, loopback_offer, loopback_pc, post, request, wait_no_sessions

PORT_MIN = 20000 + os.getpid() % 20000
PORT_MAX = PORT_MIN + 9


def candidate_ports(sdp: str) -> set[int]:
    return {int(port) for port in re.findall(r"a=candidate:\S+ \d \S+ \d+ \S+ (\d+) typ host", sdp)}


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        **WEBRTC_ENV,
        "MEDIASERVER_AUTH_PUBLISH_MODE": "static",
        "MEDIASERVER_AUTH_PUBLISH_KEYS": "s3cret-key",
        "MEDIASERVER_AUTH_PLAY_KEYS": "p1ay-key",
        "MEDIASERVER_WEBRTC_UDP_PORT_MIN": str(PORT_MIN),
        "MEDIASERVER_WEBRTC_UDP_PORT_MAX": str(PORT_MAX),
    }
    server = start_server(Path(tmp_path_factory.mktemp("webrtc-auth")), env)
    yield server
    server.stop()


async def test_keys_and_port_range(keyed_server: ServerProcess) -> None:
    server = keyed_server
    publisher = loopback_pc()
    publisher.addTrack(VideoStreamTrack())
    viewer = loopback_pc()
    viewer.addTransceiver("video", direction="recvonly")
    try:
        offer = await loopback_offer(publisher)
        denied = await post(server.http_url("/whip/live/cam"), offer)
        assert denied.status == 403 and denied.json()["error"]["code"] == "publish_denied"
        wrong = await post(server.http_url("/whip/live/cam"), offer, {**SDP, "Authorization": "Bearer nope"})
        assert wrong.status == 403
        granted = await post(server.http_url("/whip/live/cam"), offer, {**SDP, "Authorization": "Bearer s3cret-key"})
        assert granted.status == 201, granted.body
        ports = candidate_ports(granted.body)
        assert ports and all(PORT_MIN <= port <= PORT_MAX for port in ports), granted.body
        whip_location = granted.headers["Location"]
        await publisher.setRemoteDescription(RTCSessionDescription(granted.body, "answer"))
        await asyncio.to_thread(wait_for_stream, server, "live", "cam", 15)

        view_offer = await loopback_offer(viewer)
        no_key = await post(server.http_url("/whep/live/cam"), view_offer)
        assert no_key.status == 403 and no_key.json()["error"]["code"] == "play_denied"
        played = await post(server.http_url("/whep/live/cam?key=p1ay-key"), view_offer)
        assert played.status == 201, played.body
        ports = candidate_ports(played.body)
        assert ports and all(PORT_MIN <= port <= PORT_MAX for port in ports), played.body
        for location in (played.headers["Location"], whip_location):
            assert (await request("DELETE", server.http_url(location))).status == 200
        await wait_no_sessions(server)
    finally:
        await publisher.close()
        await viewer.close()
