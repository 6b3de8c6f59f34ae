"""Samples of live cameras (bitrate, frame rate, viewers) for GET /analytics/cameras/{id}.

Revision ID: 0005_camera_samples
Revises: 0004_seed_fields
Create Date: 2026-12-02
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from control.store.types import BigIntPK, UtcDateTime

revision = "0005_camera_samples"
down_revision = "0004_seed_fields"
branch_labels = None
depends_on = None

MYSQL: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    op.create_table(
        "camera_samples",
        sa.Column("id", BigIntPK, primary_key=True, autoincrement=True),
        sa.Column("camera_id", sa.String(32), nullable=False),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("bitrate_bps", sa.BigInteger(), nullable=False),
        sa.Column("fps", sa.Float(), nullable=True),
        sa.Column("viewers", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["camera_id"], ["cameras.id"], name="fk_camera_samples_camera_id_cameras", ondelete="CASCADE"
        ),
        **MYSQL,
    )
    op.create_index("ix_camera_samples_camera_at", "camera_samples", ["camera_id", "at"])
    op.create_index("ix_camera_samples_at", "camera_samples", ["at"])


def downgrade() -> None:
    op.drop_table("camera_samples")
