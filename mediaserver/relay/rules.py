"""Push rules (`app/name=rtmp://host/app/key`, `live/*=rtmp://host/app/{name}`) and the targets they make.

A target URL carries the target's stream key in its last path segment (or its query): only `Target.shown`,
which replaces both and any user info, may reach a log line or an error message.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from mediaserver.auth import shown_url
from mediaserver.config import ConfigError

DEFAULT_PORTS = {"rtmp": 1935, "rtmps": 443}
PLACEHOLDERS = ("{app}", "{name}")


@dataclass(frozen=True, slots=True)
class Target:
    """Where one stream goes: what `RtmpClient.connect` and `publish` take."""

    scheme: str
    host: str
    port: int
    app: str
    # The publish name: the stream key, with the URL's query if it had one (`key?secret=...`).
    name: str
    tc_url: str
    # The URL as logs may show it: rtmp://host:port/app/***
    shown: str

    @property
    def tls(self) -> bool:
        return self.scheme == "rtmps"

    def secrets(self) -> tuple[str, ...]:
        """Texts that must never be shown, longest first: the publish name, its key and its query's values."""
        key, _, query = self.name.partition("?")
        values = [value for _, value in parse_qsl(query)]
        return tuple(sorted({s for s in (self.name, key, query, *values) if len(s) >= 3}, key=len, reverse=True))


def parse_target(url: str) -> Target:
    """`rtmp[s]://host[:port]/app/key[?query]`; the app is the first path segment, the key all the rest."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError("a relay target must be an rtmp:// or rtmps:// URL")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError as exc:  # the port is not a number (the URL is not shown: it may hold the key)
        raise ValueError("a relay target's port must be a number") from exc
    host = parts.hostname or ""
    app, _, name = parts.path.lstrip("/").partition("/")
    if not host or not app or not name:
        raise ValueError("a relay target looks like rtmp://host[:port]/app/stream-key")
    if parts.query:
        name = f"{name}?{parts.query}"
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    tc_url = f"{scheme}://{netloc}/{app}"
    shown = f"{shown_url(f'{scheme}://{parts.netloc}/{app}')}/***"
    return Target(scheme, host, port, app, name, tc_url, shown)


@dataclass(frozen=True, slots=True)
class PushRule:
    """Streams whose `app/name` matches `pattern` (shell-style: `live/*`) go to `url`, where `{app}` and
    `{name}` stand for the stream's own."""

    pattern: str
    url: str

    def matches(self, app: str, name: str) -> bool:
        return fnmatch.fnmatchcase(f"{app}/{name}", self.pattern)

    def target(self, app: str, name: str) -> Target:
        template = parse_target(self.url)
        if not any(p in self.url for p in PLACEHOLDERS):
            return template

        # Filled in after parsing, so that a stream name can never change the host the stream goes to.
        def fill(text: str) -> str:
            return text.replace("{app}", app).replace("{name}", name)

        return Target(
            template.scheme,
            template.host,
            template.port,
            fill(template.app),
            fill(template.name),
            fill(template.tc_url),
            template.shown.replace("{app}", app),
        )


def parse_rule(entry: str) -> PushRule:
    """One `relay.pushes` entry: `app/name=url` (or a pattern on the left)."""
    pattern, sep, url = entry.partition("=")
    pattern, url = pattern.strip(), url.strip()
    app, slash, name = pattern.partition("/")
    if not sep or not slash or not app or not name or "/" in name or not url:
        raise ConfigError(
            "relay.pushes entries look like 'live/cam=rtmp://host/app/key' or 'live/*=rtmp://host/app/{name}'"
        )
    rest = url
    for placeholder in PLACEHOLDERS:
        rest = rest.replace(placeholder, "")
    if "{" in rest or "}" in rest:
        raise ConfigError(f"relay.pushes: only {{app}} and {{name}} may be used in the URL of {pattern}")
    try:
        target = parse_target(url)
    except ValueError as exc:
        raise ConfigError(f"relay.pushes ({pattern}): {exc}") from exc
    if any(p in target.host for p in PLACEHOLDERS):
        raise ConfigError(f"relay.pushes ({pattern}): the host cannot depend on the stream")
    if "@" in urlsplit(url).netloc:
        # The client has no RTMP login (Adobe/Limelight auth): a key goes in the path or the query.
        raise ConfigError(f"relay.pushes ({pattern}): user and password in the URL are not supported")
    return PushRule(pattern, url)
