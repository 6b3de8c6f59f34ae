"""Recordings over time: down the storage tiers (hot -> warm -> cold) by age and free space, and out by retention.

A move copies a closed recording (and its `.idx`) to the lower tier, reads the copy back and checks it against the
SHA-256 in the index row, switches the row's tier, and only then deletes the source; any failure leaves the source
and the row where they were, so nothing is deleted before a verified copy exists. Deletions come from retention
(per camera, by age and by total size, oldest first) and, as the last resort, from a local tier under its free-space
watermark that cannot move its oldest data down; each one is audited (`recording.delete`, actor system, a reason)
and takes the recording's thumbnails with it (they stay on the hot root whatever tier the recording is on).

One pass runs at a time, every `recording.tier_interval` seconds, in the process that owns the control plane (one
per machine today). A row is never in two moves, or a move and a deletion, at once (`busy`).

Longer than our usual module on purpose: the moves, the retention and the watermark steps of one pass share the
`busy` set, the pass lock and the per-pass failure memory; split apart they would pass that state around.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import delete, func, select, update

from control.audit import SYSTEM, Audit
from control.store import Recording, Store
from mediaserver.background import BackgroundTask
from mediaserver.config import RecordingConfig
from mediaserver.recording import layout
from mediaserver.recording.storage import LocalTier, Tier, TierError
from mediaserver.recording.thumbnails import delete_recording_thumbnails

log = logging.getLogger("control.recordings")

ORDER = ("hot", "warm", "cold")
# Rows looked at per tier and pass: a backlog is worked off over several passes, memory stays small.
BATCH = 2000


class CopyTarget(Tier, Protocol):
    """A tier that can take a copy of a local file, vouch for what it stores, and delete it."""

    async def put_file(self, local: Path, relative: str, checksum: str) -> None: ...

    async def sha256(self, relative: str) -> str:
        """The SHA-256 of the stored bytes, read back from the tier."""

    async def delete(self, relative: str) -> None: ...


def free_percent(path: Path) -> float:
    """Free space (for unprivileged writers) of the file system holding `path`, in percent; the one probe a test
    replaces, since filling a real disk is not practical."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    return 100.0 * usage.free / usage.total if usage.total else 100.0


@dataclass(frozen=True, slots=True)
class Item:
    """What a pass needs of one closed recording's row."""

    id: int
    camera_id: str
    path: str
    tier: str
    started_at: datetime
    size: int
    checksum: str
    ended_at: datetime | None = None


@dataclass(slots=True)
class PassReport:
    moved: list[tuple[int, str, str]] = field(default_factory=list)  # row id, from, to
    failed: list[tuple[int, str, str, str]] = field(default_factory=list)  # row id, from, to, result
    deleted: list[tuple[int, str]] = field(default_factory=list)  # row id, reason


class _Mismatch(Exception):
    """The copy does not hash to the recording's checksum (or its `.idx` differs)."""


def _item(row: Recording) -> Item:
    assert row.checksum is not None
    return Item(row.id, row.camera_id, row.path, row.tier, row.started_at, row.size_bytes, row.checksum, row.ended_at)


