"""Every route x every role against the one permission matrix."""

from __future__ import annotations

import re

from control.rbac import ROLE_PERMISSIONS, Permission, Role, permissions_for
from tests.control.conftest import Api

# The matrix as documented; control.rbac must say the same.
EXPECTED = {
    Role.ADMIN: set(Permission),
    Role.OPERATOR: {
        "cameras:read",
        "cameras:write",
        "streams:read",
        "recordings:read",
        "recordings:delete",
        "recordings:download",
        "tokens:manage",
        "system:read",
    },
    Role.VIEWER: {"cameras:read", "streams:read", "recordings:read", "recordings:download"},
    Role.API_ONLY: {
        "cameras:read",
        "cameras:write",
        "streams:read",
        "recordings:read",
        "recordings:download",
        "system:read",
    },
}
# The data plane's read-only stats routes predate the control plane and stay public.
DATA_PLANE_ROUTES = {"/api/v1/streams", "/api/v1/streams/{app}/{name}"}
# The WebSocket is no REST route: it authenticates after the upgrade (tests/control/test_websocket.py).
WEBSOCKET_ROUTES = {"/api/v1/ws"}
PUBLIC = {("POST", "/auth/login"), ("POST", "/auth/refresh"), ("POST", "/streaming/auth"), ("GET", "/openapi.json")}


def test_matrix_is_the_documented_one() -> None:
    for role, permissions in EXPECTED.items():
        assert {p.value for p in ROLE_PERMISSIONS[role]} == {str(p) for p in permissions}, role
    assert permissions_for("viewer", ["cameras:write", "cameras:read", "bogus"]) == {Permission.CAMERAS_READ}
    assert permissions_for("nobody") == frozenset()


async def test_every_api_route_is_declared(api: Api) -> None:
    declared = {(r.method, r.full_path) for r in api.plane.routes}
    registered = set()
    for route in api.client.server.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("formatter") or info.get("path") or ""
        if path.startswith("/api/v1") and route.method != "HEAD" and path not in DATA_PLANE_ROUTES | WEBSOCKET_ROUTES:
            registered.add((route.method, path))
    assert registered == declared
    for route in api.plane.routes:
        if (route.method, route.path) in PUBLIC:
            assert not route.authenticated and route.permission is None
        elif route.path not in ("/auth/logout", "/auth/me"):
            assert route.permission is not None, f"{route.method} {route.path} declares no permission"


async def test_every_route_for_every_role(api: Api) -> None:
    admin = await api.token(Role.ADMIN)
    tokens = {role: await api.token(role) for role in Role}
    victims = [await api.add_user(Role.VIEWER) for _ in range(8)]
    checked = 0
    # Logout last: it ends the session the other calls use.
    ordered = sorted(api.plane.routes, key=lambda r: r.path == "/auth/logout")
    for route in ordered:
        for role, token in tokens.items():
            camera = await api.camera(admin)
            _, token_body = await api.call("POST", "/tokens", admin, json={"name": "t", "scopes": ["cameras:read"]})
            values = {
                "camera_id": camera["id"],
                "user_id": str(victims[checked % len(victims)]),
                "token_id": str(token_body["id"]),
                "recording_id": "1",
            }
            path = re.sub(r"{(\w+)}", lambda m, v=values: v[m.group(1)], route.path)  # type: ignore[misc]
            kwargs: dict[str, object] = {}
            if route.body is not None and not route.form:
                kwargs["json"] = {}
            status, body = await api.call(route.method, path, None if not route.authenticated else token, **kwargs)
            allowed = route.permission is None or route.permission in EXPECTED[role]
            assert status != 500, (route.path, role, body)
            if allowed:
                assert status not in (401, 403), (route.method, route.path, role, status, body)
            else:
                assert status == 403, (route.method, route.path, role, status, body)
                assert body["error"]["code"] == "forbidden"
            checked += 1
    assert checked == len(api.plane.routes) * len(Role)


async def test_api_only_token_outside_its_scope(api: Api) -> None:
    admin = await api.token(Role.ADMIN)
    service = await api.add_user(Role.API_ONLY, "svc-reader")
    status, created = await api.call(
        "POST", "/tokens", admin, json={"name": "reader", "scopes": ["cameras:read"], "user_id": service}
    )
    assert status == 201
    token = created["token"]
    assert (await api.call("GET", "/cameras", token))[0] == 200
    for method, path, body in (
        ("POST", "/cameras", {"name": "x"}),
        ("GET", "/users", None),
        ("GET", "/audit-logs", None),
        ("GET", "/system", None),
        ("GET", "/tokens", None),
    ):
        status, answer = await api.call(method, path, token, json=body)
        assert status == 403, (path, answer)
    # Scopes an api_only account cannot hold are refused at creation.
    status, answer = await api.call(
        "POST", "/tokens", admin, json={"name": "x", "scopes": ["users:manage"], "user_id": service}
    )
    assert status == 403 and answer["error"]["code"] == "scope_not_allowed"
