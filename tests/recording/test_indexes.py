"""The index cache: closed recordings' indexes are parsed once and kept within a bound; open ones are read
afresh (they grow); ranges inside a file are found by bisection and agree with a scan."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from mediaserver.recording import layout
from mediaserver.recording.fileformat import IndexEntry
from mediaserver.recording.indexes import IndexCache
from mediaserver.recording.storage import LocalTier
from mediaserver.recording.timeline import IndexedFile

T0 = 1_790_000_000_000


def _write(root: Path, relative: str, count: int, first_ms: int = T0) -> list[IndexEntry]:
    entries = [IndexEntry(1000 + i * 500, 500, i * 2000, 2000, first_ms + i * 2000) for i in range(count)]
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    layout.index_path(path).write_text("".join(e.line() for e in entries))
    return entries


def _lookups(registry: CollectorRegistry, result: str) -> float:
    return registry.get_sample_value("mediaserver_recording_index_lookups_total", {"result": result}) or 0.0


async def test_closed_indexes_are_kept_and_open_ones_read_again(tmp_path: Path) -> None:
    tier = LocalTier("hot", tmp_path)
    registry = CollectorRegistry()
    cache = IndexCache(max_entries=2500, registry=registry)
    closed = _write(tmp_path, "2026/12/01/cam/a.mp4", 1800)
    first = await cache.load(1, tier, "2026/12/01/cam/a.mp4", closed=True)
    assert list(first.entries) == closed and first.ref == 1
    # Changing the file on disk does not matter once a closed index is kept.
    _write(tmp_path, "2026/12/01/cam/a.mp4", 3)
    again = await cache.load(7, tier, "2026/12/01/cam/a.mp4", closed=True)
    assert list(again.entries) == closed and again.ref == 7
    assert (_lookups(registry, "hit"), _lookups(registry, "miss")) == (1, 1)

    growing = "2026/12/01/cam/b.mp4"
    _write(tmp_path, growing, 10)
    assert len((await cache.load(2, tier, growing, closed=False)).entries) == 10
    _write(tmp_path, growing, 12)
    assert len((await cache.load(2, tier, growing, closed=False)).entries) == 12
    assert cache.entries == 1800

    # A second closed file would pass the bound: the least recently used one goes.
    _write(tmp_path, "2026/12/01/cam/c.mp4", 1000)
    await cache.load(3, tier, "2026/12/01/cam/c.mp4", closed=True)
    assert cache.entries == 1000


def test_ranges_by_bisection_agree_with_a_scan() -> None:
    entries = tuple(
        IndexEntry(1000 + i * 500, 500, i * 2000, 2000, T0 + i * 2000 + (5000 if i > 50 else 0)) for i in range(100)
    )
    file = IndexedFile(1, entries)
    assert file.starts is not None
    unordered = IndexedFile(2, entries[50:] + entries[:50])
    assert unordered.starts is None
    for start, end in [
        (T0 - 10_000, T0 + 1),
        (T0 + 1999, T0 + 2001),
        (T0 + 100_500, T0 + 107_000),
        (T0 + 500_000, T0 + 600_000),
        (T0 + 3000, T0 + 3000 + 1),
    ]:
        scan = tuple(e for e in entries if e.wallclock_ms < end and e.wallclock_ms + e.duration_ms > start)
        assert file.overlapping(start, end) == scan, (start, end)
        assert sorted(unordered.overlapping(start, end), key=lambda e: e.offset) == sorted(scan, key=lambda e: e.offset)
