"""The operator's dashboard (web/index.html, web/dashboard/) in a real headless Chromium against the real server.

An admin logs in, adds a camera, copies its publish URL from the page, and a real ffmpeg publishes to it: the
card turns online through the WebSocket (no reload), the live player shows frames, the timeline shows what was
recorded and plays it back. A viewer sees no admin pages and the API refuses them; a phone-sized screen shows
the grid without sideways scrolling. Every page is saved as a screenshot (the folder is printed; `pytest -s`).
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, ViewportSize, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from tests.conftest import ServerProcess, api_call, ffmpeg_publish, start_server, wait_for_stream
from tests.e2e.test_browser_hls import CHROMIUM_ARGS, chromium_path

ADMIN = "admin"
PASSWORD = "dashboard-test-password"
SERVER_ENV = {
    "MEDIASERVER_AUTH_PUBLISH_MODE": "database",
    "MEDIASERVER_ADMIN_USERNAME": ADMIN,
    "MEDIASERVER_ADMIN_PASSWORD": PASSWORD,
    "MEDIASERVER_AUTH_API_ARGON2_MEMORY_KIB": "8192",
    "MEDIASERVER_AUTH_API_ARGON2_TIME_COST": "1",
    # Dashboard figures every second, so the cards' bitrate follows quickly.
    "MEDIASERVER_EVENTS_DASHBOARD_INTERVAL": "1",
}
VIEWER = "watcher"
PHONE: ViewportSize = {"width": 390, "height": 844}
DESKTOP: ViewportSize = {"width": 1280, "height": 900}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The real server with camera keys (publish_mode database) and an admin; cheap password hashes."""
    proc = start_server(tmp_path_factory.mktemp("dashboard-server"), SERVER_ENV)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dashboard-screenshots")
    print(f"\ndashboard screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        try:
            # The WHEP player talks to the server on loopback.
            args = [*CHROMIUM_ARGS, "--allow-loopback-in-peer-connection"]
            launched = playwright.chromium.launch(executable_path=chromium_path(), args=args, timeout=60_000)
        except PlaywrightError as exc:
            pytest.fail(f"Chromium failed to launch: {exc}")
        yield launched
        launched.close()


@pytest.fixture
def new_page(browser: Browser, server: ServerProcess) -> Iterator[Callable[..., tuple[Page, list[str]]]]:
    """A page in a fresh context (its own sessionStorage), with its console collected for failure messages."""
    contexts: list[BrowserContext] = []

    def make(viewport: ViewportSize | None = None) -> tuple[Page, list[str]]:
        context = browser.new_context(viewport=viewport or DESKTOP)
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.http_url(""))
        contexts.append(context)
        page = context.new_page()
        console: list[str] = []
        page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
        page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
        return page, console

    yield make
    for context in contexts:
        context.close()


def admin_token(server: ServerProcess) -> str:
    status, body = api_call(server, "POST", "/auth/login", body={"username": ADMIN, "password": PASSWORD})
    assert status == 200, body
    return str(body["access_token"])


def log_in(page: Page, server: ServerProcess, username: str, password: str) -> None:
    page.goto(server.http_url("/"))
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def wait_live(page: Page, console: list[str]) -> None:
    """The dashboard is up and its WebSocket has joined room "all"."""
    try:
        page.wait_for_selector("#conn[data-state=open]", timeout=10_000)
    except PlaywrightError as exc:
        raise AssertionError(f"the live connection never opened; console: {console[-20:]}") from exc


def shoot(page: Page, shots: Path, name: str) -> None:
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)


def current_time(page: Page, selector: str) -> float:
    return float(page.eval_on_selector(selector, "video => video.currentTime"))


