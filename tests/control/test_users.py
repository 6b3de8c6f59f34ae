"""User administration and the `mediaserver user create` / `camera add` commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from control.rbac import Role
from tests.control.conftest import PASSWORD, Api


async def test_crud(api: Api, admin: str) -> None:
    status, user = await api.call(
        "POST", "/users", admin, json={"username": "Nina", "password": PASSWORD, "role": "operator"}
    )
    assert status == 201 and user["username"] == "nina" and user["role"] == "operator" and not user["disabled"]
    assert "password" not in str(user) and "hash" not in str(user)
    assert (await api.call("POST", "/users", admin, json={"username": "nina", "password": PASSWORD}))[0] == 409
    status, got = await api.call("GET", f"/users/{user['id']}", admin)
    assert got == user
    status, page = await api.call("GET", "/users", admin, params={"role": "operator"})
    assert [u["username"] for u in page["items"]] == ["nina"]
    status, page = await api.call("GET", "/users", admin, params={"q": "NI", "limit": 1})
    assert page["total"] == 1
    status, _changed = await api.call("PUT", f"/users/{user['id']}", admin, json={"password": "another long one"})
    assert status == 200
    await api.login("nina", "another long one")
    assert (await api.call("DELETE", f"/users/{user['id']}", admin))[0] == 204
    assert (await api.call("GET", f"/users/{user['id']}", admin))[0] == 404
    assert (await api.call("GET", "/users/abc", admin))[0] == 404
    actions = [e["action"] for e in await api.audit(admin, action="user.*", resource_id=str(user["id"]))]
    assert actions == ["user.delete", "user.update", "user.create"]


async def test_validation(api: Api, admin: str) -> None:
    for body in (
        {"username": "ab", "password": PASSWORD},
        {"username": "bad name", "password": PASSWORD},
        {"username": "okname", "password": "short"},
        {"username": "okname", "password": PASSWORD, "role": "root"},
        {"username": "okname", "password": PASSWORD, "is_admin": True},
    ):
        status, answer = await api.call("POST", "/users", admin, json=body)
        assert status == 422, body
        assert PASSWORD not in str(answer)  # inputs are never echoed


async def test_last_admin_and_self(api: Api) -> None:
    admin_id = await api.add_user(Role.ADMIN, "solo")
    token = (await api.login("solo"))["access_token"]
    status, body = await api.call("PUT", f"/users/{admin_id}", token, json={"role": "viewer"})
    assert status == 409 and body["error"]["code"] == "last_admin"
    assert (await api.call("PUT", f"/users/{admin_id}", token, json={"disabled": True}))[0] == 409
    assert (await api.call("DELETE", f"/users/{admin_id}", token))[0] == 409
    second = await api.add_user(Role.ADMIN, "duo")
    assert (await api.call("DELETE", f"/users/{second}", token))[0] == 204


async def test_viewer_cannot_write(api: Api, admin: str) -> None:
    viewer = await api.token(Role.VIEWER)
    camera = await api.camera(admin)
    for method, path, body in (
        ("POST", "/cameras", {"name": "x"}),
        ("PUT", f"/cameras/{camera['id']}", {"name": "y"}),
        ("DELETE", f"/cameras/{camera['id']}", None),
        ("POST", "/cameras/bulk", {"action": "delete", "ids": [camera["id"]]}),
        ("POST", "/users", {"username": "evil", "password": PASSWORD, "role": "admin"}),
        ("GET", "/audit-logs", None),
    ):
        status, answer = await api.call(method, path, viewer, json=body)
        assert status == 403, (method, path)
        assert answer["error"]["code"] == "forbidden"
    assert (await api.call("GET", f"/cameras/{camera['id']}", viewer))[0] == 200


def _cli(args: list[str], env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mediaserver", *args], env=env, input=stdin, capture_output=True, text=True, timeout=60
    )


def test_cli_user_create_and_camera_add(tmp_path: Path) -> None:
    env = dict(os.environ)
    env.update(
        {
            "MEDIASERVER_SERVER_DATA_DIR": str(tmp_path / "data"),
            "MEDIASERVER_AUTH_API_ARGON2_MEMORY_KIB": "8192",
            "MEDIASERVER_RTMP_PORT": "1999",
        }
    )
    done = _cli(["user", "create", "--username", "Chief", "--role", "admin"], env, stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    assert "created admin chief" in done.stdout
    again = _cli(["user", "create", "--username", "chief", "--role", "admin"], env, stdin=PASSWORD + "\n")
    assert again.returncode == 1 and "exists" in again.stderr
    short = _cli(["user", "create", "--username", "x1x", "--password", "short"], env)
    assert short.returncode == 1 and "characters" in short.stderr
    added = _cli(["camera", "add", "Front door", "--vendor", "Axis"], env)
    assert added.returncode == 0, added.stderr
    url = next(line for line in added.stdout.splitlines() if line.startswith("publish URL: "))
    assert url.startswith("publish URL: rtmp://127.0.0.1:1999/live/")


async def test_email(api: Api, admin: str) -> None:
    status, user = await api.call(
        "POST", "/users", admin, json={"username": "mail", "password": PASSWORD, "email": "Mail.User@Example.COM"}
    )
    assert status == 201 and user["email"] == "mail.user@example.com"
    # Unique whatever the case; a malformed address is a 422 that names the field.
    status, body = await api.call(
        "POST", "/users", admin, json={"username": "other", "password": PASSWORD, "email": "MAIL.user@example.com"}
    )
    assert status == 409 and body["error"]["code"] == "email_taken"
    status, body = await api.call(
        "POST", "/users", admin, json={"username": "other", "password": PASSWORD, "email": "x@"}
    )
    assert status == 422 and "email" in str(body["error"])
    status, other = await api.call("POST", "/users", admin, json={"username": "other", "password": PASSWORD})
    assert status == 201 and other["email"] is None
    status, body = await api.call("PUT", f"/users/{other['id']}", admin, json={"email": "mail.user@example.com"})
    assert status == 409
    status, changed = await api.call("PUT", f"/users/{other['id']}", admin, json={"email": "o@example.org"})
    assert status == 200 and changed["email"] == "o@example.org"
    status, cleared = await api.call("PUT", f"/users/{other['id']}", admin, json={"email": ""})
    assert status == 200 and cleared["email"] is None
    # Two users without an address do not collide.
    assert (await api.call("POST", "/users", admin, json={"username": "third", "password": PASSWORD}))[0] == 201
