"""Tier moves measured: the control plane's own `RecordingTiers.move` (the call its tier job makes for each
recording it moves down: copy, read the copy back and check its SHA-256 against the row's, switch the row, delete
the source), and the read-back of the copy through its tier as playback streams it (`Tier.read`).

Per move or read-back: wall time; this process's CPU (`getrusage`: every thread, so the copy, hash and S3 client
threads count); the CPU of the processes `server_pids()` names (moto's S3 server, a process of its own, from /proc);
the rest of the machine's busy time (noise). `TimedTier` wraps the target so a move's time splits into its tier
calls: the copy (`put_file`), the read-back check (`sha256`), and the `.idx` copy and check.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.lib.procfs import CLK_TCK, CpuReading, read_cpu
from control.recording_tiers import CopyTarget, Item, RecordingTiers
from control.store import Recording, Store
from mediaserver.recording import layout
from mediaserver.recording.s3 import S3Tier
from mediaserver.recording.storage import LocalTier, TierError

MIB = 1024 * 1024


class TimedTier:
    """A `CopyTarget` that times every call it passes on to `tier`, by method and whether it was the `.idx`."""

    def __init__(self, tier: CopyTarget) -> None:
        self.tier = tier
        self.name = tier.name
        self.seconds: dict[str, float] = {}

    def _add(self, method: str, relative: str, began: float) -> None:
        key = f"{method}{' idx' if relative.endswith(layout.INDEX_SUFFIX) else ''}"
        self.seconds[key] = self.seconds.get(key, 0.0) + time.monotonic() - began

    async def size(self, relative: str) -> int:
        began = time.monotonic()
        try:
            return await self.tier.size(relative)
        finally:
            self._add("size", relative, began)

    def read(self, relative: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        return self.tier.read(relative, start, end)

    async def read_all(self, relative: str) -> bytes:
        began = time.monotonic()
        try:
            return await self.tier.read_all(relative)
        finally:
            self._add("read_all", relative, began)

    async def delete(self, relative: str) -> None:
        began = time.monotonic()
        try:
            await self.tier.delete(relative)
        finally:
            self._add("delete", relative, began)

    async def put_file(self, local: Path, relative: str, checksum: str) -> None:
        began = time.monotonic()
        try:
            await self.tier.put_file(local, relative, checksum)
        finally:
            self._add("put_file", relative, began)

    async def sha256(self, relative: str) -> str:
        began = time.monotonic()
        try:
            return await self.tier.sha256(relative)
        finally:
            self._add("sha256", relative, began)


@dataclass(slots=True)
class Cost:
    """Wall time and CPU between two readings."""

    wall_s: float = 0.0
    cpu_s: float = 0.0  # this process, user+system
    cpu_pct: float = 0.0  # of one core, over the wall time
    server_cpu_s: float = 0.0  # the processes of `server_pids()` (the S3 server)
    other_cpu_pct: float = 0.0  # the rest of the machine, % of one core: noise

    @classmethod
    def between(cls, before: CpuReading, after: CpuReading) -> Cost:
        wall = after.at - before.at
        own = after.own_seconds - before.own_seconds
        server = sum(ticks - before.ticks.get(pid, 0) for pid, ticks in after.ticks.items()) / CLK_TCK
        busy = (after.busy_ticks - before.busy_ticks) / CLK_TCK
        return cls(
            round(wall, 3),
            round(own, 3),
            round(own / wall * 100, 1) if wall > 0 else 0.0,
            round(server, 2),
            round(max(0.0, busy - own - server) / wall * 100, 1) if wall > 0 else 0.0,
        )


@dataclass(slots=True)
class Readback:
    """The copy streamed back through its tier, as `GET /recordings/{id}/media` streams it (bytes counted only)."""

    tier: str
    bytes: int = 0
    complete: bool = False
    mib_per_s: float = 0.0
    cost: Cost = field(default_factory=Cost)


@dataclass(slots=True)
class MoveResult:
    round: int
    source: str
    target: str
    bytes: int
    result: str  # RecordingTiers.move's answer: "ok" or why not
    mib_per_s: float = 0.0
    cost: Cost = field(default_factory=Cost)
    # Seconds in the target tier's calls during the move: put_file (the copy), sha256 (read back and hash), and the
    # same for the .idx; the rest is the source's checks, the row switch and the source's deletion.
    calls_s: dict[str, float] = field(default_factory=dict)
    rest_s: float = 0.0
    # After the move, outside the timing: the row names the target, the source file and its .idx are gone, the copy
    # has the recording's size (and, on S3, its SHA-256 in the object's metadata), the .idx copy is the source's.
    row_tier: str = ""
    source_deleted: bool = False
    copy_checked: bool = False
    verified: bool = False
    source_cached: bool = False
    readback: Readback | None = None
    problems: list[str] = field(default_factory=list)


async def row_of(store: Store, row_id: int) -> Recording:
    async with store.reader() as session:
        row = await session.get(Recording, row_id)
    if row is None:
        raise LookupError(f"recording {row_id} is gone")
    return row


def item_of(row: Recording) -> Item:
    """The tier job's view of a closed row (what `RecordingTiers` builds from its query)."""
    if row.checksum is None:
        raise ValueError(f"recording {row.id} is not closed")
    return Item(row.id, row.camera_id, row.path, row.tier, row.started_at, row.size_bytes, row.checksum)


