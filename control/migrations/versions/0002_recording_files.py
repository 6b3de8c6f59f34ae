"""Recordings as the recorder writes them: storage tier, codecs, checksum once closed, publisher instance.

Revision ID: 0002_recording_files
Revises: 0001_initial
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_recording_files"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("recordings") as batch:
        batch.add_column(sa.Column("tier", sa.String(8), nullable=False, server_default="hot"))
        batch.add_column(sa.Column("codecs", sa.String(255), nullable=False, server_default=""))
        batch.add_column(sa.Column("checksum", sa.String(64), nullable=True))
        batch.add_column(sa.Column("instance", sa.String(32), nullable=False, server_default=""))
    op.create_index("ix_recordings_tier_started", "recordings", ["tier", "started_at"])


def downgrade() -> None:
    op.drop_index("ix_recordings_tier_started", table_name="recordings")
    with op.batch_alter_table("recordings") as batch:
        for column in ("instance", "checksum", "codecs", "tier"):
            batch.drop_column(column)
