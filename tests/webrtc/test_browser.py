"""The /webrtc player page in a real headless Chromium, playing a High-profile H.264 stream from ffmpeg.

Uses Debian's Chromium through Playwright (never Playwright's own browser downloads). Chromium offers H.264
Constrained Baseline, Baseline, Main and High 4:4:4 (f4001f) but not plain High: the server must answer with a
format that decodes High profile, not with aiortc's Constrained Baseline.
"""

from __future__ import annotations

import time
from typing import Any

from playwright.sync_api import sync_playwright

from tests.conftest import ServerProcess, ffmpeg_publish, wait_for_stream
from tests.e2e.test_browser_hls import chromium_path
from tests.webrtc.helpers import sessions

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",
]


def test_chromium_plays_a_high_profile_stream(webrtc_server: ServerProcess) -> None:
    server = webrtc_server
    chromium = chromium_path()
    # ffmpeg's libx264 default profile for yuv420p is High (the fixture adds zerolatency: no B-frames).
    publisher = ffmpeg_publish(server.rtmp_url("live/x"), 30, size="640x360", rate=25, gop=25)
    try:
        stream = wait_for_stream(server, "live", "x")
        assert stream["video"]["codec"] == "h264"  # type: ignore[index]
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, timeout=60_000)
            try:
                page = browser.new_page()
                opened = time.monotonic()
                page.goto(server.http_url("/webrtc/live/x"))

                def stats() -> dict[str, Any]:
                    value = page.evaluate("window.webrtcStats")
                    assert isinstance(value, dict)
                    return value

                deadline = time.monotonic() + 20
                first = stats()
                while not (first["readyState"] >= 2 and first["framesShown"] >= 5):
                    assert first["error"] is None, first
                    assert time.monotonic() < deadline, f"no picture: {first}\n{server.log()[-3000:]}"
                    page.wait_for_timeout(200)
                    first = stats()
                started_in = time.monotonic() - opened
                page.wait_for_timeout(2500)
                later = stats()
                # Frames keep coming: about 25 per second, and the clock runs.
                assert later["framesShown"] - first["framesShown"] >= 30, (first, later)
                assert later["currentTime"] - first["currentTime"] >= 1.5, (first, later)
                assert later["videoWidth"] == 640 and later["videoHeight"] == 360
                assert later["connectionState"] == "connected" and later["error"] is None
                assert later["audio"] is True
                # The answer carried a format that decodes High profile.
                assert "H264" in later["codec"] and "profile-level-id=42" not in later["codec"], later["codec"]
                (session,) = sessions(server)["sessions"]
                assert session["state"] == "connected" and " 42" not in session["codec"], session
                print(
                    f"\nchromium: first frame {later['firstFrameMs']} ms after page start "
                    f"(page open to picture {started_in:.2f} s), answer {later['answerMs']} ms, "
                    f"receive->display {later['receiveToDisplayMs']} ms, codec {later['codec']}"
                )
                page.close(run_before_unload=True)
            finally:
                browser.close()
        # pagehide sent DELETE (or the session times out): nothing is left.
        deadline = time.monotonic() + 8
        while sessions(server)["count"]:
            assert time.monotonic() < deadline, sessions(server)
            time.sleep(0.2)
    finally:
        publisher.kill()
        publisher.wait()
