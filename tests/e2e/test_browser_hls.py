"""The /play page in a real headless Chromium: hls.js plays our LL-HLS live, at low latency, across a reconnect.

Uses Debian's Chromium (`.ci/run` installs it) through Playwright; Playwright's own browser downloads are
never used. The measured latencies are printed (`pytest -s`) and recorded as report properties.
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from tests.conftest import ServerProcess, ffmpeg_publish, wait_for_stream

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]
# Playing means currentTime advanced this much (media seconds) since the first frame.
PLAY_SECONDS = 3.0
MAX_LATENCY = 6.0


def chromium_path() -> str:
    """Debian's Chromium; as root, behind a wrapper: normal scheduling, and no CAP_SYS_NICE to leave it.

    A real-time Chromium (inherited SCHED_FIFO, see `normal_scheduling` in tests/conftest.py; as root it also
    raises threads itself) spinning starved this 2-core machine so badly that even SIGKILL could not land."""
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed: Debian's `chromium` package is needed (.ci/run installs it)")
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        return path
    wrapper = Path(tempfile.gettempdir()) / f"chromium-normal-{os.getpid()}.sh"
    if not wrapper.exists():
        wrapper.write_text(
            "#!/bin/sh\n"
            f"exec {setpriv} --inh-caps=-sys_nice --ambient-caps=-sys_nice --bounding-set=-sys_nice -- "
            f'chrt --other 0 {path} "$@"\n'
        )
        wrapper.chmod(0o755)
    return str(wrapper)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    path = chromium_path()
    with sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, timeout=60_000)
        except PlaywrightError as exc:
            # Playwright's message carries the browser's log; run it once more by hand to show its stderr too.
            probe = subprocess.run(
                [path, *CHROMIUM_ARGS, "--dump-dom", "about:blank"], capture_output=True, text=True, timeout=60
            )
            message = f"Chromium ({path}) failed to launch: {exc}\nchromium stderr:\n{probe.stderr[-4000:]}"
            print(message)
            pytest.fail(message)
        yield launched
        launched.close()


@pytest.fixture
def open_player(browser: Browser) -> Iterator[Callable[[ServerProcess, str], tuple[Page, list[str]]]]:
    """Opens /play/{path} in a fresh page and collects its console output (shown when a test fails)."""
    pages: list[Page] = []
    consoles: list[list[str]] = []

    def open_page(server: ServerProcess, path: str) -> tuple[Page, list[str]]:
        page = browser.new_page()
        console: list[str] = []
        page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
        page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
        response = page.goto(server.http_url(f"/play/{path}"))
        assert response is not None and response.status == 200
        pages.append(page)
        consoles.append(console)
        return page, console

    yield open_page
    for page in pages:
        page.close()


def player_stats(page: Page) -> dict[str, Any]:
    stats = page.evaluate("() => window.playerStats")
    assert isinstance(stats, dict), "the page exposes no window.playerStats"
    return stats


def explain(page: Page, console: list[str], server: ServerProcess) -> str:
    return (
        f"player stats: {player_stats(page)}\n"
        f"console (last 20): {console[-20:]}\n"
        f"server log (tail):\n{server.log()[-2000:]}"
    )


def wait_until(
    page: Page,
    console: list[str],
    server: ServerProcess,
    done: Callable[[dict[str, Any]], bool],
    what: str,
    timeout: float,
) -> dict[str, Any]:
    """Polls the player's stats until `done`; fails at once on a fatal hls.js error."""
    deadline = time.monotonic() + timeout
    while True:
        stats = player_stats(page)
        assert not stats["fatalErrors"], (
            f"fatal player error while waiting for {what}\n{explain(page, console, server)}"
        )
        if done(stats):
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f} s waiting for {what}\n{explain(page, console, server)}"
            )
        time.sleep(0.25)


def wait_playing(
    page: Page, console: list[str], server: ServerProcess, since: float = 0.0, timeout: float = 25.0
) -> tuple[float, dict[str, Any]]:
    """Waits for currentTime to pass `since`, then to advance PLAY_SECONDS more: the video really plays.

    Returns the seconds until currentTime first passed `since`, and the stats at the end.
    """
    started = time.monotonic()
    first = wait_until(page, console, server, lambda s: s["currentTime"] > since, "the first frame", timeout)
    first_frame = time.monotonic() - started
    start = first["currentTime"]
    return first_frame, wait_until(
        page,
        console,
        server,
        lambda s: s["currentTime"] >= start + PLAY_SECONDS,
        f"currentTime to advance {PLAY_SECONDS} s from {start:.2f}",
        timeout,
    )


def sample_latency(page: Page, seconds: float) -> tuple[list[float], list[float]]:
    latencies: list[float] = []
    pdt_latencies: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        stats = player_stats(page)
        if stats["latency"] is not None:
            latencies.append(stats["latency"])
        if stats["pdtLatency"] is not None:
            pdt_latencies.append(stats["pdtLatency"])
        time.sleep(0.25)
    return latencies, pdt_latencies