async def measure_move(
    tiers: RecordingTiers,
    store: Store,
    item: Item,
    source: LocalTier,
    target: CopyTarget,
    index: bytes,
    server_pids: Callable[[], list[int]],
    round_number: int = 0,
    source_cached: bool = False,
) -> MoveResult:
    """`tiers.move(item, source, target)`, timed, then checked; `index` is the source's `.idx` as it was before."""
    timed = TimedTier(target)
    local = source.path(item.path)
    before = read_cpu(server_pids())
    result = await tiers.move(item, source, timed)
    after = read_cpu(server_pids())
    figures = MoveResult(round_number, source.name, target.name, item.size, result, source_cached=source_cached)
    figures.cost = Cost.between(before, after)
    wall = figures.cost.wall_s
    figures.mib_per_s = round(item.size / MIB / wall, 1) if wall > 0 else 0.0
    figures.calls_s = {name: round(seconds, 3) for name, seconds in sorted(timed.seconds.items())}
    figures.rest_s = round(max(0.0, wall - sum(timed.seconds.values())), 3)
    figures.row_tier = (await row_of(store, item.id)).tier
    figures.source_deleted = not local.exists() and not layout.index_path(local).exists()
    figures.copy_checked = await _check_copy(target, item, index, figures.problems)
    figures.verified = result == "ok" and figures.row_tier == target.name and figures.copy_checked
    if result != "ok":
        figures.problems.append(f"move answered {result!r}")
    if not figures.source_deleted:
        figures.problems.append("the source (or its .idx) is still there")
    return figures


async def _check_copy(target: CopyTarget, item: Item, index: bytes, problems: list[str]) -> bool:
    try:
        size = await target.size(item.path)
        if size != item.size:
            problems.append(f"the copy has {size} bytes, the recording {item.size}")
            return False
        if isinstance(target, S3Tier):
            _, stored = await target.head(item.path)
            if stored != item.checksum:
                problems.append("the object's sha256 metadata is not the recording's")
                return False
        if await target.read_all(item.path + layout.INDEX_SUFFIX) != index:
            problems.append("the .idx copy differs from the source's")
            return False
    except TierError as exc:
        problems.append(f"the copy cannot be checked: {exc}")
        return False
    return True


async def measure_readback(
    tier: CopyTarget, relative: str, size: int, server_pids: Callable[[], list[int]]
) -> Readback:
    """Stream the whole file back through `tier.read` (what the media route does), counting bytes."""
    figures = Readback(tier.name)
    before = read_cpu(server_pids())
    received = 0
    async for chunk in tier.read(relative, 0, size):
        received += len(chunk)
    after = read_cpu(server_pids())
    figures.cost = Cost.between(before, after)
    figures.bytes = received
    figures.complete = received == size
    wall = figures.cost.wall_s
    figures.mib_per_s = round(received / MIB / wall, 1) if wall > 0 else 0.0
    return figures


def place_on_source(template: Path, source: Path) -> None:
    """The recording (and its `.idx`) at `source` again, as a hard link to the kept `template` (same file system):
    the next move finds the same bytes on the hot tier without a copy that would warm the page cache. Blocking."""
    for kept, placed in ((template, source), (layout.index_path(template), layout.index_path(source))):
        if not placed.exists():
            placed.parent.mkdir(parents=True, exist_ok=True)
            os.link(kept, placed)
