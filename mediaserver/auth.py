"""The authorization seam between the data plane and whoever decides who may publish or play.

The data plane only knows this small interface. Two implementations live here (allow-all
and a static key list from config); the control plane plugs a database-backed one in.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qs


@dataclass(frozen=True, slots=True)
class StreamGrant:
    app: str
    name: str
    # Filled in by authorizers that map stream keys to cameras.
    camera_id: str | None = None


@dataclass(frozen=True, slots=True)
class Denied:
    reason: str


AuthResult = StreamGrant | Denied


def split_stream_name(raw: str) -> tuple[str, dict[str, str]]:
    """`cam1?key=abc&x=1` -> ("cam1", {"key": "abc", "x": "1"})."""
    name, _, query = raw.partition("?")
    params = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
    return name, params


def redact(secret: str) -> str:
    """What logs may show of a stream key: enough to tell keys apart, not to reuse one."""
    if len(secret) <= 4:
        return "***"
    return f"{secret[:3]}***"


class Authorizer(Protocol):
    async def authorize_publish(self, app: str, name: str, params: dict[str, str], peer: str) -> AuthResult: ...

    async def authorize_play(self, app: str, name: str, params: dict[str, str], peer: str) -> AuthResult: ...


class AllowAll:
    async def authorize_publish(self, app: str, name: str, params: dict[str, str], peer: str) -> AuthResult:
        return StreamGrant(app, name)

    async def authorize_play(self, app: str, name: str, params: dict[str, str], peer: str) -> AuthResult:
        return StreamGrant(app, name)


def _key_matches(candidates: tuple[bytes, ...], presented: str) -> bool:
    value = presented.encode()
    # Compare against every key in constant time so timing does not reveal a near miss.
    found = False
    for key in candidates:
        found |= hmac.compare_digest(key, value)
    return found


class StaticKeys:
    """Publish allowed when the stream name or its `key` parameter is a configured key."""

    def __init__(self, publish_keys: list[str], play_keys: list[str] | None = None, open_publish: bool = False) -> None:
        self._publish = tuple(k.encode() for k in publish_keys)
        self._play = tuple(k.encode() for k in play_keys or [])
        self._open_publish = open_publish

    async def authorize_publish(self, app: str, name: str, params: dict[str, str], peer: str) -> AuthResult:
        if self._open_publish:
            return StreamGrant(app, name)
        if _key_matches(self._publish, name) or _key_matches(self._publish, params.get("key", "")):
            return StreamGrant(app, name)
        return Denied("bad_stream_key")

    async def authorize_play(self, app: str, name: str, params: dict[str, str], peer: str) -> AuthResult:
        if not self._play or _key_matches(self._play, params.get("key", "")):
            return StreamGrant(app, name)
        return Denied("bad_play_key")