def http_get(server: ServerProcess, path: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(server.http_url(path), timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_pages_and_static_files_are_served(server: ServerProcess) -> None:
    status, headers, body = http_get(server, "/")
    assert status == 200 and b"mediaserver" in body and headers["Cache-Control"] == "no-cache"
    status, headers, body = http_get(server, "/play/live/some%20cam")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert headers["Cache-Control"] == "no-cache" and "script-src 'self'" in headers["Content-Security-Policy"]
    assert b'src="/static/vendor/hls.js/hls.min.js?v=' in body and b'src="/static/play.js"' in body
    assert b"<script>" not in body, "no inline script (CSP)"
    status, headers, body = http_get(server, "/static/vendor/hls.js/hls.min.js?v=1")
    assert status == 200 and len(body) > 100_000 and "javascript" in headers["Content-Type"]
    assert "max-age=31536000" in headers["Cache-Control"]
    status, headers, _ = http_get(server, "/static/play.js")
    assert status == 200 and headers["Cache-Control"] == "no-cache"
    for path in ("/static/", "/static/vendor/", "/static/../pyproject.toml", "/static/%2e%2e/pyproject.toml"):
        status, _, body = http_get(server, path)
        assert status in (403, 404) and b"pyproject" not in body and b"<a href" not in body, (path, status)


def test_hls_js_plays_live_at_low_latency(
    server: ServerProcess,
    open_player: Callable[[ServerProcess, str], tuple[Page, list[str]]],
    record_property: Callable[[str, object], None],
) -> None:
    publisher = ffmpeg_publish(server.rtmp_url("live/browser"), 30, size="640x360", rate=30, gop=30)
    try:
        wait_for_stream(server, "live", "browser")
        # Asked before the first segment is complete, the playlist comes once it is (no empty playlist, which
        # hls.js would take as levelEmptyError and retry only later).
        status, _, playlist = http_get(server, "/hls/live/browser/index.m3u8")
        assert status == 200 and b"#EXTINF" in playlist, playlist
        page, console = open_player(server, "live/browser")
        startup, stats = wait_playing(page, console, server)
        assert stats["engine"] == "hls.js"
        ready_state = page.evaluate("() => document.querySelector('video').readyState")
        assert ready_state >= 2, explain(page, console, server)
        assert (stats["videoWidth"], stats["videoHeight"]) == (640, 360)
        assert not stats["paused"]

        latencies, pdt_latencies = sample_latency(page, 5.0)
        stats = player_stats(page)
        assert not stats["fatalErrors"], explain(page, console, server)
        assert latencies and pdt_latencies, f"no latency reported\n{explain(page, console, server)}"
        latency, pdt_latency = statistics.median(latencies), statistics.median(pdt_latencies)
        assert math.isfinite(latency) and 0 < latency < MAX_LATENCY, latencies
        assert math.isfinite(pdt_latency) and 0 < pdt_latency < MAX_LATENCY, pdt_latencies
        print(
            f"\nhls.js {page.evaluate('() => Hls.version')} against LL-HLS (2 s segments, 0.333 s parts): "
            f"latency median {latency:.2f} s (min {min(latencies):.2f}, max {max(latencies):.2f}), "
            f"program-date-time latency median {pdt_latency:.2f} s (max {max(pdt_latencies):.2f}), "
            f"target {stats['targetLatency']} s, buffer {stats['bufferLength']:.2f} s, "
            f"first frame {startup:.1f} s after the page opened, "
            f"non-fatal errors: {[e['details'] for e in stats['errors']]}"
        )
        record_property("hls_js_latency_seconds", round(latency, 3))
        record_property("hls_js_latency_max_seconds", round(max(latencies), 3))
        record_property("pdt_latency_seconds", round(pdt_latency, 3))
        record_property("target_latency_seconds", stats["targetLatency"])
        record_property("startup_seconds", round(startup, 2))
    finally:
        publisher.kill()
        publisher.wait()


def test_player_survives_a_publisher_reconnect(
    server: ServerProcess,
    open_player: Callable[[ServerProcess, str], tuple[Page, list[str]]],
    record_property: Callable[[str, object], None],
) -> None:
    first = ffmpeg_publish(server.rtmp_url("live/flaky"), 9, size="640x360", rate=30, gop=30)
    second = None
    try:
        wait_for_stream(server, "live", "flaky")
        page, console = open_player(server, "live/flaky")
        _, stats = wait_playing(page, console, server)
        assert stats["videoWidth"] == 640
        # The camera drops (a clean end of its RTMP session) and a new one is back on the same name 1.5 s later.
        _, stderr = first.communicate(timeout=30)
        assert first.returncode == 0, stderr.decode(errors="replace")
        dropped_at = player_stats(page)["currentTime"]
        # The playlist stays live for a while: EXT-X-ENDLIST now would end every player for good.
        status, _, playlist = http_get(server, "/hls/live/flaky/index.m3u8")
        assert status == 200 and b"#EXT-X-ENDLIST" not in playlist and b"#EXT-X-PRELOAD-HINT" in playlist
        time.sleep(1.5)
        second = ffmpeg_publish(server.rtmp_url("live/flaky"), 15, size="320x240", rate=30, gop=30)
        reconnected = time.monotonic()
        stats = wait_until(
            page, console, server, lambda s: s["videoWidth"] == 320, "the 320x240 picture after the reconnect", 20
        )
        switched = time.monotonic() - reconnected
        _, stats = wait_playing(page, console, server, since=stats["currentTime"])
        assert stats["currentTime"] > dropped_at + PLAY_SECONDS
        assert stats["videoHeight"] == 240 and not stats["paused"] and stats["readyState"] >= 2
        # Played through the EXT-X-DISCONTINUITY in place: the page never had to start the player again.
        assert stats["restarts"] == 0, explain(page, console, server)
        assert stats["latency"] is not None and 0 < stats["latency"] < MAX_LATENCY, explain(page, console, server)
        print(
            f"\nreconnect: new picture {switched:.1f} s after the new publisher started; "
            f"latency after it {stats['latency']:.2f} s (PDT {stats['pdtLatency']}), stalls {stats['stalls']}, "
            f"non-fatal errors: {[e['details'] for e in stats['errors']]}"
        )
        record_property("reconnect_picture_seconds", round(switched, 2))
        record_property("latency_after_reconnect_seconds", round(stats["latency"], 3))
    finally:
        for process in (first, second):
            if process is not None:
                process.kill()
                process.wait()
