"""Tier move benchmark: one real closed recording of about --size-mb moved hot -> warm and hot -> cold (S3).

    python -m benchmarks.tier_move --size-mb 1024 --to warm,cold
    python -m benchmarks.tier_move --size-mb 1024 --to warm,cold --repeat 3 --json /tmp/tier-move.json

The recording is made by the recorder itself (`benchmarks.lib.recordings.record_clip`): the reference clip's packets,
looped with timestamps carried forward, through a hub, the LL-HLS segmenter and `Recorder`, faster than real time,
into one file on the hot tier (a folder in the run's temp dir), with its `.idx` and its SHA-256 from the writer;
the control plane's `RecordingIndex` (the server's index, on a SQLite database migrated by the control plane's own
migrations) records its row as the server would. Then, per round and per target, the tool puts the recording on
the hot tier again (a hard link to a kept copy; its pages dropped from the page cache, as for a file written days
ago, unless --cached-source) and calls `RecordingTiers.move`, the control plane's move (copy, read the copy back
and check its SHA-256 against the row, switch the row, delete the source), which the tier job calls per recording.
warm is a second local folder (--warm-root to put it on another disk); cold is moto's S3 server, started as a
process of its own on 127.0.0.1 (`python -m moto.server`; it keeps objects in temporary files of its own temp dir),
reached through `S3Tier` (aioboto3, multipart in parts of --part-size-mb).

Per move: wall seconds, MiB/s, this process's CPU seconds (user+system, every thread) and % of one core, the S3
server's CPU seconds (from /proc), the rest of the machine's busy time (noise), the time of the target's calls
(copy, read-back check, .idx), whether the move verified the copy (answered "ok", the row names the target, the copy
has the recording's size, SHA-256 metadata on S3, the same .idx) and deleted the source. Then (unless
--no-readback) the copy is streamed back through its tier as playback reads it, timed the same way.
Everything started is stopped, and the temp dir removed (unless --keep-temp), on errors and Ctrl-C too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aioboto3
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from benchmarks.lib.clip import Clip, ensure_clip
from benchmarks.lib.procfs import rss_bytes
from benchmarks.lib.recordings import APP, ClipPackets, add_camera, check_recording, drop_cached, new_store, record_clip
from benchmarks.lib.report import format_table, write_report
from benchmarks.lib.runner import log, run_interruptible
from benchmarks.lib.servers import MotoServer
from benchmarks.lib.tiermove import (
    MIB,
    MoveResult,
    item_of,
    measure_move,
    measure_readback,
    place_on_source,
    row_of,
)
from control.audit import Audit
from control.recording_index import RecordingIndex
from control.recording_tiers import CopyTarget, RecordingTiers
from control.store import Recording, Store
from mediaserver.config import RecordingConfig
from mediaserver.recording import layout
from mediaserver.recording.s3 import S3Tier
from mediaserver.recording.storage import LocalTier

TARGETS = ("warm", "cold")
# moto accepts any credentials; these only sign the requests.
S3_KEY, S3_SECRET = "bench-access", "bench-secret"


@dataclass(slots=True)
class Built:
    """The recording the moves move."""

    path: str
    bytes: int
    media_seconds: float
    segments: int
    codecs: str
    clip: str
    clip_mbps: float
    build_seconds: float
    checksum: str


async def build(args: argparse.Namespace, store: Store, hot_root: Path) -> tuple[int, Built]:
    """The row id and the recording, recorded into `hot_root` and indexed by `RecordingIndex` in `store`."""
    clip_path = args.clip if args.clip is not None else await asyncio.to_thread(ensure_clip)
    clip = ClipPackets.of(await asyncio.to_thread(Clip.read, clip_path))
    camera = secrets.token_hex(16)
    await add_camera(store, camera, "tier move bench")
    index = RecordingIndex(store, hot_root, APP)
    index.start()
    target = args.size_mb * MIB
    log(f"recording about {args.size_mb} MiB from {clip_path} ({clip.bitrate_bps / 1e6:.2f} Mbit/s) into {hot_root}")
    began = time.monotonic()
    step = max(target // 10, 1)
    marks = iter(range(step, target + step, step))
    next_mark = next(marks)

    def progress(pushed: int) -> None:
        nonlocal next_mark
        while pushed >= next_mark:
            log(f"  {pushed / MIB:.0f} MiB of media pushed")
            next_mark = next(marks, 1 << 62)

    try:
        file = await record_clip(hot_root, camera, clip, target, sink=index, on_progress=progress)
    finally:
        await index.stop()  # everything queued is in the database when it returns
    seconds = time.monotonic() - began
    async with store.reader() as session:
        row = (await session.execute(select(Recording).where(Recording.path == file.path))).scalar_one()
    if row.checksum != file.checksum or row.size_bytes != file.size:
        raise RuntimeError("the index row does not match the closed file")
    entries = await asyncio.to_thread(check_recording, hot_root / file.path)
    built = Built(
        file.path,
        file.size,
        round(file.duration, 1),
        len(entries),
        ",".join(file.codecs),
        str(clip_path),
        round(clip.bitrate_bps / 1e6, 2),
        round(seconds, 1),
        file.checksum or "",
    )
    log(
        f"recorded {file.size / MIB:.1f} MiB ({file.duration:.0f} s of media, {len(entries)} segments) "
        f"in {seconds:.1f} s; row {row.id}"
    )
    return row.id, built


async def create_bucket(endpoint: str, bucket: str) -> None:
    session = aioboto3.Session(aws_access_key_id=S3_KEY, aws_secret_access_key=S3_SECRET, region_name="us-east-1")
    async with session.client("s3", endpoint_url=endpoint) as s3:
        await s3.create_bucket(Bucket=bucket)


async def run(args: argparse.Namespace) -> tuple[list[MoveResult], dict[str, Any]]:
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    if main_task is not None:
        loop.add_signal_handler(signal.SIGTERM, main_task.cancel)
    targets = [t.strip() for t in args.to.split(",") if t.strip()]
    work = Path(tempfile.mkdtemp(prefix="tier-move-", dir=args.workdir))
    hot_root, template_root = work / "hot", work / "kept"
    warm_root = Path(args.warm_root) / f"tier-move-warm-{secrets.token_hex(4)}" if args.warm_root else work / "warm"
    moto: MotoServer | None = None
    store: Store | None = None
    tiers: RecordingTiers | None = None
    results: list[MoveResult] = []
    extra: dict[str, Any] = {"workdir": str(work), "warm_root": str(warm_root)}
    try:
        # The hot file, the warm copy (when on this file system), and moto's temporary files: the parts of an upload
        # and the object they make (its temp dir is in the system's, like ours by default).
        copies = 1 + ("warm" in targets and not args.warm_root) + 2 * ("cold" in targets)
        need = args.size_mb * MIB * copies + 256 * MIB
        free = shutil.disk_usage(work).free
        if free < need:
            raise RuntimeError(f"{work} has {free / MIB:.0f} MiB free, the run needs about {need / MIB:.0f} MiB")
        store = await new_store(f"sqlite+aiosqlite:///{work / 'control.db'}")
        row_id, built = await build(args, store, hot_root)
        extra["recording"] = built
        hot_file = hot_root / built.path
        index_bytes = layout.index_path(hot_file).read_bytes()
        kept = template_root / built.path
        kept.parent.mkdir(parents=True)
        os.link(hot_file, kept)
        os.link(layout.index_path(hot_file), layout.index_path(kept))

        hot = LocalTier("hot", hot_root)
        warm = LocalTier("warm", warm_root) if "warm" in targets else None
        cold: S3Tier | None = None
        if "cold" in targets:
            moto = MotoServer(args.keep_temp)
            log(f"starting moto's S3 server (temp {moto.root})")
            moto.start()
            bucket = f"bench-{secrets.token_hex(4)}"
            await create_bucket(moto.endpoint, bucket)
            cold = S3Tier(
                "cold",
                bucket=bucket,
                endpoint=moto.endpoint,
                prefix="bench/recordings",
                access_key=S3_KEY,
                secret_key=S3_SECRET,
                part_size=args.part_size_mb * MIB,
            )
            extra["s3"] = {"server": f"moto (python -m moto.server), pid {moto.pid}", "part_size": cold.part_size}
        config = RecordingConfig(retention_days=0.0, min_free_percent=0.0)
        tiers = RecordingTiers(store, Audit(store), config, hot, warm, cold, CollectorRegistry())
        moto_pids: Callable[[], list[int]] = moto.pids if moto is not None else (lambda: [])

        for round_number in range(1, args.repeat + 1):
            for name in targets:
                target: CopyTarget = tiers.tiers[name]
                # The recording back on hot, its row too, and no copy left on the target from an earlier round.
                await asyncio.to_thread(place_on_source, kept, hot_file)
                async with store.sessions.begin() as session:
                    row = await session.get(Recording, row_id)
                    assert row is not None
                    row.tier = "hot"
                await target.delete(built.path)
                if not args.cached_source:
                    await asyncio.to_thread(drop_cached, hot_file)
                item = item_of(await row_of(store, row_id))
                log(f"round {round_number}: moving {built.bytes / MIB:.1f} MiB hot -> {name}")
                result = await measure_move(
                    tiers, store, item, hot, target, index_bytes, moto_pids, round_number, args.cached_source
                )
                if args.readback and result.result == "ok":
                    if isinstance(target, LocalTier) and not args.cached_source:
                        # The move's read-back check left the copy in the page cache; playback days later would not.
                        await asyncio.to_thread(drop_cached, target.path(built.path))
                    result.readback = await measure_readback(target, built.path, built.bytes, moto_pids)
                results.append(result)
                log(
                    f"round {round_number}: hot -> {name}: {result.result}, {result.cost.wall_s:.2f} s, "
                    f"{result.mib_per_s} MiB/s, CPU {result.cost.cpu_s:.2f} s"
                    + (f"; read-back {result.readback.cost.wall_s:.2f} s" if result.readback else "")
                )
                if result.problems:
                    log(f"round {round_number}: hot -> {name}: problems: {'; '.join(result.problems)}")
        if moto is not None:
            extra["s3"]["rss_mb_at_end"] = round(rss_bytes(moto.pids()) / 1e6, 1)
            extra["s3"]["log_problems"] = moto.log_problems()
        return results, extra
    finally:
        if tiers is not None:
            await tiers.stop()  # closes the S3 client
        if store is not None:
            await store.close()
        if moto is not None:
            moto.stop()
        if args.keep_temp:
            log(f"kept {work}" + (f" and {warm_root}" if args.warm_root else ""))
        else:
            shutil.rmtree(work, ignore_errors=True)
            if args.warm_root:
                shutil.rmtree(warm_root, ignore_errors=True)


def _yes(value: bool) -> str:
    return "yes" if value else "NO"


COLUMNS: list[tuple[str, Any]] = [
    ("round", lambda r: str(r.round)),
    ("move", lambda r: f"{r.source} -> {r.target}"),
    ("MiB", lambda r: f"{r.bytes / MIB:.1f}"),
    ("result", lambda r: r.result),
    ("wall s", lambda r: f"{r.cost.wall_s:.2f}"),
    ("MiB/s", lambda r: f"{r.mib_per_s:.1f}"),
    ("copy s", lambda r: f"{r.calls_s.get('put_file', 0.0):.2f}"),
    ("verify s", lambda r: f"{r.calls_s.get('sha256', 0.0):.2f}"),
    ("CPU s", lambda r: f"{r.cost.cpu_s:.2f}"),
    ("CPU %", lambda r: f"{r.cost.cpu_pct:.0f}"),
    ("S3 server CPU s", lambda r: f"{r.cost.server_cpu_s:.2f}" if r.target == "cold" else "-"),
    ("other CPU %", lambda r: f"{r.cost.other_cpu_pct:.0f}"),
    ("verified", lambda r: _yes(r.verified)),
    ("source deleted", lambda r: _yes(r.source_deleted)),
]

READBACK_COLUMNS: list[tuple[str, Any]] = [
    ("round", lambda r: str(r.round)),
    ("from", lambda r: r.target),
    ("MiB", lambda r: f"{r.readback.bytes / MIB:.1f}"),
    ("wall s", lambda r: f"{r.readback.cost.wall_s:.2f}"),
    ("MiB/s", lambda r: f"{r.readback.mib_per_s:.1f}"),
    ("CPU s", lambda r: f"{r.readback.cost.cpu_s:.2f}"),
    ("CPU %", lambda r: f"{r.readback.cost.cpu_pct:.0f}"),
    ("S3 server CPU s", lambda r: f"{r.readback.cost.server_cpu_s:.2f}" if r.target == "cold" else "-"),
    ("other CPU %", lambda r: f"{r.readback.cost.other_cpu_pct:.0f}"),
    ("complete", lambda r: _yes(r.readback.complete)),
]


def print_results(results: list[MoveResult], extra: dict[str, Any]) -> None:
    built = extra.get("recording")
    if isinstance(built, Built):
        print(
            f"\nrecording: {built.bytes / MIB:.1f} MiB, {built.media_seconds:.0f} s of media, {built.segments} "
            f"segments, {built.codecs}, clip {built.clip} ({built.clip_mbps} Mbit/s), built in {built.build_seconds} s"
        )
    print("\nmoves (RecordingTiers.move: copy, read back + SHA-256 check, row switch, source deletion):\n")
    print(format_table(results, COLUMNS))
    with_readback = [r for r in results if r.readback is not None]
    if with_readback:
        print("\nread-back of the copy through its tier (Tier.read, as the media route streams it):\n")
        print(format_table(with_readback, READBACK_COLUMNS))
    for result in results:
        for problem in result.problems:
            print(f"[round {result.round} {result.source} -> {result.target}] {problem}")
    s3 = extra.get("s3")
    if isinstance(s3, dict):
        print(f"\nS3 server: {s3.get('server')}, RSS at the end {s3.get('rss_mb_at_end')} MB")
        for line in s3.get("log_problems", []):
            print(f"S3 server log: {line}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.tier_move",
        description="Tier moves of one real recording: hot -> warm (a local folder), hot -> cold (moto's S3 server).",
    )
    parser.add_argument("--size-mb", type=int, default=1024, help="size of the recording, MiB (default 1024)")
    parser.add_argument("--to", default="warm,cold", help="targets, in order: warm, cold or both (default warm,cold)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of moves (default 1)")
    parser.add_argument("--workdir", default=None, help="where the run's temp dir goes (hot tier, database)")
    parser.add_argument("--warm-root", default=None, help="put the warm tier under this folder (another disk)")
    parser.add_argument(
        "--part-size-mb",
        type=int,
        default=RecordingConfig().s3_part_size // MIB,
        help="S3 multipart part size, MiB (default: recording.s3_part_size)",
    )
    parser.add_argument(
        "--cached-source", action="store_true", help="leave the source in the page cache (default: dropped)"
    )
    parser.add_argument("--no-readback", dest="readback", action="store_false", help="skip the read-back")
    parser.add_argument("--clip", type=Path, default=None, help="FLV clip (default: the reference clip, made once)")
    parser.add_argument("--json", type=Path, default=None, help="write every figure there")
    parser.add_argument("--keep-temp", action="store_true", help="keep the temp dirs (recording, database, logs)")
    args = parser.parse_args(argv)
    targets = [t.strip() for t in args.to.split(",") if t.strip()]
    if not targets or any(t not in TARGETS for t in targets) or len(set(targets)) != len(targets):
        parser.error("--to takes warm, cold or warm,cold")
    if args.size_mb < 1 or args.repeat < 1 or args.part_size_mb < 5:
        parser.error("need --size-mb >= 1, --repeat >= 1, --part-size-mb >= 5 (S3's smallest part)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()

    async def go() -> list[tuple[list[MoveResult], dict[str, Any]]]:
        return [await run(args)]

    outcome = run_interruptible(go())
    if outcome is None:
        return 130
    results, extra = outcome[0]
    print_results(results, extra)
    if args.json is not None:
        plain = {k: asdict(v) if isinstance(v, Built) else v for k, v in extra.items()}
        write_report(args.json, args, started, results, key="moves", extra=plain)
    return 0 if results and all(r.verified and r.source_deleted for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
