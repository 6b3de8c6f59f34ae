"""The seed schema's names: users have an email (unique when set), cameras a company.

Revision ID: 0004_seed_fields
Revises: 0003_camera_source
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_seed_fields"
down_revision = "0003_camera_source"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        # NULL for users without one: a unique index allows many NULLs on SQLite and MariaDB alike.
        batch.add_column(sa.Column("email", sa.String(254), nullable=True))
        batch.create_index("ix_users_email", ["email"], unique=True)
    with op.batch_alter_table("cameras") as batch:
        batch.add_column(sa.Column("company", sa.String(128), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("cameras") as batch:
        batch.drop_column("company")
    with op.batch_alter_table("users") as batch:
        batch.drop_index("ix_users_email")
        batch.drop_column("email")