def wait_playing(page: Page, selector: str, console: list[str], what: str, timeout: float = 20.0) -> None:
    """currentTime passes 0, then advances 1.5 s more: frames really advance."""
    page.wait_for_selector(selector)
    deadline = time.monotonic() + timeout
    first = 0.0
    while (first := current_time(page, selector)) <= 0:
        assert time.monotonic() < deadline, f"{what}: no frame; state: {state_text(page)}; console: {console[-20:]}"
        page.wait_for_timeout(250)
    while current_time(page, selector) < first + 1.5:
        assert time.monotonic() < deadline, f"{what}: stuck at {first:.2f} s; console: {console[-20:]}"
        page.wait_for_timeout(250)


def state_text(page: Page) -> str:
    states = page.locator(".player-state")
    return " | ".join(states.all_inner_texts()) if states.count() else "-"


@pytest.mark.slow
def test_admin_adds_a_camera_watches_it_live_and_on_the_timeline(
    server: ServerProcess, new_page: Callable[..., tuple[Page, list[str]]], shots: Path
) -> None:
    page, console = new_page()
    page.goto(server.http_url("/"))
    shoot(page, shots, "01-login")
    log_in(page, server, ADMIN, PASSWORD)
    wait_live(page, console)
    assert page.locator("#who").inner_text().startswith(ADMIN)
    nav = page.locator("#nav").inner_text()
    for label in ("Cameras", "Recordings", "Users", "API tokens", "Audit log", "System"):
        assert label in nav

    # Add a camera through the form; the answer's dialog shows the publish URL.
    page.get_by_role("button", name="Add camera").click()
    dialog = page.locator("dialog[open]")
    dialog.get_by_label("Name").fill("Loading dock")
    dialog.get_by_label("Company").fill("Acme Logistics")
    dialog.get_by_label("Record").check()
    dialog.get_by_role("button", name="Add camera").click()
    created = page.locator("dialog[open]", has_text="Camera added")
    created.wait_for()
    url_input = created.locator("input.publish-url")
    assert url_input.get_attribute("type") == "password", "the publish URL is hidden until asked"
    created.get_by_role("button", name="Show").click()
    publish_url = url_input.input_value()
    assert publish_url.startswith(server.rtmp_url("live/")), publish_url
    created.get_by_role("button", name="Copy").click()
    page.locator(".toast", has_text="copied").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == publish_url
    shoot(page, shots, "02-camera-added")
    created.get_by_role("button", name="Done").click()

    card = page.locator(".card", has_text="Loading dock")
    card.wait_for()
    assert card.locator(".status").get_attribute("data-status") == "offline"
    assert "Offline" in card.locator(".status").inner_text(), "the status is written, not only coloured"
    camera_id = card.get_attribute("data-camera-id")
    assert camera_id
    # A mark that a reload would wipe: the status must change under it.
    page.evaluate("window.__noReload = true")

    publisher = ffmpeg_publish(publish_url, 40, size="320x240", rate=25, gop=25)
    try:
        wait_for_stream(server, "live", camera_id, timeout=15)
        try:
            page.wait_for_selector(f".card[data-camera-id='{camera_id}'] .status[data-status=online]", timeout=15_000)
        except PlaywrightError as exc:
            raise AssertionError(f"the card never turned online; console: {console[-20:]}") from exc
        assert page.evaluate("window.__noReload") is True, "the page was reloaded"
        assert "Online" in card.locator(".status").inner_text()
        assert page.evaluate("window.dashboardLive.lastEventId") > 0
        # The snapshot arrives through an object URL (img-src blob: in the page CSP).
        page.wait_for_function(
            "id => { const img = document.querySelector(`.card[data-camera-id='${id}'] img.snapshot`);"
            " return img && !img.hidden && img.src.startsWith('blob:') && img.naturalWidth > 0; }",
            arg=camera_id,
            timeout=15_000,
        )
        page.wait_for_function(
            "id => document.querySelector(`.card[data-camera-id='${id}'] .bitrate`).textContent.includes('bit/s')",
            arg=camera_id,
            timeout=10_000,
        )
        shoot(page, shots, "03-cameras-online")

        # Watch it live (LL-HLS through hls.js).
        card.locator("a.card-link").click()
        page.wait_for_url(f"**/#/cameras/{camera_id}")
        wait_playing(page, "video.live-video", console, "live LL-HLS")
        assert page.evaluate("window.__noReload") is True
        assert page.locator(".publish input.publish-url").input_value() == publish_url
        shoot(page, shots, "04-camera-live")
        # The same over WebRTC (WHEP).
        page.get_by_role("button", name="WebRTC").click()
        page.wait_for_function("() => document.querySelector('video.live-video').srcObject !== null")
        wait_playing(page, "video.live-video", console, "live WebRTC")
        assert "WebRTC" in state_text(page)
        page.get_by_role("button", name="LL-HLS").click()  # the choice is remembered: leave it as it was

        # The timeline: the recording shows as coverage, and plays back from a point on it.
        page.get_by_role("link", name="Recordings timeline →").click()
        page.wait_for_url(f"**/#/recordings/{camera_id}")
        page.wait_for_selector(".timeline-bar")
        assert "UTC" in page.locator(".page").inner_text()
        deadline = time.monotonic() + 20
        while not page.locator(".span-list button").count():
            assert time.monotonic() < deadline, f"no coverage: {page.locator('.coverage-summary').inner_text()}"
            page.wait_for_timeout(1000)
            page.get_by_role("button", name="Refresh").click()
        assert page.locator(".timeline-span").count() >= 1
        page.locator(".span-list button").first.click()
        wait_playing(page, "video.recording-video", console, "recorded playback", timeout=25)
        assert "UTC" in page.locator(".recorded-at").inner_text()
        shoot(page, shots, "05-timeline")

        # Export the recorded span as one MP4 download.
        span = page.locator(".span-list button").first.inner_text()  # "▶ 01:06:42-01:06:46 (4 s)", UTC
        start, end = re.findall(r"\d{2}:\d{2}:\d{2}", span)
        page.get_by_label("Clip start (UTC, HH:MM:SS)").fill(start)
        page.get_by_label("Clip end (UTC, HH:MM:SS)").fill(end)
        with page.expect_download(timeout=20_000) as download:
            page.get_by_role("button", name="Export MP4").click()
        saved = shots / "export.mp4"
        download.value.save_as(saved)
        data = saved.read_bytes()
        assert data[4:8] == b"ftyp" and len(data) > 10_000, (len(data), data[:16])
        assert "Exported" in page.locator(".export-form [role=status]").inner_text()
    finally:
        publisher.kill()
        publisher.wait(timeout=10)

    for route, name, expected in (
        ("#/users", "06-users", ADMIN),
        ("#/tokens", "07-tokens", "Create token"),
        ("#/audit", "08-audit", "camera.create"),
        ("#/system", "09-system", "Cameras"),
    ):
        page.goto(server.http_url("/") + route)
        page.wait_for_selector(".page h1")
        page.wait_for_function(
            "text => document.querySelector('.page').innerText.includes(text)", arg=expected, timeout=10_000
        )
        assert page.locator(".error-box").count() == 0, page.locator(".error-box").all_inner_texts()
        shoot(page, shots, name)
    assert "Cameras" in page.locator("#fleet-cards").inner_text()

    # The audit log's filters go to the API: an action prefix, then a time after everything.
    page.goto(server.http_url("/#/audit"))
    page.get_by_label("Action (exact, or prefix*)").fill("camera.*")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('.table tbody tr td:nth-child(4)')]"
        ".every(td => td.textContent.startsWith('camera.'))"
    )
    actions = page.locator(".table tbody tr td:nth-child(4)").all_inner_texts()
    assert "camera.create" in actions and "camera.online" in actions, actions
    tomorrow = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86400))
    page.get_by_label("Since (UTC)").fill(tomorrow)
    page.get_by_role("button", name="Apply").click()
    page.locator("td", has_text="No entries match.").wait_for()

    page.get_by_role("button", name="Log out").click()
    page.get_by_role("button", name="Log in").wait_for()
    assert page.evaluate("sessionStorage.getItem('mediaserver.session')") is None
    assert page.locator("#topbar").is_hidden()
    shoot(page, shots, "10-logged-out")
    assert not [line for line in console if line.startswith("pageerror")], console


