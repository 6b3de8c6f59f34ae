"""What the tests of the recordings API against a real server share: calls with a bearer token, times in the
API's ISO-8601 form, cameras, and waiting for what the server does in its own time."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from tests.conftest import ServerProcess

T = TypeVar("T")


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    server: ServerProcess,
    method: str,
    path: str,
    token: str | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    request = urllib.request.Request(server.http_url(path), method=method, headers=dict(headers or {}))
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        request.data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Answer(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, dict(exc.headers), exc.read())


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def create_camera(server: ServerProcess, token: str, name: str, recording: bool) -> dict[str, Any]:
    answer = call(server, "POST", "/api/v1/cameras", token, {"name": name, "recording_enabled": recording})
    assert answer.status == 201, answer.body
    return dict(answer.json())


def wait_until(what: str, done: Callable[[], T], timeout: float = 15.0) -> T:
    """`done()` once it is truthy; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = done()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def bad_ranges(now: datetime) -> dict[str, dict[str, str]]:
    """Query parameters every time-range route refuses, by the error code it answers with."""
    return {
        "range_reversed": {"start": iso(now - timedelta(minutes=1)), "end": iso(now - timedelta(minutes=2))},
        "time_out_of_range": {"start": "1999-12-31T23:00:00Z", "end": "2000-01-01T01:00:00Z"},
        "range_required": {"start": iso(now - timedelta(minutes=1))},
        "range_too_long": {"start": iso(now - timedelta(days=3)), "end": iso(now - timedelta(days=1))},
        "invalid_time": {"start": "yesterday", "end": iso(now)},
    }
