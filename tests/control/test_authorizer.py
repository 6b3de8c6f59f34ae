"""Publish/play authorization from the database, its cache, the nginx-rtmp callback, play tokens."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from control.rbac import Role
from mediaserver.auth import Denied, StreamGrant
from mediaserver.hls.segmenter import HlsSettings
from mediaserver.hls.service import HlsService
from mediaserver.http.access import MINT, PLAY_COOKIE, RENEW, WANTS_CREDENTIAL, PlayAccess
from tests.control.conftest import Api


async def test_publish_with_camera_key(api: Api, admin: str) -> None:
    camera = await api.camera(admin)
    auth = api.plane.authorizer
    granted = await auth.authorize_publish("live", camera["stream_key"], {}, "10.0.0.9:5555")
    assert granted == StreamGrant("live", camera["id"], camera_id=camera["id"])
    # The key may also come as ?key= (nginx-rtmp style names).
    assert isinstance(
        await auth.authorize_publish("live", "anything", {"key": camera["stream_key"]}, "p:1"), StreamGrant
    )
    for app, key in (
        ("live", "wrong"),
        ("live", ""),
        ("other", camera["stream_key"]),
        ("live", camera["stream_key"].upper()),
    ):
        assert isinstance(await auth.authorize_publish(app, key, {}, "10.0.0.9:5555"), Denied), (app, key)
    denied = await api.audit(admin, action="stream.publish_denied")
    assert len(denied) == 4 and all(not e["success"] and e["ip"] == "10.0.0.9" for e in denied)
    assert {e["details"]["reason"] for e in denied} == {"bad_stream_key", "unknown_app"}
    # Keys never reach the audit log in full.
    assert all(camera["stream_key"] not in str(e) for e in denied)


async def test_cache_is_invalidated_by_changes(api: Api, admin: str) -> None:
    camera = await api.camera(admin)
    auth = api.plane.authorizer
    key = camera["stream_key"]
    assert isinstance(await auth.authorize_publish("live", key, {}, "p:1"), StreamGrant)
    lookups = auth.lookups
    for _ in range(5):
        assert isinstance(await auth.authorize_publish("live", key, {}, "p:1"), StreamGrant)
    assert auth.lookups == lookups  # served from the cache

    await api.call("PUT", f"/cameras/{camera['id']}", admin, json={"enabled": False})
    result = await auth.authorize_publish("live", key, {}, "p:1")
    assert result == Denied("camera_disabled")
    await api.call("PUT", f"/cameras/{camera['id']}", admin, json={"enabled": True})
    assert isinstance(await auth.authorize_publish("live", key, {}, "p:1"), StreamGrant)

    _status, rotated = await api.call("POST", f"/cameras/{camera['id']}/rotate-key", admin)
    assert await auth.authorize_publish("live", key, {}, "p:1") == Denied("bad_stream_key")
    assert isinstance(await auth.authorize_publish("live", rotated["stream_key"], {}, "p:1"), StreamGrant)

    await api.call("DELETE", f"/cameras/{camera['id']}", admin)
    assert isinstance(await auth.authorize_publish("live", rotated["stream_key"], {}, "p:1"), Denied)
    reasons = [e["details"]["reason"] for e in await api.audit(admin, action="stream.publish_denied")]
    assert reasons == ["bad_stream_key", "bad_stream_key", "camera_disabled"]


async def test_denials_audit_is_bounded_per_ip(api: Api, admin: str) -> None:
    for _ in range(30):
        await api.plane.authorizer.authorize_publish("live", "guess", {}, "192.0.2.1:1")
    assert len(await api.audit(admin, action="stream.publish_denied")) == 10


async def test_play_private_needs_a_token(api: Api, admin: str) -> None:
    private = await api.camera(admin, name="private")
    public = await api.camera(admin, name="public", private=False)
    auth = api.plane.authorizer
    # The HTTP front's question (no waiting): known only once the camera is cached.
    auth.invalidate()
    assert auth.play_now("live", public["id"], {}, "p:1") is None
    assert isinstance(await auth.authorize_play("live", public["id"], {}, "p:1"), StreamGrant)
    assert auth.play_now("live", public["id"], {}, "p:1") == StreamGrant("live", public["id"], camera_id=public["id"])
    assert auth.play_now("other", public["id"], {}, "p:1") is None
    assert await auth.authorize_play("live", private["id"], {}, "p:1") == Denied("bad_play_token")
    assert auth.play_now("live", private["id"], {}, "p:1") == Denied("bad_play_token")
    viewer = await api.token(Role.VIEWER)
    status, playback = await api.call("GET", f"/streaming/hls/{private['id']}", viewer)
    assert status == 200 and playback["protocol"] == "hls"
    assert playback["url"].endswith(f"/hls/live/{private['id']}/index.m3u8?token={playback['token']}")
    token = playback["token"]
    assert isinstance(await auth.authorize_play("live", private["id"], {"token": token}, "p:1"), StreamGrant)
    # A token is good for its camera only, and not once expired or altered.
    other = await api.camera(admin, name="other")
    assert await auth.authorize_play("live", other["id"], {"token": token}, "p:1") == Denied("bad_play_token")
    expired, _ = api.plane.tokens.issue_play(private["id"], ttl=-10)
    assert await auth.authorize_play("live", private["id"], {"token": expired}, "p:1") == Denied("token_expired")
    assert isinstance(await auth.authorize_play("live", private["id"], {"token": token[:-3] + "abc"}, "p:1"), Denied)
    assert await auth.authorize_play("live", "f" * 32, {"token": token}, "p:1") == Denied("unknown_camera")
    # The front checks a private camera's token too, without I/O (the camera is cached by now).
    granted = StreamGrant("live", private["id"], camera_id=private["id"])
    assert auth.play_now("live", private["id"], {"token": token}, "p:1") == granted
    assert auth.play_now("live", private["id"], {"token": expired}, "p:1") == Denied("token_expired")
    assert auth.play_now("live", other["id"], {"token": token}, "p:1") == Denied("bad_play_token")
    # A playlist mints a credential for a viewer without one; a cookie is renewed only once half spent.
    minted = await auth.authorize_play("live", private["id"], {"token": token, WANTS_CREDENTIAL: MINT}, "p:1")
    assert isinstance(minted, StreamGrant) and minted.credential and minted.credential_ttl == 300
    assert auth.play_now("live", private["id"], {"token": minted.credential, WANTS_CREDENTIAL: RENEW}, "p:1") == granted
    aging, _ = api.plane.tokens.issue_play(private["id"], ttl=100)
    renewed = auth.play_now("live", private["id"], {"token": aging, WANTS_CREDENTIAL: RENEW}, "p:1")
    assert isinstance(renewed, StreamGrant) and renewed.credential not in (None, aging)
    status, webrtc = await api.call("GET", f"/streaming/webrtc/{private['id']}", viewer)
    assert status == 200 and f"/whep/live/{private['id']}?token=" in webrtc["url"]
    assert (await api.call("GET", f"/streaming/hls/{'0' * 32}", viewer))[0] == 404


async def test_the_fronts_play_check_waits_for_a_lookup_and_answers_from_an_expired_entry(api: Api, admin: str) -> None:
    """A connection the front gives to aiohttp stays there: for a camera it does not hold, the front waits for one
    lookup; from an expired entry it keeps answering while the camera is read again in the background; a camera
    gone meanwhile loses its entry."""
    public = await api.camera(admin, name="public", private=False)
    auth = api.plane.authorizer
    # Not held yet: the front waits for one lookup, however many requests ask, then knows the answer.
    auth.invalidate()
    lookup = auth.prepare_play("live", public["id"])
    assert lookup is not None and auth.prepare_play("live", public["id"]) is lookup
    await lookup
    grant = StreamGrant("live", public["id"], camera_id=public["id"])
    assert auth.prepare_play("live", public["id"]) is None and auth.play_now("live", public["id"], {}, "p:1") == grant
    assert auth.prepare_play("other", public["id"]) is None
    camera, _ = auth._by_id[public["id"]]
    lookups = auth.lookups
    auth._by_id[public["id"]] = (camera, time.monotonic() - 1)
    assert auth.play_now("live", public["id"], {}, "p:1") == grant
    assert auth.play_now("live", public["id"], {}, "p:1") == grant  # one lookup in flight, not two
    await asyncio.gather(*auth._refreshing.values())
    assert auth.lookups == lookups + 1 and auth._by_id[public["id"]][1] > time.monotonic()
    # Long expired: looked up the slow way. Deleted elsewhere (no invalidation here): the entry goes.
    auth._by_id[public["id"]] = (camera, time.monotonic() - 2 * api.plane.config.api.authorizer_cache_ttl)
    assert auth.play_now("live", public["id"], {}, "p:1") is None
    assert (await api.call("DELETE", f"/cameras/{public['id']}", admin))[0] == 204
    auth._by_id[public["id"]] = (camera, time.monotonic() - 1)
    assert auth.play_now("live", public["id"], {}, "p:1") == grant
    await asyncio.gather(*auth._refreshing.values())
    assert auth.play_now("live", public["id"], {}, "p:1") is None and public["id"] not in auth._by_id


async def test_nginx_rtmp_callback(api: Api, admin: str) -> None:
    camera = await api.camera(admin)

    async def form(fields: dict[str, str]) -> int:
        response = await api.client.post("/api/v1/streaming/auth", data=fields)
        await response.read()
        return response.status

    base = {"app": "live", "addr": "198.51.100.7", "flashver": "FMLE/3.0", "tcurl": "rtmp://x/live", "clientid": "1"}
    assert await form({**base, "call": "publish", "name": camera["stream_key"]}) == 200
    assert await form({**base, "call": "publish", "name": "cam1", "key": camera["stream_key"]}) == 200
    assert await form({**base, "call": "publish", "name": "stolen"}) == 403
    assert await form({**base, "call": "play", "name": camera["id"]}) == 403
    token = api.plane.tokens.issue_play(camera["id"])[0]
    assert await form({**base, "call": "play", "name": camera["id"], "token": token}) == 200
    assert await form({**base, "call": "publish_done", "name": "x"}) == 200
    assert await form({"app": "live"}) == 422
    denied = await api.audit(admin, action="stream.publish_denied")
    assert [e["ip"] for e in denied] == ["198.51.100.7"]


async def test_hls_asks_the_database_authorizer(api_factory: Any) -> None:
    api: Api = await api_factory()
    admin = await api.token(Role.ADMIN)
    private = await api.camera(admin, name="p")
    public = await api.camera(admin, name="q", private=False)
    registry = CollectorRegistry()
    hls = HlsService(api.hub, HlsSettings(), registry, 1.0, PlayAccess(api.plane.authorizer, registry))
    app = web.Application()
    app.router.add_routes(hls.routes())
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        # Allowed requests reach the service (no stream is live: 404); refused ones stop at the authorizer.
        for file in ("index.m3u8", "seg-1.m4s", "part-1-0.m4s", "init-1.mp4"):
            assert (await client.get(f"/hls/live/{public['id']}/{file}")).status == 404
            assert (await client.get(f"/hls/live/{private['id']}/{file}")).status == 403
        token = api.plane.tokens.issue_play(private["id"])[0]
        assert (await client.get(f"/hls/live/{private['id']}/index.m3u8?token={token}")).status == 404
        client.session.cookie_jar.update_cookies({PLAY_COOKIE: token})
        assert (await client.get(f"/hls/live/{private['id']}/seg-1.m4s")).status == 404
        # A player reloads the URL it was given after its token expired: the cookie handed back still plays.
        expired = api.plane.tokens.issue_play(private["id"], ttl=-10)[0]
        assert (await client.get(f"/hls/live/{private['id']}/index.m3u8?token={expired}")).status == 404
        other = api.plane.tokens.issue_play(public["id"])[0]
        client.session.cookie_jar.clear()
        assert (await client.get(f"/hls/live/{private['id']}/index.m3u8?token={expired}")).status == 403
        assert (await client.get(f"/hls/live/{private['id']}/seg-1.m4s?token={other}")).status == 403
    finally:
        await client.close()


async def test_abr_rungs_play_with_their_cameras_rights(api_factory: Any) -> None:
    api = await api_factory(transcode={"streams": ["live/*"], "ladder": ["720p:1280x720:2500k", "480p:854x480:1000k"]})
    admin = await api.token(Role.ADMIN)
    private = await api.camera(admin, name="private")
    public = await api.camera(admin, name="public", private=False)
    auth = api.plane.authorizer
    # The grant names the rung (the player gets the rung, not the original).
    granted = await auth.authorize_play("live", f"{public['id']}_480p", {}, "p:1")
    assert granted == StreamGrant("live", f"{public['id']}_480p", camera_id=public["id"])
    assert await auth.authorize_play("live", f"{public['id']}_360p", {}, "p:1") == Denied("unknown_camera")
    assert await auth.authorize_play("live", f"{'f' * 32}_720p", {}, "p:1") == Denied("unknown_camera")
    # A private camera's play token opens its rungs, and no other camera's.
    token, _ = api.plane.tokens.issue_play(private["id"])
    rung = await auth.authorize_play("live", f"{private['id']}_720p", {"token": token}, "p:1")
    assert isinstance(rung, StreamGrant) and rung.name == f"{private['id']}_720p"
    assert await auth.authorize_play("live", f"{private['id']}_720p", {}, "p:1") == Denied("bad_play_token")
    other, _ = api.plane.tokens.issue_play(public["id"])
    assert await auth.authorize_play("live", f"{private['id']}_720p", {"token": other}, "p:1") == Denied(
        "bad_play_token"
    )
