"""MediaServer and the control plane: which authorizer is used, and the config keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from control.authorizer import DatabaseAuthorizer
from mediaserver.app import MediaServer, make_authorizer
from mediaserver.auth import AllowAll, StaticKeys
from mediaserver.config import Config, ConfigError, load_config


def _config(tmp_path: Path, **env: str) -> Config:
    return load_config(None, environ={"MEDIASERVER_SERVER_DATA_DIR": str(tmp_path / "d"), **env})


def test_camera_keys_are_the_default(tmp_path: Path) -> None:
    server = MediaServer(_config(tmp_path))
    assert server.control is not None  # the API is on
    assert isinstance(server.authorizer, DatabaseAuthorizer)
    assert not (tmp_path / "d").exists()  # nothing written before start
    lab = MediaServer(_config(tmp_path, MEDIASERVER_AUTH_PUBLISH_MODE="open"))
    assert isinstance(lab.authorizer, AllowAll)


def test_database_mode_uses_the_camera_table(tmp_path: Path) -> None:
    server = MediaServer(_config(tmp_path, MEDIASERVER_AUTH_PUBLISH_MODE="database"))
    assert isinstance(server.authorizer, DatabaseAuthorizer)
    assert server.authorizer is server.control.authorizer  # type: ignore[union-attr]
    static = _config(tmp_path, MEDIASERVER_AUTH_PUBLISH_MODE="static", MEDIASERVER_AUTH_PUBLISH_KEYS="k")
    assert isinstance(make_authorizer(static, None), StaticKeys)


def test_api_can_be_switched_off(tmp_path: Path) -> None:
    # Without the API there is no camera table: such a server needs another publish mode.
    server = MediaServer(_config(tmp_path, MEDIASERVER_API_ENABLED="false", MEDIASERVER_AUTH_PUBLISH_MODE="open"))
    assert server.control is None
    paths = {r.resource.canonical for r in server.http_app.router.routes() if r.resource is not None}
    assert "/api/v1/cameras" not in paths and "/api/v1/streams" in paths
    with pytest.raises(ConfigError, match=r"api\.enabled"):
        _config(tmp_path, MEDIASERVER_API_ENABLED="false")


@pytest.mark.parametrize(
    "env",
    [
        {"MEDIASERVER_AUTH_API_JWT_ALGORITHM": "none"},
        {"MEDIASERVER_AUTH_API_JWT_ALGORITHM": "RS256"},
        {"MEDIASERVER_AUTH_API_ACCESS_TOKEN_TTL": "0"},
        {"MEDIASERVER_API_RATE_WINDOW": "0"},
    ],
)
def test_bad_control_settings(tmp_path: Path, env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        _config(tmp_path, **env)
