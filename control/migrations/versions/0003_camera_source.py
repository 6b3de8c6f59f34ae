"""Cameras that serve their stream: the URL the server pulls it from (RTSP, RTMP, HTTP-FLV), when set.

Revision ID: 0003_camera_source
Revises: 0002_recording_files
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_camera_source"
down_revision = "0002_recording_files"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cameras") as batch:
        batch.add_column(sa.Column("source_url", sa.String(2048), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cameras") as batch:
        batch.drop_column("source_url")
