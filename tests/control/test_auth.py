"""Login, JWT access tokens, rotating refresh tokens with reuse detection, logout."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import update

from control import security
from control.rbac import Role
from control.security import PasswordHasher, TokenError, TokenService, load_or_create_secret
from control.store import User
from mediaserver.config import AuthApiConfig, ConfigError
from tests.control.conftest import PASSWORD, Api, ApiFactory


async def test_login_answers_a_bearer_pair(api: Api) -> None:
    await api.add_user(Role.OPERATOR, "olga")
    status, body = await api.call("POST", "/auth/login", json={"username": "Olga", "password": PASSWORD})
    assert status == 200
    assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer" and body["expires_in"] == 900
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] and claims["role"] == "operator" and claims["exp"] - claims["iat"] == 900
    status, me = await api.call("GET", "/auth/me", body["access_token"])
    assert status == 200 and me["username"] == "olga" and "cameras:write" in me["permissions"]
    assert me["via"] == "session"


@pytest.mark.parametrize(
    ("username", "password", "setup"),
    [
        ("ghost", PASSWORD, None),
        ("vera", "wrong password!", None),
        ("vera", PASSWORD, "disable"),
        ("svc", PASSWORD, "api_only"),
    ],
)
async def test_failed_logins_are_refused_alike_and_audited(
    api: Api, admin: str, username: str, password: str, setup: str | None
) -> None:
    if username != "ghost":
        user_id = await api.add_user(Role.API_ONLY if setup == "api_only" else Role.VIEWER, username)
    if setup == "disable":
        assert (await api.call("PUT", f"/users/{user_id}", admin, json={"disabled": True}))[0] == 200
    status, body = await api.call("POST", "/auth/login", json={"username": username, "password": password})
    assert status == 401
    assert body == {"error": {"code": "invalid_credentials", "message": "wrong username or password"}}
    failures = await api.audit(admin, action="auth.login", success="false")
    assert failures and failures[0]["actor"] == username and failures[0]["ip"] == "127.0.0.1"
    assert failures[0]["details"]["reason"] in ("unknown_user", "bad_password", "disabled", "api_only")


async def test_successful_login_is_audited(api: Api) -> None:
    user_id = await api.add_user(Role.ADMIN, "root2")
    pair = await api.login("root2")
    entries = await api.audit(pair["access_token"], action="auth.login", user_id=user_id)
    assert [e["success"] for e in entries] == [True]


async def test_refresh_rotates_and_reuse_revokes_the_family(api: Api) -> None:
    await api.add_user(Role.VIEWER, "rita")
    first = await api.login("rita")
    status, second = await api.call("POST", "/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert status == 200 and second["refresh_token"] != first["refresh_token"]
    assert (await api.call("GET", "/auth/me", second["access_token"]))[0] == 200
    # The rotated token comes back (stolen copy): the whole session dies.
    status, body = await api.call("POST", "/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert status == 401 and body["error"]["code"] == "token_revoked"
    status, body = await api.call("POST", "/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert status == 401
    status, body = await api.call("GET", "/auth/me", second["access_token"])
    assert status == 401 and body["error"]["code"] == "token_revoked"
    # Another login is a separate family and still works.
    other = await api.login("rita")
    assert (await api.call("GET", "/auth/me", other["access_token"]))[0] == 200


async def test_unknown_and_expired_refresh_tokens(api: Api) -> None:
    await api.add_user(Role.VIEWER, "emil")
    assert (await api.call("POST", "/auth/refresh", json={"refresh_token": "nope"}))[0] == 401
    api.plane.config.auth_api.refresh_token_ttl = -1
    pair = await api.login("emil")
    status, body = await api.call("POST", "/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert status == 401 and body["error"]["code"] == "token_expired"


async def test_logout_revokes_access_and_refresh(api: Api) -> None:
    await api.add_user(Role.VIEWER, "leo")
    pair = await api.login("leo")
    token = pair["access_token"]
    assert (await api.call("POST", "/auth/logout", token))[0] == 200
    status, body = await api.call("GET", "/cameras", token)
    assert status == 401 and body["error"]["code"] == "token_revoked"
    assert (await api.call("POST", "/auth/refresh", json={"refresh_token": pair["refresh_token"]}))[0] == 401


async def test_expired_tampered_and_foreign_tokens_are_refused(api: Api) -> None:
    user_id = await api.add_user(Role.ADMIN, "ada")
    good = (await api.login("ada"))["access_token"]
    assert (await api.call("GET", "/cameras", good))[0] == 200

    api.plane.tokens.access_ttl = -5
    expired = api.plane.tokens.issue_access(
        user_id, "admin", jwt.decode(good, options={"verify_signature": False})["sid"]
    )[0]
    api.plane.tokens.access_ttl = 900
    status, body = await api.call("GET", "/cameras", expired)
    assert status == 401 and body["error"]["code"] == "token_expired"

    header, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "999999"
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    for tampered in (f"{header}.{forged_payload}.{signature}", good[:-4] + "AAAA", "not.a.jwt", "x"):
        status, body = await api.call("GET", "/cameras", tampered)
        assert status == 401 and body["error"]["code"] == "invalid_token", tampered

    foreign = jwt.encode({**claims, "sub": str(user_id)}, "another-secret-" + "y" * 40, algorithm="HS256")
    none_alg = jwt.encode({**claims, "sub": str(user_id)}, None, algorithm="none")
    play = api.plane.tokens.issue_play("0" * 32)[0]
    for token in (foreign, none_alg, play):
        assert (await api.call("GET", "/cameras", token))[0] == 401
    status, body = await api.call("GET", "/cameras")
    assert status == 401 and body["error"]["code"] == "unauthorized"


async def test_role_change_applies_at_once(api: Api, admin: str) -> None:
    user_id = await api.add_user(Role.OPERATOR, "otto")
    token = (await api.login("otto"))["access_token"]
    assert (await api.call("POST", "/cameras", token, json={"name": "a"}))[0] == 201
    assert (await api.call("PUT", f"/users/{user_id}", admin, json={"role": "viewer"}))[0] == 200
    # A role change revokes the sessions; the old token no longer works.
    assert (await api.call("POST", "/cameras", token, json={"name": "b"}))[0] == 401
    token = (await api.login("otto"))["access_token"]
    assert (await api.call("POST", "/cameras", token, json={"name": "b"}))[0] == 403


def test_secret_file_is_created_private(tmp_path: Path) -> None:
    path = tmp_path / "data" / "jwt_secret"
    secret = load_or_create_secret(path)
    assert len(secret) >= 48
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_secret(path) == secret
    service = TokenService.from_config(AuthApiConfig(), tmp_path / "data", embedded=True)
    assert service.decode_access(service.issue_access(3, "viewer", "s")[0]).user_id == 3
    with pytest.raises(ConfigError):
        TokenService.from_config(AuthApiConfig(), tmp_path / "other", embedded=False)


def test_a_checked_access_token_is_remembered_until_it_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    service = TokenService("HS256", "k" * 40, "k" * 40, access_ttl=60)
    token, _ = service.issue_access(5, "operator", "sid-1")
    first = service.decode_access(token)
    assert service.decode_access(token) is first  # the second look-up is not a second check
    # A token with one character changed is a different token: checked, and refused.
    tampered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    with pytest.raises(TokenError):
        service.decode_access(tampered)
    # Past its expiry the remembered token is refused like any expired one.
    real_time = time.time
    monkeypatch.setattr(security.time, "time", lambda: real_time() + 61)
    with pytest.raises(TokenError, match="token_expired"):
        service.decode_access(token)
    monkeypatch.setattr(security.time, "time", real_time)
    # A new secret forgets what the old one checked.
    fresh, _ = service.issue_access(5, "operator", "sid-2")
    service.decode_access(fresh)
    service.use_secret("n" * 40)
    with pytest.raises(TokenError):
        service.decode_access(fresh)


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_key_pair_algorithms(tmp_path: Path, algorithm: str) -> None:
    key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if algorithm == "RS256"
        else (ec.generate_private_key(ec.SECP256R1()))
    )
    private = tmp_path / "private.pem"
    public = tmp_path / "public.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    config = AuthApiConfig(jwt_algorithm=algorithm, jwt_private_key_file=str(private), jwt_public_key_file=str(public))
    service = TokenService.from_config(config, tmp_path, embedded=False)
    token, _ = service.issue_access(7, "admin", "sid")
    assert jwt.get_unverified_header(token)["alg"] == algorithm
    assert service.decode_access(token).user_id == 7
    # An HS256 token signed with the public key as secret (the classic confusion attack) is refused.
    confused = jwt.encode({"sub": "7"}, "k" * 64, algorithm="HS256")
    with pytest.raises(TokenError):
        service.decode_access(confused)


async def test_argon2id_hashes() -> None:
    hasher = PasswordHasher()  # production parameters
    hashed = await hasher.hash("s3cret-password")
    assert hashed.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert await hasher.verify(hashed, "s3cret-password")
    assert not await hasher.verify(hashed, "other")
    assert not await hasher.verify(None, "anything")
    assert not await hasher.verify("garbage", "anything")


async def test_first_admin_from_environment(api_factory: object) -> None:
    factory = api_factory
    assert callable(factory)
    api = await factory(environ={"MEDIASERVER_ADMIN_USERNAME": "Boss", "MEDIASERVER_ADMIN_PASSWORD": PASSWORD})
    pair = await api.login("boss")
    status, me = await api.call("GET", "/auth/me", pair["access_token"])
    assert status == 200 and me["role"] == "admin"
    # Only on first start: an existing user base is left alone.
    await api.plane.bootstrap_admin()
    _status, users = await api.call("GET", "/users", pair["access_token"])
    assert users["total"] == 1


async def test_embedded_secret_is_made_at_start(tmp_path: Path) -> None:
    from control.plane import ControlPlane
    from mediaserver.config import Config
    from mediaserver.hub import Hub

    config = Config()
    config.server.data_dir = str(tmp_path / "data")
    plane = ControlPlane(config, Hub(), environ={})
    secret = tmp_path / "data" / "jwt_secret"
    assert not secret.exists()
    await plane.start()
    try:
        assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
        assert plane.tokens.decode_access(plane.tokens.issue_access(1, "admin", "s")[0]).user_id == 1
    finally:
        await plane.stop()
    # A shared database needs a configured secret: every node must verify every node's tokens.
    config.database.url = "mysql+asyncmy://root@127.0.0.1:3306/test"
    with pytest.raises(ConfigError, match="jwt_secret"):
        ControlPlane(config, Hub(), environ={})


async def test_who_a_token_belongs_to_is_cached_briefly(api_factory: ApiFactory) -> None:
    api = await api_factory(api={"auth_cache_ttl": 0.5})
    admin = await api.token(Role.ADMIN)
    user_id = await api.add_user(Role.OPERATOR, "cached-op")
    token = (await api.login("cached-op"))["access_token"]
    assert (await api.call("POST", "/cameras", token, json={"name": "a"}))[0] == 201
    # A change made elsewhere (the CLI, another node: straight into the database) applies within the TTL.
    async with api.plane.store.sessions.begin() as session:
        await session.execute(update(User).where(User.id == user_id).values(role="viewer"))
    assert (await api.call("POST", "/cameras", token, json={"name": "b"}))[0] == 201
    await asyncio.sleep(0.6)
    assert (await api.call("POST", "/cameras", token, json={"name": "c"}))[0] == 403
    # A change made through this node applies at once.
    assert (await api.call("PUT", f"/users/{user_id}", admin, json={"role": "operator"}))[0] == 200
    token = (await api.login("cached-op"))["access_token"]
    assert (await api.call("GET", "/auth/me", token))[0] == 200
    assert (await api.call("PUT", f"/users/{user_id}", admin, json={"disabled": True}))[0] == 200
    assert (await api.call("GET", "/auth/me", token))[0] == 401
    _, made = await api.call("POST", "/tokens", admin, json={"name": "t", "scopes": ["cameras:read"]})
    assert (await api.call("GET", "/cameras", made["token"]))[0] == 200
    assert (await api.call("DELETE", f"/tokens/{made['id']}", admin))[0] == 204
    assert (await api.call("GET", "/cameras", made["token"]))[0] == 401
