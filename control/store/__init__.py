"""Persistence of the control plane: SQLAlchemy 2 (async) over SQLite or MySQL/MariaDB."""

from control.store.engine import Store, StoreError, database_url
from control.store.models import ApiToken, AuditLog, Base, Camera, CameraSample, Recording, RefreshToken, User

__all__ = [
    "ApiToken",
    "AuditLog",
    "Base",
    "Camera",
    "CameraSample",
    "Recording",
    "RefreshToken",
    "Store",
    "StoreError",
    "User",
    "database_url",
]