@pytest.mark.slow
def test_viewer_sees_no_admin_pages_and_the_api_refuses_them(
    server: ServerProcess, new_page: Callable[..., tuple[Page, list[str]]], shots: Path
) -> None:
    token = admin_token(server)
    status, body = api_call(
        server, "POST", "/users", token, {"username": VIEWER, "password": PASSWORD, "role": "viewer"}
    )
    assert status == 201, body
    status, camera = api_call(server, "POST", "/cameras", token, {"name": "Front gate"})
    assert status == 201, camera

    page, console = new_page()
    # A refused login reads as the API's message, not JSON.
    log_in(page, server, VIEWER, "not-the-password")
    error = page.locator(".login-form .error-box")
    error.wait_for()
    assert error.inner_text() == "wrong username or password"
    shoot(page, shots, "11-login-refused")

    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    wait_live(page, console)
    page.locator(".card", has_text="Front gate").wait_for()
    links = page.locator("#nav a").all_inner_texts()
    assert links == ["Cameras", "Recordings"], links
    assert page.get_by_role("button", name="Add camera").count() == 0
    assert page.locator(".bulk-bar, input.select").count() == 0
    shoot(page, shots, "12-viewer-cameras")

    # The API refuses the admin routes to this session's own token.
    statuses = page.evaluate(
        """async () => {
            const token = JSON.parse(sessionStorage.getItem('mediaserver.session')).access_token;
            const out = {};
            for (const path of ['/users', '/audit-logs', '/tokens', '/analytics/system']) {
                const response = await fetch('/api/v1' + path, {headers: {Authorization: 'Bearer ' + token}});
                out[path] = response.status;
            }
            return out;
        }"""
    )
    assert statuses == {"/users": 403, "/audit-logs": 403, "/tokens": 403, "/analytics/system": 403}, statuses

    # Typing an admin page's address shows a refusal, not the page.
    page.goto(server.http_url("/#/users"))
    page.get_by_role("heading", name="Not allowed").wait_for()
    assert page.locator("table").count() == 0
    shoot(page, shots, "13-viewer-not-allowed")

    # The camera page shows no publish URL: the API gave the viewer none.
    page.goto(server.http_url(f"/#/cameras/{camera['id']}"))
    page.get_by_role("heading", name="Front gate").wait_for()
    assert page.locator(".publish, input.publish-url").count() == 0
    assert camera["stream_key"] not in page.content()
    assert page.get_by_role("button", name="Rotate key").count() == 0
    shoot(page, shots, "14-viewer-camera")


