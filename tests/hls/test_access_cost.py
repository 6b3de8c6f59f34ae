"""The play check's cheap paths keep its answers: credentials are read as before (parsed only when present), the
play cookie apart and tried first, and an open authorizer's grant is given without asking it, while any other
authorizer is still asked every time."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from prometheus_client import CollectorRegistry

from mediaserver.auth import AllowAll, AuthResult, StaticKeys, StreamGrant
from mediaserver.http.access import (
    MINT,
    PLAY_COOKIE,
    RENEW,
    WANTS_CREDENTIAL,
    PlayAccess,
    credentials,
    play_attempts,
    play_cookie,
)


def _request(path: str, headers: dict[str, str] | None = None) -> web.Request:
    request = make_mocked_request("GET", path, headers=headers or {})
    request.match_info.update({"app": "live", "name": "cam"})  # type: ignore[attr-defined]
    return request


def _reference(request: web.Request) -> dict[str, str]:
    """What the play check read before it skipped absent queries (the cookie is read apart)."""
    params = {name: request.query[name] for name in ("key", "token") if name in request.query}
    header = request.headers.get("Authorization", "")
    bearer = header[7:].strip() if header[:7].lower() == "bearer " else ""
    if bearer:
        params.setdefault("key", bearer)
        params.setdefault("token", bearer)
    return params


@pytest.mark.parametrize(
    ("path", "headers", "expected"),
    [
        ("/hls/live/cam/seg-1.m4s", {}, {}),
        ("/hls/live/cam/index.m3u8?key=k1", {}, {"key": "k1"}),
        ("/hls/live/cam/index.m3u8?token=t1&key=k1&key=k2", {}, {"key": "k1", "token": "t1"}),
        ("/hls/live/cam/index.m3u8?_HLS_msn=5", {}, {}),
        ("/hls/live/cam/part-1-0.m4s", {"Authorization": "Bearer b1"}, {"key": "b1", "token": "b1"}),
        ("/hls/live/cam/part-1-0.m4s", {"Authorization": "Basic eA=="}, {}),
        ("/hls/live/cam/part-1-0.m4s", {"Cookie": f"other=1; {PLAY_COOKIE}=c1"}, {}),
        (
            "/hls/live/cam/index.m3u8?key=k1",
            {"Authorization": "bearer b1", "Cookie": f"{PLAY_COOKIE}=c1"},
            {"key": "k1", "token": "b1"},
        ),
    ],
)
def test_credentials_are_read_as_before(path: str, headers: dict[str, str], expected: dict[str, str]) -> None:
    request = _request(path, headers)
    assert credentials(request) == expected == _reference(request)


def test_the_play_cookie_is_tried_first_then_the_requests_own_credential() -> None:
    assert play_cookie(_request("/hls/live/cam/seg-1.m4s", {"Cookie": f"other=1; {PLAY_COOKIE}=c1"})) == "c1"
    assert play_cookie(_request("/hls/live/cam/seg-1.m4s", {"Cookie": "other=1"})) == ""
    cookie = {"key": "c1", "token": "c1"}
    # Media: whatever is there, cookie first; nothing at all is one credential-less attempt.
    assert play_attempts({}, "", False) == [{}]
    assert play_attempts({}, "c1", False) == [cookie]
    assert play_attempts({"token": "t1"}, "c1", False) == [cookie, {"token": "t1"}]
    assert play_attempts({"token": "c1"}, "c1", False) == [cookie]
    # A playlist: the cookie renewed when old, the request's own credential (or none) minted.
    assert play_attempts({"token": "t1"}, "c1", True) == [
        {**cookie, WANTS_CREDENTIAL: RENEW},
        {"token": "t1", WANTS_CREDENTIAL: MINT},
    ]
    assert play_attempts({}, "", True) == [{WANTS_CREDENTIAL: MINT}]


class _Counting(AllowAll):
    """Open as well, but not AllowAll itself: must be asked, as any authorizer is."""

    def __init__(self) -> None:
        self.asked: list[dict[str, str]] = []

    async def authorize_play(self, app: str, name: str, params: dict[str, str], peer: str) -> AuthResult:
        self.asked.append(params)
        return await super().authorize_play(app, name, params, peer)


async def test_an_open_authorizer_grants_without_being_asked_others_are_asked() -> None:
    access = PlayAccess(AllowAll(), CollectorRegistry())
    first = await access.check(_request("/hls/live/cam/index.m3u8?key=x"), "hls", credential=True)
    again = await access.check(_request("/hls/live/cam/seg-1.m4s", {"Cookie": f"{PLAY_COOKIE}=y"}), "hls")
    assert first == StreamGrant("live", "cam") and again is first
    counting = _Counting()
    access = PlayAccess(counting, CollectorRegistry())
    for _ in range(3):
        assert await access.check(_request("/hls/live/cam/index.m3u8?key=x"), "hls", True) == StreamGrant("live", "cam")
    assert counting.asked == [{"key": "x", "_credential": "1"}] * 3
    keys = PlayAccess(StaticKeys([], ["secret"]), CollectorRegistry())
    denied = await keys.check(_request("/hls/live/cam/seg-1.m4s"), "hls")
    granted = await keys.check(_request("/hls/live/cam/seg-1.m4s", {"Cookie": f"{PLAY_COOKIE}=secret"}), "hls")
    assert not isinstance(denied, StreamGrant) and isinstance(granted, StreamGrant)
