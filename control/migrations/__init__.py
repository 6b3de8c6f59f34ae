"""Alembic migrations of the control-plane schema (run by `mediaserver migrate` or on `serve`)."""
