"""The refusal every WebRTC layer may raise; `http` turns it into a JSON error body with CORS headers."""

from __future__ import annotations


class Rejected(Exception):
    """A request refused with a JSON error body."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