def test_phone_sized_screen_shows_the_grid_without_sideways_scrolling(
    server: ServerProcess, new_page: Callable[..., tuple[Page, list[str]]], shots: Path
) -> None:
    token = admin_token(server)
    for name in ("Car park north entrance with a long name", "Lobby"):
        status, body = api_call(
            server, "POST", "/cameras", token, {"name": name, "location": "Building 7, ground floor"}
        )
        assert status == 201, body
    page, console = new_page(PHONE)
    log_in(page, server, ADMIN, PASSWORD)
    wait_live(page, console)
    page.locator(".card", has_text="Lobby").wait_for()
    widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], f"the page scrolls sideways: {widths}"
    cards = page.evaluate("[...document.querySelectorAll('.card')].map(c => c.getBoundingClientRect().right)")
    assert cards and max(cards) <= PHONE["width"], cards
    # The navigation is folded behind a button, and opens.
    toggle = page.get_by_role("button", name="Menu")
    assert toggle.is_visible() and page.locator("#nav").is_hidden()
    shoot(page, shots, "15-phone-grid")
    toggle.click()
    assert toggle.get_attribute("aria-expanded") == "true"
    page.get_by_role("link", name="System").wait_for()
    shoot(page, shots, "16-phone-menu")
    page.keyboard.press("Escape")  # folds the menu again
    assert page.locator("#nav").is_hidden() and toggle.get_attribute("aria-expanded") == "false"
    toggle.click()
    page.get_by_role("link", name="Audit log").click()
    page.wait_for_url("**/#/audit")
    # The menu folds again after a choice (the route's hashchange handler may run just after the URL changed).
    page.locator("#nav").wait_for(state="hidden", timeout=5000)
    widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], f"the audit page scrolls sideways: {widths}"
    shoot(page, shots, "17-phone-audit")
    lobby = page.evaluate("[...window.dashboardStore.cameras.values()].find(c => c.name === 'Lobby').id")
    for route, ready, name in (
        (f"#/cameras/{lobby}", "video.live-video", "22-phone-camera"),
        (f"#/recordings/{lobby}", ".timeline-bar", "23-phone-timeline"),
    ):
        page.goto(server.http_url("/") + route)
        page.wait_for_selector(ready)
        widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], f"{route} scrolls sideways: {widths}"
        shoot(page, shots, name)
    assert not [line for line in console if line.startswith("pageerror")], console


