"""The authorization seam between the data plane and whoever decides who may publish or play.

The data plane only knows this small interface. Two implementations live here (allow-all
and a static key list from config); the control plane plugs a database-backed one in.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qs, urlsplit, urlunsplit


@dataclass(frozen=True, slots=True)
class StreamGrant:
    app: str
    name: str
    # Filled in by authorizers that map stream keys to cameras.
    camera_id: str | None = None
    # A credential the client may present again for this stream (HLS keeps it in a cookie), and its lifetime.
    credential: str | None = None
    credential_ttl: int = 0


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


def shown_url(url: str) -> str:
    """The URL with any user and password replaced, and no query (it may carry a key)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = ("***@" if parts.username or parts.password else "") + host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


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


def key_alias(key: str) -> str:
    """The public name of a stream published under its own key (`live/<key>`): stable, and no key."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:16]


class StaticKeys:
    """Publish allowed when the stream name or its `key` parameter is a configured key.

    A stream whose name is itself the key (nginx-rtmp style `live/<key>`) is published as `key_alias(key)`, so
    the key never shows in stream lists, playlists, metrics or logs; playing `live/<key>` still finds it.
    """

    def __init__(self, publish_keys: list[str], play_keys: list[str] | None = None, open_publish: bool = False) -> None:
        self._publish = tuple(k.encode() for k in publish_keys)
        self._play = tuple(k.encode() for k in play_keys or [])
        self._open_publish = open_publish

    async def authorize_publish(self, app: str, name: str, params: dict[str, str], peer: str) -> AuthResult:
        if self._open_publish:
            return StreamGrant(app, name)
        if _key_matches(self._publish, name):
            return StreamGrant(app, key_alias(name))
        if _key_matches(self._publish, params.get("key", "")):
            return StreamGrant(app, name)
        return Denied("bad_stream_key")

    async def authorize_play(self, app: str, name: str, params: dict[str, str], peer: str) -> AuthResult:
        shown = key_alias(name) if self._publish and _key_matches(self._publish, name) else name
        if not self._play:
            return StreamGrant(app, shown)
        presented = params.get("key", "")
        if _key_matches(self._play, presented):
            return StreamGrant(app, shown, credential=presented)
        return Denied("bad_play_key")
