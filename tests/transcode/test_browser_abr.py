"""The master playlist in hls.js in a real headless Chromium: it sees every rung as a level, and a forced level
switch changes the picture size the video element decodes (Debian's Chromium, the vendored hls.js)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.conftest import ServerProcess, ffmpeg_publish, wait_for_stream
from tests.e2e.test_browser_hls import CHROMIUM_ARGS, chromium_path

START = """src => {
  const video = document.createElement("video");
  video.muted = true;
  document.body.appendChild(video);
  const hls = new Hls({ lowLatencyMode: true });
  const abr = { hls, video, levels: [], errors: [] };
  window.abr = abr;
  hls.on(Hls.Events.ERROR, (_, data) => abr.errors.push(`${data.type}/${data.details}/${data.fatal}`));
  hls.on(Hls.Events.MANIFEST_PARSED, (_, data) => {
    abr.levels = data.levels.map(level => level.height);
    video.play().catch(error => abr.errors.push(`play/${error}`));
  });
  hls.loadSource(src);
  hls.attachMedia(video);
}"""
STATE = """() => ({
  levels: abr.levels, errors: abr.errors, height: abr.video.videoHeight, time: abr.video.currentTime,
  level: abr.hls.currentLevel,
})"""


@pytest.fixture
def page() -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield browser.new_page()
        finally:
            browser.close()


def _until(page: Page, server: ServerProcess, done: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    deadline = time.monotonic() + 25
    while True:
        state: dict[str, Any] = page.evaluate(STATE)
        assert not [e for e in state["errors"] if e.endswith("/true")], f"fatal hls.js error: {state}"
        if done(state):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {state}\n{server.log()[-2000:]}")
        time.sleep(0.25)


@pytest.mark.slow
def test_hls_js_switches_between_the_rungs_of_the_master_playlist(
    server_factory: Callable[..., ServerProcess], page: Page
) -> None:
    server = server_factory(
        {
            "MEDIASERVER_TRANSCODE_STREAMS": json.dumps(["live/*"]),
            "MEDIASERVER_TRANSCODE_LADDER": json.dumps(["240p:426x240:300k", "180p:320x180:200k"]),
            "MEDIASERVER_TRANSCODE_THREADS": "1",
        }
    )
    publisher = ffmpeg_publish(server.rtmp_url("live/abr"), 60, size="640x360", rate=25, gop=25)
    try:
        wait_for_stream(server, "live", "abr")
        page.goto(server.http_url("/healthz"))
        page.add_script_tag(url="/static/vendor/hls.js/hls.min.js?v=1")
        page.evaluate(START, server.http_url("/hls/live/abr/master.m3u8"))
        state = _until(page, server, lambda s: len(s["levels"]) == 3, "the master playlist's levels")
        assert sorted(state["levels"]) == [180, 240, 360]
        _until(page, server, lambda s: s["time"] > 0.5 and s["height"] in (180, 240, 360), "playback")
        for height in (180, 240, 360, 180):
            level = state["levels"].index(height)
            page.evaluate(f"() => {{ abr.hls.currentLevel = {level}; }}")
            reached = _until(page, server, lambda s, h=height: s["height"] == h, f"a {height}-line picture")
            # And it goes on playing at that size.
            _until(page, server, lambda s, t=reached["time"], h=height: s["time"] > t + 1 and s["height"] == h, "play")
    finally:
        publisher.kill()
        publisher.wait()