def test_dialogs_close_with_escape_and_errors_read_as_messages(
    server: ServerProcess, new_page: Callable[..., tuple[Page, list[str]]], shots: Path
) -> None:
    page, console = new_page()
    log_in(page, server, ADMIN, PASSWORD)
    wait_live(page, console)
    page.get_by_role("button", name="Add camera").click()
    dialog = page.locator("dialog[open]")
    dialog.wait_for()
    # A source URL the API refuses: its message shows inside the dialog, which stays open.
    dialog.get_by_label("Name").fill("Bad source")
    dialog.get_by_label("Source URL", exact=False).fill("ftp://camera.example/stream")
    dialog.get_by_role("button", name="Add camera").click()
    problem = dialog.locator(".error-box")
    problem.wait_for()
    text = problem.inner_text()
    assert "source_url" in text and "{" not in text, text
    shoot(page, shots, "18-form-error")
    page.keyboard.press("Escape")
    page.wait_for_selector("dialog", state="detached")
    assert page.locator(".card", has_text="Bad source").count() == 0

    # Rotating a key asks first; Escape keeps the key, confirming changes the publish URL.
    card = page.locator(".card", has_text="Lobby")
    camera_id = card.get_attribute("data-camera-id")
    card.locator("a.card-link").click()
    before = page.locator("input.publish-url").input_value()
    page.get_by_role("button", name="Rotate key").click()
    page.locator("dialog[open]", has_text="Rotate the stream key?").wait_for()
    page.keyboard.press("Escape")
    page.wait_for_selector("dialog", state="detached")
    assert page.locator("input.publish-url").input_value() == before
    page.get_by_role("button", name="Rotate key").click()
    page.locator("dialog[open]").get_by_role("button", name="Rotate key").click()
    page.wait_for_function("old => document.querySelector('input.publish-url').value !== old", arg=before)
    token = admin_token(server)
    _, fresh = api_call(server, "GET", f"/cameras/{camera_id}", token)
    assert page.locator("input.publish-url").input_value() == fresh["publish_url"] != before

    # Bulk: select a card, disable it; the card says so.
    page.get_by_role("link", name="← Cameras").click()
    page.get_by_label("Select Lobby").check()
    page.get_by_role("group", name="Bulk actions").get_by_role("button", name="Disable").click()
    page.locator(".card", has_text="Lobby").locator(".tag-disabled").wait_for()
    _, fresh = api_call(server, "GET", f"/cameras/{camera_id}", token)
    assert fresh["enabled"] is False
    shoot(page, shots, "21-bulk-disabled")


