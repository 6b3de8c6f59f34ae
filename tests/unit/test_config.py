from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from mediaserver.config import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_example_documents_every_key_with_its_default() -> None:
    example = tomllib.loads((ROOT / "config.example.toml").read_text())
    defaults = Config()
    for section in dataclasses.fields(defaults):
        assert section.name in example, f"[{section.name}] missing from config.example.toml"
        values = getattr(defaults, section.name)
        for key in dataclasses.fields(values):
            assert key.name in example[section.name], f"{section.name}.{key.name} is not documented"
            assert example[section.name][key.name] == getattr(values, key.name), f"{section.name}.{key.name}"
        extra = set(example[section.name]) - {f.name for f in dataclasses.fields(values)}
        assert not extra, f"undocumented keys in the example: {extra}"
    # And the example loads as is.
    load_config(ROOT / "config.example.toml", environ={})


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[rtmp]\nport = 1940\n[auth]\npublish_mode = "static"\npublish_keys = ["a"]\n')
    config = load_config(
        path, environ={"MEDIASERVER_RTMP_PORT": "1950", "MEDIASERVER_AUTH_PUBLISH_KEYS": "x,y", "OTHER": "1"}
    )
    assert config.rtmp.port == 1950
    assert config.auth.publish_keys == ["x", "y"]
    assert config.auth.publish_mode == "static"
    assert load_config(None, environ={"MEDIASERVER_AUTH_PLAY_KEYS": '["p"]'}).auth.play_keys == ["p"]


@pytest.mark.parametrize(
    "text",
    [
        "[rtmp]\nprot = 1\n",
        "[nosuch]\na = 1\n",
        '[rtmp]\nport = "x"\n',
        '[auth]\npublish_mode = "maybe"\n',
        '[rtmps]\ncert_file = "a.pem"\n',
        "[rtmp]\nout_chunk_size = 1\n",
        "not toml ===",
    ],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config(path, environ={})


def test_bad_environment_value_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"rtmp\.port"):
        load_config(None, environ={"MEDIASERVER_RTMP_PORT": "many"})
