"""The cameras listing's sort key: a virtual column lower(name), indexed with id.

Revision ID: 0006_camera_name_key
Revises: 0005_camera_samples
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_camera_name_key"
down_revision = "0005_camera_samples"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A virtual generated column can be added in place on SQLite (a stored one cannot) and on MariaDB/MySQL.
    op.add_column("cameras", sa.Column("name_key", sa.String(128), sa.Computed("lower(name)", persisted=False)))
    op.create_index("ix_cameras_name_key_id", "cameras", ["name_key", "id"])


def downgrade() -> None:
    op.drop_index("ix_cameras_name_key_id", table_name="cameras")
    with op.batch_alter_table("cameras") as batch:
        batch.drop_column("name_key")
