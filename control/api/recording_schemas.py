"""Request and response bodies of the recordings API (pydantic)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from control.api.schemas import CameraId, Limit, Offset, Query, Request

# Times are parsed by the routes, not by pydantic: a time that is not one is a 400 like a bad range.
RangeStart = Annotated[
    str | None, Field(max_length=40, description="Required. ISO-8601 (UTC if no offset) or epoch seconds")
]
RangeEnd = Annotated[
    str | None,
    Field(max_length=40, description="Required; after start, within recording.max_query_range of it"),
]


class RecordingQuery(Query):
    limit: Limit = 50
    offset: Offset = 0
    camera_id: CameraId | None = None
    start: Annotated[
        str | None, Field(max_length=40, description="Recordings that end after this (ISO-8601 or epoch seconds)")
    ] = None
    end: Annotated[
        str | None, Field(max_length=40, description="Recordings that start before this (ISO-8601 or epoch seconds)")
    ] = None
    tier: Annotated[str | None, Field(pattern=r"^[a-z]{1,8}$", description="hot, warm or cold")] = None


class RangeQuery(Query):
    start: RangeStart = None
    end: RangeEnd = None


class RecordingOut(BaseModel):
    id: int
    camera_id: str
    started_at: datetime
    # Moves forward while the file is written (every few seconds).
    ended_at: datetime | None
    duration_seconds: float
    size_bytes: int
    tier: str
    codecs: list[str]
    # SHA-256 of the file, set once it is closed.
    checksum: str | None
    complete: bool


class RecordingList(BaseModel):
    items: list[RecordingOut]
    total: int
    limit: int
    offset: int


class TimeSpan(BaseModel):
    start: datetime
    end: datetime


class CoverageOut(BaseModel):
    camera_id: str
    start: datetime
    end: datetime
    # Where there is video (segments less than 1.5 s apart form one span), and the rest of the range.
    spans: list[TimeSpan]
    gaps: list[TimeSpan]


class RecordingAction(Request):
    action: Literal["start", "stop"]


class RecordingStateOut(BaseModel):
    camera_id: str
    recording: bool
