"""Segment indexes read through their tier, parsed off the event loop, and kept for closed recordings.

A closed recording's `.idx` never changes, and coverage, playback playlists and exports of a camera read the
same hours again and again (a timeline scrolled back and forth): parsing an hourly index costs milliseconds of
CPU, reading one from S3 a round trip. Closed ones are kept, least recently used first out, up to a bound on
the number of entries; an open file's index is read afresh every time (it grows).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from prometheus_client import CollectorRegistry, Counter

from mediaserver.recording import fileformat, layout
from mediaserver.recording.fileformat import IndexEntry
from mediaserver.recording.storage import Tier
from mediaserver.recording.timeline import IndexedFile

# About 100 bytes an entry: 200,000 are ~110 hourly files of 2 s segments, ~20 MB.
DEFAULT_MAX_ENTRIES = 200_000


def _parse(raw: bytes) -> tuple[tuple[IndexEntry, ...], tuple[int, ...] | None]:
    entries = tuple(fileformat.parse_index(raw.decode("ascii", "replace")))
    # Built here, in the worker thread, rather than on the loop when the IndexedFile is made.
    return entries, IndexedFile(0, entries).starts


class IndexCache:
    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, registry: CollectorRegistry | None = None) -> None:
        self.max_entries = max_entries
        self._kept: OrderedDict[tuple[str, str], tuple[tuple[IndexEntry, ...], tuple[int, ...] | None]] = OrderedDict()
        self._count = 0
        self._lookups = Counter(
            "mediaserver_recording_index_lookups",
            "Segment indexes asked for by playback routes, by whether a parsed copy was kept (hit) or not (miss)",
            ["result"],
            registry=registry,
        )

    @property
    def entries(self) -> int:
        return self._count

    async def load(self, ref: int, tier: Tier, relative: str, closed: bool) -> IndexedFile:
        """The index of the recording `relative` on `tier`, as the file `ref`; `closed`: it can be kept."""
        key = (getattr(tier, "name", type(tier).__name__), relative)
        kept = self._kept.get(key)
        if kept is not None:
            self._kept.move_to_end(key)
            self._lookups.labels("hit").inc()
            return IndexedFile(ref, kept[0], kept[1])
        self._lookups.labels("miss").inc()
        raw = await tier.read_all(relative + layout.INDEX_SUFFIX)
        entries, starts = await asyncio.to_thread(_parse, raw)
        if closed and len(entries) <= self.max_entries:
            self._keep(key, entries, starts)
        return IndexedFile(ref, entries, starts)

    def _keep(self, key: tuple[str, str], entries: tuple[IndexEntry, ...], starts: tuple[int, ...] | None) -> None:
        previous = self._kept.pop(key, None)
        if previous is not None:
            self._count -= len(previous[0])
        self._kept[key] = (entries, starts)
        self._count += len(entries)
        while self._count > self.max_entries and self._kept:
            _, (dropped, _) = self._kept.popitem(last=False)
            self._count -= len(dropped)
