"""Tables of the control plane. The schema itself is created by the Alembic migrations."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Computed, Float, ForeignKey, Index, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from control.store.types import BigIntPK, UtcDateTime, utcnow

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
}

# Binary collation on MySQL/MariaDB: secrets and names compare byte for byte, as on SQLite.
MYSQL_TABLE = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UtcDateTime()}


class User(Base):
    __tablename__ = "users"
    __table_args__ = (Index("ix_users_email", "email", unique=True), MYSQL_TABLE)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    # Optional; unique when set (stored lower-case).
    email: Mapped[str | None] = mapped_column(String(254), default=None)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(default=None)


class Camera(Base):
    __tablename__ = "cameras"
    __table_args__ = (
        Index("ix_cameras_status", "status"),
        Index("ix_cameras_name", "name"),
        Index("ix_cameras_name_key_id", "name_key", "id"),
        MYSQL_TABLE,
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    # The listing's sort key, kept by the database (a virtual column, indexed): pages come off the index in
    # order instead of every row being sorted by lower(name) for each page.
    name_key: Mapped[str] = mapped_column(String(128), Computed("lower(name)", persisted=False))
    # The seed schema's owner of the camera (the integrator's customer); `vendor` is the manufacturer.
    company: Mapped[str] = mapped_column(String(128), default="", server_default="")
    vendor: Mapped[str] = mapped_column(String(128), default="")
    model: Mapped[str] = mapped_column(String(128), default="")
    serial_number: Mapped[str] = mapped_column(String(128), default="")
    location: Mapped[str] = mapped_column(String(255), default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    recording_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # A private camera plays only with a signed play token.
    private: Mapped[bool] = mapped_column(Boolean, default=True)
    status: Mapped[str] = mapped_column(String(16), default="offline")
    last_seen: Mapped[datetime | None] = mapped_column(default=None)
    bitrate_bps: Mapped[int] = mapped_column(BigInteger, default=0)
    stream_key: Mapped[str] = mapped_column(String(64), unique=True)
    # A camera that serves its stream (most IP cameras): the server pulls it from here. Holds credentials:
    # shown whole only to those who may see stream keys.
    source_url: Mapped[str | None] = mapped_column(String(2048), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Recording(Base):
    """One recording file. `path` is relative to its tier's root; `checksum` (SHA-256) is set once it is closed."""

    __tablename__ = "recordings"
    __table_args__ = (
        Index("ix_recordings_camera_started", "camera_id", "started_at"),
        Index("ix_recordings_tier_started", "tier", "started_at"),
        MYSQL_TABLE,
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    camera_id: Mapped[str] = mapped_column(String(32), ForeignKey("cameras.id", ondelete="CASCADE"))
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None] = mapped_column(default=None)
    path: Mapped[str] = mapped_column(String(1024))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    duration_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    tier: Mapped[str] = mapped_column(String(8), default="hot", server_default="hot")
    codecs: Mapped[str] = mapped_column(String(255), default="", server_default="")
    checksum: Mapped[str | None] = mapped_column(String(64), default=None)
    # The publisher's session the file belongs to: consecutive files of one instance join without a gap.
    instance: Mapped[str] = mapped_column(String(32), default="", server_default="")


class CameraSample(Base):
    """A live camera's figures at one moment (analytics); a camera without a sample in an interval was offline."""

    __tablename__ = "camera_samples"
    __table_args__ = (
        Index("ix_camera_samples_camera_at", "camera_id", "at"),
        Index("ix_camera_samples_at", "at"),
        MYSQL_TABLE,
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    camera_id: Mapped[str] = mapped_column(String(32), ForeignKey("cameras.id", ondelete="CASCADE"))
    at: Mapped[datetime]
    bitrate_bps: Mapped[int] = mapped_column(BigInteger)
    fps: Mapped[float | None] = mapped_column(Float, default=None)
    viewers: Mapped[int] = mapped_column(default=0)


class ApiToken(Base):
    __tablename__ = "api_tokens"
    __table_args__ = (Index("ix_api_tokens_user_id", "user_id"), MYSQL_TABLE)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    # The first characters of the secret, to tell tokens apart in listings.
    prefix: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    ip_allowlist: Mapped[list[str]] = mapped_column(JSON)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class RefreshToken(Base):
    __tablename__ = "refresh_tokens"
    __table_args__ = (
        Index("ix_refresh_tokens_family_id", "family_id"),
        Index("ix_refresh_tokens_user_id", "user_id"),
        MYSQL_TABLE,
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    # Every token obtained by rotating one login's refresh token shares the family (the session).
    family_id: Mapped[str] = mapped_column(String(32))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    # Set when the token was exchanged for a new one; presenting it again is reuse.
    used_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class AuditLog(Base):
    __tablename__ = "audit_logs"
    __table_args__ = (
        Index("ix_audit_logs_user_id_at", "user_id", "at"),
        Index("ix_audit_logs_action_at", "action", "at"),
        Index("ix_audit_logs_at", "at"),
        MYSQL_TABLE,
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    # No foreign key: the trail outlives the user.
    user_id: Mapped[int | None] = mapped_column(default=None)
    actor: Mapped[str] = mapped_column(String(64), default="")
    ip: Mapped[str] = mapped_column(String(64), default="")
    action: Mapped[str] = mapped_column(String(64))
    resource_type: Mapped[str] = mapped_column(String(32), default="")
    resource_id: Mapped[str] = mapped_column(String(64), default="")
    success: Mapped[bool] = mapped_column(Boolean, default=True)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