def test_live_updates_resume_after_a_dropped_connection(
    server: ServerProcess, new_page: Callable[..., tuple[Page, list[str]]], shots: Path
) -> None:
    token = admin_token(server)
    status, body = api_call(server, "POST", "/cameras", token, {"name": "Stairwell"})
    assert status == 201, body
    page, console = new_page()
    log_in(page, server, ADMIN, PASSWORD)
    wait_live(page, console)
    page.locator(".card", has_text="Stairwell").wait_for()
    lists: list[str] = []
    page.on("request", lambda r: lists.append(r.url) if r.url.split("?")[0].endswith("/api/v1/cameras") else None)
    seen = page.evaluate("window.dashboardLive.lastEventId")
    # Drop the socket and hold the reconnect back for a few seconds; a camera is added meanwhile.
    page.evaluate("() => { const live = window.dashboardLive; live.backoff = 4000; live.socket.close(); }")
    page.wait_for_selector("#conn[data-state=closed]")
    status, camera = api_call(server, "POST", "/cameras", token, {"name": "Added while away"})
    assert status == 201, camera
    assert page.locator(".card", has_text="Added while away").count() == 0
    # Back: the event comes from the replay after `since`, not from reloading the list.
    page.locator(".card", has_text="Added while away").wait_for(timeout=15_000)
    assert page.evaluate("window.dashboardLive.lastEventId") > seen
    assert page.locator("#conn").get_attribute("data-state") == "open"
    assert lists == [], f"the camera list was reloaded: {lists}"
    shoot(page, shots, "19-resumed")


@pytest.mark.slow
def test_tokens_are_refreshed_and_a_revoked_session_returns_to_login(
    server_factory: Callable[..., ServerProcess], new_page: Callable[..., tuple[Page, list[str]]], shots: Path
) -> None:
    short = server_factory({**SERVER_ENV, "MEDIASERVER_AUTH_API_ACCESS_TOKEN_TTL": "6"})
    page, console = new_page()
    log_in(page, short, ADMIN, PASSWORD)
    wait_live(page, console)
    stored = "() => JSON.parse(sessionStorage.getItem('mediaserver.session'))"
    first = page.evaluate(stored)
    # Refreshed before it expires (at 80 % of its 6 s), without a reload; the dashboard keeps working.
    page.wait_for_function(f"old => ({stored})().access_token !== old", arg=first["access_token"], timeout=10_000)
    assert page.evaluate(stored)["refresh_token"] != first["refresh_token"]
    page.goto(short.http_url("/#/users"))
    page.locator("td", has_text=ADMIN).first.wait_for()
    assert page.locator("#conn").get_attribute("data-state") == "open"

    # The session is revoked elsewhere: the next call gets a 401, the refresh fails, back to the login form.
    current = page.evaluate(stored)
    status, body = api_call(
        short, "POST", "/auth/logout", current["access_token"], {"refresh_token": current["refresh_token"]}
    )
    assert status == 200, body
    page.goto(short.http_url("/#/audit"))
    page.get_by_role("button", name="Log in").wait_for(timeout=10_000)
    assert "log in again" in page.locator(".login-form").inner_text()
    assert page.evaluate("sessionStorage.getItem('mediaserver.session')") is None
    shoot(page, shots, "20-session-ended")


def test_dashboard_page_is_served_with_its_policy(server: ServerProcess) -> None:
    with urllib.request.urlopen(server.http_url("/"), timeout=10) as response:
        policy = response.headers["Content-Security-Policy"]
        body = response.read().decode()
    assert "img-src 'self' data: blob:" in policy and "script-src 'self';" in policy
    assert '<script src="/static/dashboard/app.js" type="module">' in body and "<script>" not in body
    for name in ("app.js", "api.js", "live.js", "dashboard.css"):
        with urllib.request.urlopen(server.http_url(f"/static/dashboard/{name}"), timeout=10) as response:
            assert response.status == 200
