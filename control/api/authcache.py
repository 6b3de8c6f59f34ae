"""Who a credential belongs to, remembered for `api.auth_cache_ttl` seconds: one database round trip per
credential and interval instead of one per request.

Any change to users, sessions or API tokens committed in this process clears every cache of the process at once
(the writer marks its session with `auth_changed`); a change made elsewhere (another node, the CLI) applies
within the TTL. 0 turns the cache off.
"""

from __future__ import annotations

import time
import weakref
from collections import OrderedDict
from typing import Generic, TypeVar

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

V = TypeVar("V")
_CACHES: weakref.WeakSet[AuthCache[object]] = weakref.WeakSet()
_CHANGED = "auth_changed"


class AuthCache(Generic[V]):
    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self._max = max_entries
        self._entries: OrderedDict[object, tuple[float, V]] = OrderedDict()
        _CACHES.add(self)  # type: ignore[arg-type]

    def get(self, key: object) -> V | None:
        if self.ttl <= 0:
            return None
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: object, value: V) -> None:
        if self.ttl <= 0:
            return
        self._entries[key] = (time.monotonic() + self.ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


def auth_changed(session: AsyncSession | Session) -> None:
    """This transaction changes who may sign in or with what role: caches are cleared when it commits."""
    session.info[_CHANGED] = True


@event.listens_for(Session, "after_commit")
def _clear_after_commit(session: Session) -> None:
    if session.info.pop(_CHANGED, False):
        for cache in list(_CACHES):
            cache.clear()


@event.listens_for(Session, "after_rollback")
def _forget_on_rollback(session: Session) -> None:
    session.info.pop(_CHANGED, None)
