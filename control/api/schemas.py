"""Request and response bodies of the API (pydantic). Requests reject unknown fields."""

from __future__ import annotations

from datetime import UTC, datetime
from ipaddress import IPv4Network, IPv6Network
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from email_validator import validate_email
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, RootModel, field_validator

from control.rbac import Permission, Role
from mediaserver.pull.source import SCHEMES as PULL_SCHEMES


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class Query(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


def _as_utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


Limit = Annotated[int, Field(ge=1, le=500, description="Page size")]
Offset = Annotated[int, Field(ge=0, le=1_000_000_000, description="Items to skip")]
Username = Annotated[str, Field(min_length=3, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")]
Password = Annotated[str, Field(min_length=1, max_length=256)]
CameraId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
Text128 = Annotated[str, Field(max_length=128)]


def normalised_email(value: str) -> str:
    # pydantic's EmailStr rules (email-validator), without a DNS look-up; stored lower-case so that
    # uniqueness does not depend on case.
    return validate_email(value, check_deliverability=False).normalized.lower()


Email = Annotated[str, Field(max_length=254), AfterValidator(normalised_email)]

UtcTime = Annotated[datetime, AfterValidator(_as_utc)]


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


# --- auth ---------------------------------------------------------------------------------


class LoginRequest(Request):
    username: Annotated[str, Field(min_length=1, max_length=64)]
    password: Password


class RefreshRequest(Request):
    refresh_token: Annotated[str, Field(min_length=1, max_length=128)]


class LogoutRequest(Request):
    refresh_token: Annotated[str | None, Field(max_length=128)] = None


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


class MeOut(BaseModel):
    id: int
    username: str
    role: Role
    permissions: list[Permission]
    via: Literal["session", "api_token"]


class OkOut(BaseModel):
    ok: bool = True


# --- users --------------------------------------------------------------------------------


class UserCreate(Request):
    username: Username
    password: Password
    email: Email | None = None
    role: Role = Role.VIEWER
    disabled: bool = False


class UserUpdate(Request):
    password: Password | None = None
    email: Annotated[Email | Literal[""] | None, Field(description="'' removes it")] = None
    role: Role | None = None
    disabled: bool | None = None


class UserOut(Out):
    id: int
    username: str
    email: str | None = None
    role: Role
    disabled: bool
    created_at: datetime
    updated_at: datetime
    last_login_at: datetime | None


class UserQuery(Query):
    limit: Limit = 50
    offset: Offset = 0
    role: Role | None = None
    q: Annotated[str | None, Field(max_length=64, description="Username contains")] = None


class UserList(BaseModel):
    items: list[UserOut]
    total: int
    limit: int
    offset: int


# --- cameras ------------------------------------------------------------------------------

CameraStatus = Literal["online", "offline", "error"]


def _check_source_url(value: str | None) -> str | None:
    if value is None or value == "":
        return value
    parts = urlsplit(value)
    if parts.scheme not in PULL_SCHEMES or not parts.hostname:
        raise ValueError(f"source_url must be a {', '.join(PULL_SCHEMES)} URL with a host")
    if any(c in value for c in "\r\n\t "):
        raise ValueError("source_url must not contain spaces or line breaks")
    return value


SourceUrl = Annotated[
    str | None,
    Field(max_length=2048, description="Pull the stream from here (rtsp://user:pass@camera/path ...); '' to stop"),
    AfterValidator(_check_source_url),
]


class CameraCreate(Request):
    name: Annotated[str, Field(min_length=1, max_length=128)]
    company: Text128 = ""
    vendor: Text128 = ""
    model: Text128 = ""
    serial_number: Text128 = ""
    location: Annotated[str, Field(max_length=255)] = ""
    enabled: bool = True
    recording_enabled: bool = False
    private: bool = True
    source_url: SourceUrl = None

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("name must not be blank")
        return value


class CameraUpdate(Request):
    name: Annotated[str | None, Field(min_length=1, max_length=128)] = None
    company: Text128 | None = None
    vendor: Text128 | None = None
    model: Text128 | None = None
    serial_number: Text128 | None = None
    location: Annotated[str | None, Field(max_length=255)] = None
    enabled: bool | None = None
    recording_enabled: bool | None = None
    private: bool | None = None
    source_url: SourceUrl = None

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("name must not be blank")
        return value


class CameraOut(BaseModel):
    id: str
    name: str
    company: str
    vendor: str
    model: str
    serial_number: str
    location: str
    enabled: bool
    recording_enabled: bool
    private: bool
    status: CameraStatus
    live: bool
    last_seen: datetime | None
    bitrate_bps: int
    created_at: datetime
    updated_at: datetime
    # A pulled camera's source without its credentials (null: the camera pushes).
    source: str | None = None
    # Only for callers with cameras:write.
    stream_key: str | None = None
    publish_url: str | None = None
    source_url: str | None = None


class CameraQuery(Query):
    limit: Limit = 50
    offset: Offset = 0
    status: CameraStatus | None = None
    enabled: bool | None = None
    q: Annotated[str | None, Field(max_length=128, description="Name contains (case-insensitive)")] = None


class CameraList(BaseModel):
    items: list[CameraOut]
    total: int
    limit: int
    offset: int


class BulkCreate(Request):
    action: Literal["create"]
    items: Annotated[list[CameraCreate], Field(min_length=1, max_length=500)]


class BulkIds(Request):
    action: Literal["enable", "disable", "delete"]
    ids: Annotated[list[CameraId], Field(min_length=1, max_length=500)]


class BulkRequest(RootModel[Annotated[BulkCreate | BulkIds, Field(discriminator="action")]]):
    pass


class BulkResult(BaseModel):
    action: str
    affected: int
    items: list[CameraOut] = []
    not_found: list[str] = []


class CameraStatusOut(BaseModel):
    camera_id: str
    status: CameraStatus
    enabled: bool
    live: bool
    last_seen: datetime | None
    bitrate_bps: int
    stream: dict[str, Any] | None
    # A pulled camera: the puller's state (connecting, online, offline, error) and its last error.
    source_state: str | None = None
    source_error: str | None = None


# --- tokens -------------------------------------------------------------------------------


class TokenCreate(Request):
    name: Annotated[str, Field(min_length=1, max_length=128)]
    scopes: Annotated[list[Permission], Field(min_length=1, max_length=len(Permission))]
    expires_in_days: Annotated[int | None, Field(ge=1, le=3650)] = 90
    ip_allowlist: Annotated[list[IPv4Network | IPv6Network], Field(max_length=32)] = []
    # Admins may create a token for another user (e.g. an api_only service account).
    user_id: Annotated[int | None, Field(ge=1, le=2**31 - 1)] = None


class TokenOut(Out):
    id: int
    user_id: int
    name: str
    prefix: str
    scopes: list[str]
    ip_allowlist: list[str]
    expires_at: datetime | None
    last_used_at: datetime | None
    created_at: datetime
    revoked: bool


class TokenCreated(TokenOut):
    # The secret, shown this once; store it now.
    token: str


class TokenQuery(Query):
    limit: Limit = 50
    offset: Offset = 0
    user_id: Annotated[int | None, Field(ge=1, le=2**31 - 1)] = None


class TokenList(BaseModel):
    items: list[TokenOut]
    total: int
    limit: int
    offset: int


# --- audit --------------------------------------------------------------------------------


class AuditQuery(Query):
    limit: Limit = 50
    offset: Offset = 0
    user_id: Annotated[int | None, Field(ge=0, le=2**31 - 1)] = None
    actor: Annotated[str | None, Field(max_length=64)] = None
    action: Annotated[
        str | None, Field(max_length=64, description="Exact action, or a prefix ending in '*' (camera.*)")
    ] = None
    resource_type: Annotated[str | None, Field(max_length=32)] = None
    resource_id: Annotated[str | None, Field(max_length=64)] = None
    success: bool | None = None
    since: UtcTime | None = None
    until: UtcTime | None = None


class AuditOut(Out):
    id: int
    at: datetime
    user_id: int | None
    actor: str
    ip: str
    action: str
    resource_type: str
    resource_id: str
    success: bool
    details: dict[str, Any] | None


class AuditList(BaseModel):
    items: list[AuditOut]
    total: int
    limit: int
    offset: int


# --- streaming and system -----------------------------------------------------------------


class PlaybackOut(BaseModel):
    camera_id: str
    protocol: Literal["hls", "webrtc"]
    url: str
    token: str
    expires_at: datetime
    live: bool


class StreamingAuthForm(BaseModel):
    """nginx-rtmp on_publish / on_play callback (application/x-www-form-urlencoded)."""

    model_config = ConfigDict(extra="allow")

    call: Annotated[str, Field(max_length=32)]
    app: Annotated[str, Field(max_length=128)] = ""
    name: Annotated[str, Field(max_length=256)] = ""
    addr: Annotated[str, Field(max_length=64)] = ""


class StreamingAuthOut(BaseModel):
    ok: bool
    camera_id: str | None = None


class SystemOut(BaseModel):
    version: str
    uptime_seconds: float
    database: str
    publish_mode: str
    live_streams: int
    cameras: int
    cameras_online: int