class RecordingTiers:
    def __init__(
        self,
        store: Store,
        audit: Audit,
        config: RecordingConfig,
        hot: LocalTier,
        warm: LocalTier | None = None,
        cold: CopyTarget | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._store = store
        self._audit = audit
        self.config = config
        self.local = [tier for tier in (hot, warm) if tier is not None]
        # Thumbnails live on the hot root, whatever tier their recordings are on.
        self.thumbnail_root = hot.root
        self.tiers: dict[str, CopyTarget] = {tier.name: tier for tier in (hot, warm, cold) if tier is not None}
        # Age (days since start) at which a recording belongs on each lower tier that is configured.
        self.after: dict[str, float] = {}
        if warm is not None:
            self.after["warm"] = config.warm_after_days
        if cold is not None:
            self.after["cold"] = config.cold_after_days
        self.busy: set[int] = set()
        self._lock = asyncio.Lock()
        self._task = BackgroundTask.every(config.tier_interval, self._tick, "recording_tiers")
        self._settled = False
        self._switching: asyncio.Future[bool] | None = None
        self._conflicts: set[str] = set()
        # Filled at the end of each pass, read by the collector (a scrape never queries the database).
        self.figures: dict[str, tuple[int, int, float]] = {}
        self.free: dict[str, float] = {}
        self.last_pass = 0.0
        registry = registry if registry is not None else CollectorRegistry()
        self.moves = Counter(
            "mediaserver_recording_tier_moves",
            "Recording moves between storage tiers, by result (ok, failed, mismatch, source_missing, refused)",
            ["from", "to", "result"],
            registry=registry,
        )
        self.moved_bytes = Counter(
            "mediaserver_recording_tier_moved_bytes",
            "Bytes of recordings moved down",
            ["from", "to"],
            registry=registry,
        )
        self.move_seconds = Histogram(
            "mediaserver_recording_tier_move_seconds",
            "Time of one move: copy, read-back check, index switch, source deletion",
            ["from", "to"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
            registry=registry,
        )
        self.deletions = Counter(
            "mediaserver_recording_deletions",
            "Recordings deleted, by reason (retention_age, retention_size, low_disk_space)",
            ["reason"],
            registry=registry,
        )
        self.delete_failures = Counter(
            "mediaserver_recording_deletion_failures",
            "Deletions that failed (retried next pass)",
            ["tier"],
            registry=registry,
        )
        registry.register(_TierCollector(self))

    # ----- lifecycle ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.refresh_figures()
        self._task.start()

    async def stop(self) -> None:
        # Cancels a copy under way (its temporary file goes, the row stays); an index switch in progress finishes.
        await self._task.stop()
        switching = self._switching
        if switching is not None and not switching.done():
            await asyncio.wait([switching])
        for tier in self.tiers.values():
            close = getattr(tier, "close", None)  # the S3 client's connection pool
            if close is not None:
                await close()

    # ----- one pass ----------------------------------------------------------------------------------------------

    async def _tick(self) -> None:
        await self.run_once()

    async def run_once(self) -> PassReport:
        report = PassReport()
        async with self._lock:
            failing: set[str] = set()
            if not self._settled:
                await self._settle_interrupted()
                self._settled = True
            now = datetime.now(UTC)
            await self._retention(now, report)
            await self._age_moves(now, report, failing)
            await self._watermarks(report, failing)
            await self.refresh_figures()
            self.last_pass = time.time()
        if report.moved or report.failed or report.deleted:
            log.info(
                "event=recording_tiers_pass moved=%d failed=%d deleted=%d",
                len(report.moved),
                len(report.failed),
                len(report.deleted),
            )
        return report

    async def _closed(self, *conditions: Any, limit: int = BATCH) -> list[Item]:
        query = (
            select(Recording)
            .where(Recording.checksum.is_not(None), Recording.tier.in_(list(self.tiers)), *conditions)
            .order_by(Recording.started_at, Recording.id)
            .limit(limit)
        )
        async with self._store.reader() as session:
            rows = (await session.execute(query)).scalars().all()
        return [_item(row) for row in rows if row.path not in self._conflicts]

    def _lower(self, tier: str) -> list[str]:
        return [name for name in ORDER[ORDER.index(tier) + 1 :] if name in self.tiers]

    # ----- retention ---------------------------------------------------------------------------------------------

    async def _retention(self, now: datetime, report: PassReport) -> None:
        config = self.config
        if config.retention_days > 0:
            cutoff = now - timedelta(days=config.retention_days)
            for item in await self._closed(Recording.started_at < cutoff):
                if await self._delete(item, "retention_age"):
                    report.deleted.append((item.id, "retention_age"))
        if config.max_bytes_per_camera > 0:
            # Every row counts towards the camera's total (the file being written too); only closed ones go.
            query = (
                select(Recording.camera_id, func.sum(Recording.size_bytes))
                .group_by(Recording.camera_id)
                .having(func.sum(Recording.size_bytes) > config.max_bytes_per_camera)
            )
            async with self._store.reader() as session:
                over = [(str(camera), int(total)) for camera, total in (await session.execute(query)).all()]
            for camera, total in over:
                excess = total - config.max_bytes_per_camera
                for item in await self._closed(Recording.camera_id == camera):
                    if excess <= 0:
                        break
                    if await self._delete(item, "retention_size"):
                        report.deleted.append((item.id, "retention_size"))
                        excess -= item.size

    # ----- moves -------------------------------------------------------------------------------------------------

    async def _age_moves(self, now: datetime, report: PassReport, failing: set[str]) -> None:
        # Bottom-up: warm makes room on its own disk before hot sends it more.
        for source in reversed(self.local):
            lower = self._lower(source.name)
            if not lower:
                continue
            cutoff = now - timedelta(days=min(self.after[name] for name in lower))
            for item in await self._closed(Recording.tier == source.name, Recording.started_at < cutoff):
                age = (now - item.started_at) / timedelta(days=1)
                # The lowest tier the age calls for first (hot -> cold directly for old data), then the others.
                targets = [name for name in reversed(lower) if age >= self.after[name]]
                await self._move_down(item, source, targets, report, failing)

    async def _watermarks(self, report: PassReport, failing: set[str]) -> None:
        threshold = self.config.min_free_percent
        for source in reversed(self.local):
            free = await asyncio.to_thread(free_percent, source.root)
            self.free[source.name] = free
            if threshold <= 0 or free >= threshold:
                continue
            log.warning(
                "event=recording_tier_low_space tier=%s free_percent=%.1f min_free_percent=%.1f",
                source.name,
                free,
                threshold,
            )
            for item in await self._closed(Recording.tier == source.name):
                if await self._move_down(item, source, self._lower(source.name), report, failing) == "stuck":
                    # The last resort: no lower tier, or every one failed; the live recorder must keep its disk.
                    log.warning(
                        "event=recording_low_space_delete tier=%s path=%s camera=%s free_percent=%.1f",
                        source.name,
                        item.path,
                        item.camera_id,
                        free,
                    )
                    if await self._delete(item, "low_disk_space"):
                        report.deleted.append((item.id, "low_disk_space"))
                free = await asyncio.to_thread(free_percent, source.root)
                self.free[source.name] = free
                if free >= threshold:
                    break
            if free < threshold:
                log.warning("event=recording_tier_full tier=%s free_percent=%.1f", source.name, free)

    async def _move_down(
        self, item: Item, source: LocalTier, targets: list[str], report: PassReport, failing: set[str]
    ) -> str:
        """Try the targets in turn: "moved", "stuck" (no target left, or every one failed) or "skip" (the row is
        busy, gone, or its path refused: nothing to do with it now)."""
        for name in targets:
            if name in failing:
                continue
            result = await self.move(item, source, self.tiers[name])
            if result == "ok":
                report.moved.append((item.id, source.name, name))
                return "moved"
            if result in ("busy", "gone"):
                return "skip"
            report.failed.append((item.id, source.name, name, result))
            if result == "refused":
                return "skip"
            if result == "source_missing":
                return "stuck"  # another tier would not do better
            if result == "failed":
                failing.add(name)  # the tier is down or full: no more attempts on it this pass
        return "stuck"

    async def move(self, item: Item, source: LocalTier, target: CopyTarget) -> str:
        """Copy, verify, switch the row, delete the source: "ok", "failed" (source and row untouched), "mismatch"
        (the copy is not the recording: removed again), "source_missing", "refused" (a path outside the root),
        "gone" (the row went meanwhile) or "busy"."""
        if item.id in self.busy:
            return "busy"
        self.busy.add(item.id)
        began = time.monotonic()
        labels = (source.name, target.name)
        index_name = item.path + layout.INDEX_SUFFIX
        try:
            local = source.path(item.path)
            try:
                await source.size(item.path)
            except TierError:
                self.moves.labels(*labels, "source_missing").inc()
                log.error("event=recording_move_failed from=%s to=%s path=%s result=source_missing", *labels, item.path)
                return "source_missing"
            try:
                index: bytes | None = await source.read_all(index_name)
            except TierError:
                index = None
                log.warning("event=recording_index_missing tier=%s path=%s", source.name, item.path)
            await target.put_file(local, item.path, item.checksum)
            copied = await target.sha256(item.path)
            if copied != item.checksum:
                raise _Mismatch(f"the copy hashes to {copied[:16]}, the index says {item.checksum[:16]}")
            if index is not None:
                await target.put_file(layout.index_path(local), index_name, hashlib.sha256(index).hexdigest())
                if await target.read_all(index_name) != index:
                    raise _Mismatch("the .idx copy differs from its source")
            # Shielded (and awaited by stop()): the row switch and the source's deletion happen together or not at all.
            self._switching = asyncio.ensure_future(self._switch(item, source, target))
            switched = await asyncio.shield(self._switching)
        except _Mismatch as exc:
            self.moves.labels(*labels, "mismatch").inc()
            log.error(
                "event=recording_move_failed from=%s to=%s path=%s result=mismatch detail=%s",
                *labels,
                item.path,
                exc,
            )
            await self._discard(target, item.path)
            return "mismatch"
        except layout.LayoutError as exc:
            # A row whose path would leave the tier's root owns no file of ours: never copied, never deleted.
            self.moves.labels(*labels, "refused").inc()
            log.error("event=recording_move_failed from=%s to=%s id=%d result=refused detail=%s", *labels, item.id, exc)
            return "refused"
        except (TierError, OSError) as exc:
            self.moves.labels(*labels, "failed").inc()
            log.warning(
                "event=recording_move_failed from=%s to=%s path=%s result=failed detail=%s", *labels, item.path, exc
            )
            return "failed"
        finally:
            self.busy.discard(item.id)
        if not switched:
            return "gone"
        seconds = time.monotonic() - began
        self.moves.labels(*labels, "ok").inc()
        self.moved_bytes.labels(*labels).inc(item.size)
        self.move_seconds.labels(*labels).observe(seconds)
        log.info(
            "event=recording_moved from=%s to=%s path=%s bytes=%d seconds=%.2f", *labels, item.path, item.size, seconds
        )
        return "ok"

    async def _switch(self, item: Item, source: LocalTier, target: CopyTarget) -> bool:
        async with self._store.sessions.begin() as session:
            result = await session.execute(
                update(Recording)
                .where(Recording.id == item.id, Recording.tier == source.name, Recording.path == item.path)
                .values(tier=target.name)
            )
        if getattr(result, "rowcount", 0) != 1:
            # Deleted (or changed) meanwhile, through the API: the copy is the stray one, the source is not ours.
            log.info("event=recording_move_dropped path=%s reason=row_gone", item.path)
            await self._discard(target, item.path)
            return False
        try:
            await source.delete(item.path)
        except TierError as exc:
            # The row is on the copy; the file left here is settled (dropped) after the next start-up.
            log.warning("event=recording_source_left tier=%s path=%s detail=%s", source.name, item.path, exc)
        await asyncio.to_thread(_prune_empty, source.root, item.path)
        return True

    async def _discard(self, tier: CopyTarget, relative: str) -> None:
        try:
            await tier.delete(relative)
        except (TierError, OSError) as exc:
            log.warning("event=recording_copy_left tier=%s path=%s detail=%s", tier.name, relative, exc)

    # ----- deletion ----------------------------------------------------------------------------------------------

    async def _delete(self, item: Item, reason: str) -> bool:
        """Delete a recording's file(s), then its row with an audit entry in the same transaction."""
        tier = self.tiers.get(item.tier)
        if tier is None:
            log.warning(
                "event=recording_delete_skipped path=%s tier=%s reason=tier_not_configured", item.path, item.tier
            )
            return False
        if item.id in self.busy:
            return False
        self.busy.add(item.id)
        try:
            try:
                await tier.delete(item.path)
            except (TierError, OSError, layout.LayoutError) as exc:
                self.delete_failures.labels(item.tier).inc()
                log.error("event=recording_delete_failed tier=%s path=%s detail=%s", item.tier, item.path, exc)
                return False
            async with self._store.sessions.begin() as session:
                await session.execute(delete(Recording).where(Recording.id == item.id))
                self._audit.add(
                    session,
                    "recording.delete",
                    SYSTEM,
                    "recording",
                    str(item.id),
                    details={
                        "reason": reason,
                        "camera_id": item.camera_id,
                        "path": item.path,
                        "tier": item.tier,
                        "started_at": item.started_at.isoformat(),
                        "size_bytes": item.size,
                    },
                )
        finally:
            self.busy.discard(item.id)
        await delete_recording_thumbnails(self.thumbnail_root, item.camera_id, item.started_at, item.ended_at)
        self.deletions.labels(reason).inc()
        level = logging.WARNING if reason == "low_disk_space" else logging.INFO
        log.log(
            level,
            "event=recording_deleted reason=%s tier=%s camera=%s path=%s bytes=%d",
            reason,
            item.tier,
            item.camera_id,
            item.path,
            item.size,
        )
        if isinstance(tier, LocalTier):
            await asyncio.to_thread(_prune_empty, tier.root, item.path)
        return True

    # ----- after a crash -----------------------------------------------------------------------------------------

    async def _settle_interrupted(self) -> None:
        """A move cut between its row switch and the source's deletion leaves the source file, which the start-up
        reconcile then indexes again as a new hot row. The lower tier's row is the verified copy: drop the other."""
        pairs = (
            select(Recording.camera_id, Recording.path)
            .group_by(Recording.camera_id, Recording.path)
            .having(func.count() > 1)
        )
        async with self._store.reader() as session:
            groups = []
            for camera, path in (await session.execute(pairs)).all():
                query = select(Recording).where(Recording.camera_id == camera, Recording.path == path)
                groups.append(list((await session.execute(query)).scalars().all()))
        for rows in groups:
            rows.sort(key=lambda row: ORDER.index(row.tier) if row.tier in ORDER else -1)
            keep = rows[-1]
            for row in rows[:-1]:
                tier = self.tiers.get(row.tier)
                if row.tier == keep.tier or row.checksum != keep.checksum or keep.checksum is None or tier is None:
                    log.warning("event=recording_duplicate_conflict path=%s tiers=%s", row.path, row.tier)
                    self._conflicts.add(row.path)
                    continue
                try:
                    await tier.delete(row.path)
                except (TierError, OSError, layout.LayoutError) as exc:
                    log.warning("event=recording_duplicate_left tier=%s path=%s detail=%s", row.tier, row.path, exc)
                    continue
                async with self._store.sessions.begin() as session:
                    await session.execute(delete(Recording).where(Recording.id == row.id))
                log.info("event=recording_duplicate_dropped tier=%s path=%s kept=%s", row.tier, row.path, keep.tier)

    # ----- figures -----------------------------------------------------------------------------------------------

    async def refresh_figures(self) -> None:
        query = select(
            Recording.tier,
            func.count(),
            func.coalesce(func.sum(Recording.size_bytes), 0),
            func.min(Recording.started_at),
        ).group_by(Recording.tier)
        async with self._store.reader() as session:
            rows = (await session.execute(query)).all()
        figures = {name: (0, 0, 0.0) for name in self.tiers}
        for tier, count, size, oldest in rows:
            stamp = oldest.timestamp() if isinstance(oldest, datetime) else 0.0
            figures[str(tier)] = (int(count), int(size), stamp)
        self.figures = figures


def _prune_empty(root: Path, relative: str) -> None:
    """Remove the camera and date folders a deletion left empty, except today's and yesterday's (where the recorder
    may be about to open a file)."""
    parts = relative.split("/")
    if len(parts) < 5:
        return
    try:
        day = datetime(int(parts[0]), int(parts[1]), int(parts[2]), tzinfo=UTC).date()
    except ValueError:
        return
    if day >= (datetime.now(UTC) - timedelta(days=1)).date():
        return
    folder = root.joinpath(*parts[:-1])
    while folder != root and root in folder.parents:
        try:
            os.rmdir(folder)
        except OSError:
            return
        folder = folder.parent


class _TierCollector(Collector):
    def __init__(self, tiers: RecordingTiers) -> None:
        self._tiers = tiers

    def collect(self) -> Iterator[GaugeMetricFamily]:
        size = GaugeMetricFamily("mediaserver_recording_tier_bytes", "Bytes of recordings per tier", labels=["tier"])
        files = GaugeMetricFamily("mediaserver_recording_tier_files", "Recordings per tier", labels=["tier"])
        oldest = GaugeMetricFamily(
            "mediaserver_recording_tier_oldest_timestamp_seconds",
            "Start of the oldest recording per tier (0: none)",
            labels=["tier"],
        )
        for tier, (count, total, stamp) in sorted(self._tiers.figures.items()):
            size.add_metric([tier], total)
            files.add_metric([tier], count)
            oldest.add_metric([tier], stamp)
        free = GaugeMetricFamily(
            "mediaserver_recording_tier_free_percent", "Free space of each local tier's file system", labels=["tier"]
        )
        for tier, value in sorted(self._tiers.free.items()):
            free.add_metric([tier], value)
        last = GaugeMetricFamily(
            "mediaserver_recording_tier_last_pass_timestamp_seconds", "End of the last pass of moves and retention"
        )
        last.add_metric([], self._tiers.last_pass)
        yield from (size, files, oldest, free, last)
