"""The real server process and a real ffmpeg: camera keys from the API decide who may publish."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from control.store import Store
from tests.conftest import api_call, ffmpeg_publish, start_server, wait_for_stream
from tests.control.conftest import JWT_SECRET, PASSWORD, clean

pytestmark = pytest.mark.slow


def refused(url: str) -> str:
    """Publish for a moment and expect the server to refuse; returns ffmpeg's complaint."""
    publisher = ffmpeg_publish(url, 3, size="320x240")
    _, err = publisher.communicate(timeout=20)
    assert publisher.returncode != 0, "the publish was accepted"
    return err.decode(errors="replace")


def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition never became true")


async def _reset(url: str) -> None:
    store = Store(url)
    try:
        await clean(store)
    finally:
        await store.close()


def test_camera_keys_decide_who_publishes(tmp_path: Path, database_url: str) -> None:
    env = {
        "MEDIASERVER_AUTH_PUBLISH_MODE": "database",
        "MEDIASERVER_ADMIN_USERNAME": "admin",
        "MEDIASERVER_ADMIN_PASSWORD": PASSWORD,
        "MEDIASERVER_AUTH_API_ARGON2_MEMORY_KIB": "8192",
        "MEDIASERVER_AUTH_API_ARGON2_TIME_COST": "1",
    }
    if database_url.startswith("mysql"):
        asyncio.run(_reset(database_url))
        env.update(
            {
                "MEDIASERVER_DATABASE_URL": database_url,
                "MEDIASERVER_DATABASE_AUTO_MIGRATE": "true",
                "MEDIASERVER_AUTH_API_JWT_SECRET": JWT_SECRET,
            }
        )
    server = start_server(tmp_path, env)
    try:
        status, login = api_call(server, "POST", "/auth/login", body={"username": "admin", "password": PASSWORD})
        assert status == 200, login
        token = login["access_token"]
        status, camera = api_call(server, "POST", "/cameras", token, {"name": "Loading dock", "vendor": "Hikvision"})
        assert status == 201
        camera_id, key = camera["id"], camera["stream_key"]
        assert camera["publish_url"] == server.rtmp_url(f"live/{key}")

        # The right key: accepted, live under the camera id, camera online with live figures.
        publisher = ffmpeg_publish(camera["publish_url"], 8, size="640x360")
        try:
            wait_for_stream(server, "live", camera_id)
            wait_until(lambda: api_call(server, "GET", f"/cameras/{camera_id}", token)[1]["status"] == "online")
            status, live = api_call(server, "GET", f"/cameras/{camera_id}/status", token)
            assert live["live"] and live["stream"]["video"]["codec"] == "h264"
            assert live["stream"]["video"]["width"] == 640
            # The stream key never shows in the public stream list.
            assert key not in json.dumps(server.get_json("/api/v1/streams"))

            # Playback: the HLS URL from the API plays, the bare one does not (cameras are private).
            status, playback = api_call(server, "GET", f"/streaming/hls/{camera_id}", token)
            assert status == 200
            bare = server.http_url(f"/hls/live/{camera_id}/index.m3u8")
            with pytest.raises(urllib.error.HTTPError) as denied:
                urllib.request.urlopen(bare, timeout=10)
            assert denied.value.code == 403
            with urllib.request.urlopen(playback["url"], timeout=15) as response:
                assert response.status == 200 and response.read().startswith(b"#EXTM3U")

            # A wrong key is refused while the camera streams.
            refused(server.rtmp_url("live/not-a-key"))

            # Rotating the key cuts the running publisher off; the old key no longer works.
            status, rotated = api_call(server, "POST", f"/cameras/{camera_id}/rotate-key", token)
            assert status == 200 and rotated["stream_key"] != key
            publisher.wait(timeout=15)
        finally:
            if publisher.poll() is None:
                publisher.kill()
                publisher.wait()
        wait_until(lambda: api_call(server, "GET", f"/cameras/{camera_id}", token)[1]["status"] == "offline")
        refused(server.rtmp_url(f"live/{key}"))

        # Disabled: even the current key is refused.
        status, _ = api_call(server, "PUT", f"/cameras/{camera_id}", token, {"enabled": False})
        assert status == 200
        refused(rotated["publish_url"])

        status, audit = api_call(server, "GET", "/audit-logs?limit=100", token)
        entries = audit["items"]
        denied_reasons = [e["details"]["reason"] for e in entries if e["action"] == "stream.publish_denied"]
        assert denied_reasons == ["camera_disabled", "bad_stream_key", "bad_stream_key"]
        assert all(
            e["ip"] == "127.0.0.1" and not e["success"] for e in entries if e["action"] == "stream.publish_denied"
        )
        actions = [e["action"] for e in entries if e["resource_id"] == camera_id]
        for expected in ("camera.create", "camera.online", "camera.rotate_key", "camera.offline", "camera.disable"):
            assert expected in actions, (expected, actions)
        assert "Traceback" not in server.log()
        # Stream keys never appear whole in the logs.
        assert key not in server.log() and rotated["stream_key"] not in server.log()
    finally:
        server.stop()
