"""Configuration: one TOML file, every key overridable by `MEDIASERVER_<SECTION>_<KEY>`.

Each section is a dataclass whose defaults are the embedded defaults, so running with no
file at all gives a working server. Unknown keys are errors: a typo must not be ignored.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    pass


@dataclass(slots=True)
class ServerConfig:
    data_dir: str = "./data"
    log_level: str = "info"
    # "text" (key=value) or "json"
    log_format: str = "text"


@dataclass(slots=True)
class RtmpConfig:
    host: str = "0.0.0.0"
    port: int = 1935
    # Chunk size we send with; 4096 is what nginx-rtmp uses and every client accepts.
    out_chunk_size: int = 4096
    max_message_size: int = 8 * 1024 * 1024
    handshake_timeout: float = 10.0
    # A connection that has neither published nor played after this many seconds is closed.
    read_timeout: float = 30.0
    # A publisher that sends no media for this many seconds is dropped (0 disables).
    idle_timeout: float = 10.0
    window_ack_size: int = 2_500_000
    max_connections: int = 10_000
    # Bytes buffered towards a slow player before it skips to the next keyframe.
    player_max_buffer: int = 4 * 1024 * 1024


@dataclass(slots=True)
class RtmpsConfig:
    # The TLS listener starts only when both files are set.
    host: str = "0.0.0.0"
    port: int = 1936
    cert_file: str = ""
    key_file: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file and self.key_file)


@dataclass(slots=True)
class HttpConfig:
    host: str = "0.0.0.0"
    port: int = 8080


@dataclass(slots=True)
class HubConfig:
    # Bound on the cached keyframe group per stream.
    gop_cache_max_bytes: int = 32 * 1024 * 1024


@dataclass(slots=True)
class HlsConfig:
    enabled: bool = True
    # Segments are cut on the first keyframe at or after this many seconds.
    segment_duration: float = 2.0
    # LL-HLS part target, in seconds.
    part_duration: float = 0.333
    # Complete segments kept in the live playlist.
    window: int = 6
    # Seconds an ended stream's playlist stays available (a reconnecting publisher continues it).
    grace_seconds: float = 30.0


@dataclass(slots=True)
class AuthConfig:
    # "open": anyone may publish; "static": the stream name (or its ?key= parameter) must be in publish_keys.
    publish_mode: str = "open"
    publish_keys: list[str] = field(default_factory=list)
    # When non-empty, players must present one of these as the stream's ?key= parameter.
    play_keys: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    rtmp: RtmpConfig = field(default_factory=RtmpConfig)
    rtmps: RtmpsConfig = field(default_factory=RtmpsConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    hls: HlsConfig = field(default_factory=HlsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)

    def validate(self) -> None:
        if self.auth.publish_mode not in ("open", "static"):
            raise ConfigError(f"auth.publish_mode must be 'open' or 'static', not {self.auth.publish_mode!r}")
        if self.server.log_format not in ("text", "json"):
            raise ConfigError("server.log_format must be 'text' or 'json'")
        if not 128 <= self.rtmp.out_chunk_size <= 16 * 1024 * 1024:
            raise ConfigError("rtmp.out_chunk_size must be within 128..16777216")
        if not 1024 <= self.rtmp.max_message_size <= 64 * 1024 * 1024:
            raise ConfigError("rtmp.max_message_size must be within 1024..67108864")
        if not 0.1 <= self.hls.part_duration <= self.hls.segment_duration / 2:
            raise ConfigError("hls.part_duration must be within 0.1 s and half of hls.segment_duration")
        if not 1 <= self.hls.segment_duration <= 30 or not 2 <= self.hls.window <= 100:
            raise ConfigError("hls.segment_duration must be within 1..30 s and hls.window within 2..100")
        if bool(self.rtmps.cert_file) != bool(self.rtmps.key_file):
            raise ConfigError("rtmps.cert_file and rtmps.key_file must be set together")


def _convert(value: Any, kind: Any, where: str) -> Any:
    """Coerce a TOML or environment value to the field's declared type."""
    origin = typing.get_origin(kind)
    try:
        if kind is bool:
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered in ("1", "true", "yes", "on"):
                    return True
                if lowered in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if isinstance(value, bool):
                return value
            raise ValueError(value)
        if kind is int:
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if kind is str:
            if not isinstance(value, str):
                raise ValueError(value)
            return value
        if origin is list:
            if isinstance(value, str):
                # Environment: a JSON list, or comma-separated values.
                stripped = value.strip()
                value = json.loads(stripped) if stripped.startswith("[") else [v for v in stripped.split(",") if v]
            if not isinstance(value, list):
                raise ValueError(value)
            (item,) = typing.get_args(kind)
            return [_convert(v, item, where) for v in value]
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{where}: cannot use {value!r} as {kind}") from exc
    raise ConfigError(f"{where}: unsupported type {kind}")


def _apply(section: Any, values: Mapping[str, Any], where: str) -> None:
    hints = typing.get_type_hints(type(section))
    names = {f.name for f in dataclasses.fields(section)}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"unknown key {where}.{key}")
        setattr(section, key, _convert(value, hints[key], f"{where}.{key}"))


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    config = Config()
    sections = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    if path is not None:
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        for name, values in data.items():
            if name not in sections or not isinstance(values, dict):
                raise ConfigError(f"unknown section [{name}]")
            _apply(sections[name], values, name)
    env = os.environ if environ is None else environ
    for name, section in sections.items():
        prefix = f"MEDIASERVER_{name.upper()}_"
        overrides = {
            key[len(prefix) :].lower(): value
            for key, value in env.items()
            if key.startswith(prefix) and key[len(prefix) :].lower() in {f.name for f in dataclasses.fields(section)}
        }
        _apply(section, overrides, name)
    config.validate()
    return config
