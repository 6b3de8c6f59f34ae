"""Storage tiers and retention against real things: recordings made by the recorder from a real libx264 encode,
a real SQLite index, local folders (and small tmpfs mounts where this runs as root), and a real S3 API on loopback
(moto's server) reached through aioboto3. The one stand-in is the free-space probe in one watermark test."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aioboto3
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from sqlalchemy import delete, select, update

from control import recording_tiers
from control.audit import Audit
from control.recording_tiers import Item, RecordingTiers
from control.store import AuditLog, Camera, Recording, Store
from mediaserver.config import Config, ConfigError, RecordingConfig
from mediaserver.hls.segmenter import HlsSettings
from mediaserver.hls.service import HlsService
from mediaserver.hub import Hub
from mediaserver.recording import layout, thumbnails
from mediaserver.recording.recorder import PatternPolicy, Recorder, RecordingFile
from mediaserver.recording.s3 import S3Tier
from mediaserver.recording.storage import LocalTier
from tests.conftest import free_port
from tests.snapshot.media import FakePublisher, coded

KEY, SECRET = "test-access", "test-secret-never-logged"
PART = 8 * 1024  # small parts, so that a ~26 KB recording goes up in several (the server is told to accept them)
DAY = 86400.0


# ----- real recordings, made once --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    data: bytes
    index: bytes
    checksum: str


class _Sink:
    def __init__(self) -> None:
        self.files: list[RecordingFile] = []

    def opened(self, file: RecordingFile) -> None:
        pass

    def progressed(self, file: RecordingFile) -> None:
        pass

    def closed(self, file: RecordingFile) -> None:
        self.files.append(file)

    def alert(self, app: str, name: str, reason: str, detail: str) -> None:
        raise AssertionError(f"recorder alert: {reason} {detail}")


async def _record(root: Path, takes: int) -> list[Recorded]:
    """The recorder fed by the LL-HLS segmenter from a hub stream of libx264 pictures: one file per publish."""
    packets = coded("h264", 320, 180, 75)
    hub = Hub()
    registry = CollectorRegistry()
    hls = HlsService(hub, HlsSettings(1.0, 0.333, 6), registry, 30.0)
    sink = _Sink()
    recorder = Recorder(root, PatternPolicy(["live/*"]), sink, registry, sync_interval=0.05)
    hls.fragment_listeners.append(recorder)
    hub.listen(recorder.on_hub_event)
    recorder.start()
    try:
        for _ in range(takes):
            stream = hub.publish("live", "cam", FakePublisher())
            await asyncio.sleep(0.005)  # the policy answers; file names differ by their start millisecond
            for packet in packets:
                stream.push(packet)
            hub.unpublish(stream)
        deadline = time.monotonic() + 10
        while len(sink.files) < takes and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    finally:
        await recorder.stop()
    assert len(sink.files) == takes
    made = []
    for file in sink.files:
        path = root / file.path
        data = path.read_bytes()
        assert file.checksum == hashlib.sha256(data).hexdigest() and file.size == len(data)
        made.append(Recorded(data, layout.index_path(path).read_bytes(), file.checksum))
    assert len({r.checksum for r in made}) == takes
    return made


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> list[Recorded]:
    return asyncio.run(_record(tmp_path_factory.mktemp("recorder"), 6))


# ----- index, tiers, S3 ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("db") / "template.db"

    async def migrate() -> None:
        store = Store(f"sqlite+aiosqlite:///{path}")
        await store.migrate()
        await store.close()

    asyncio.run(migrate())
    return path


CAMERAS = (secrets.token_hex(16), secrets.token_hex(16))


@pytest.fixture
async def store(template_db: Path, tmp_path: Path) -> AsyncIterator[Store]:
    database = tmp_path / "control.db"
    shutil.copy(template_db, database)
    store = Store(f"sqlite+aiosqlite:///{database}")
    async with store.sessions.begin() as session:
        for index, camera in enumerate(CAMERAS):
            session.add(Camera(id=camera, name=f"Camera {index}", stream_key=secrets.token_hex(16)))
    yield store
    await store.close()


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
async def bucket(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    import moto.s3.models

    # Server-side setting: accept parts below S3's 5 MiB, so that real (small) recordings exercise multipart.
    monkeypatch.setattr(moto.s3.models, "S3_UPLOAD_PART_MIN_SIZE", 1024)
    name = f"rec-{secrets.token_hex(4)}"
    async with _client(moto_endpoint) as s3:
        await s3.create_bucket(Bucket=name)
    return name


def _client(endpoint: str) -> Any:
    session = aioboto3.Session(aws_access_key_id=KEY, aws_secret_access_key=SECRET, region_name="us-east-1")
    return session.client("s3", endpoint_url=endpoint)


def cold_tier(endpoint: str, bucket: str, **options: Any) -> S3Tier:
    return S3Tier(
        "cold",
        bucket=bucket,
        endpoint=endpoint,
        prefix="site-1/recordings",
        access_key=KEY,
        secret_key=SECRET,
        part_size=PART,
        **options,
    )


def settings(**values: Any) -> RecordingConfig:
    """The job's settings with retention and the watermark off unless a test turns them on."""
    return RecordingConfig(**{"retention_days": 0.0, "min_free_percent": 0.0, **values})


def job(store: Store, config: RecordingConfig, hot: LocalTier, warm: Any = None, cold: Any = None) -> RecordingTiers:
    return RecordingTiers(store, Audit(store), config, hot, warm, cold, CollectorRegistry())


async def place(
    store: Store,
    root: Path | None,
    recording: Recorded,
    age_days: float,
    *,
    camera: str = CAMERAS[0],
    tier: str = "hot",
    closed: bool = True,
) -> tuple[int, str]:
    """A recording file (and its .idx) under `root` at the path its start calls for, and its row."""
    started = time.time() - age_days * DAY
    relative = layout.relative_path(camera, started)
    if root is not None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(recording.data)
        layout.index_path(path).write_bytes(recording.index)
    async with store.sessions.begin() as session:
        row = Recording(
            camera_id=camera,
            started_at=datetime.fromtimestamp(started, UTC),
            ended_at=datetime.fromtimestamp(started + 3, UTC),
            path=relative,
            size_bytes=len(recording.data),
            duration_seconds=3.0,
            tier=tier,
            checksum=recording.checksum if closed else None,
        )
        session.add(row)
        await session.flush()
        return row.id, relative


async def tiers_of(store: Store) -> dict[int, str]:
    async with store.reader() as session:
        return {row.id: row.tier for row in (await session.execute(select(Recording))).scalars()}


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


# ----- moves -----------------------------------------------------------------------------------------------------


async def test_hot_warm_cold_moves_are_verified_and_read_back(
    store: Store, tmp_path: Path, recorded: list[Recorded], moto_endpoint: str, bucket: str
) -> None:
    hot, warm = LocalTier("hot", tmp_path / "hot"), LocalTier("warm", tmp_path / "warm")
    cold = cold_tier(moto_endpoint, bucket)
    registry = CollectorRegistry()
    tiers = RecordingTiers(store, Audit(store), settings(), hot, warm, cold, registry)
    week_old, month_old, fresh = recorded[0], recorded[1], recorded[2]
    to_warm, warm_path = await place(store, hot.root, week_old, 10)
    to_cold, cold_path = await place(store, hot.root, month_old, 45)  # past both ages: hot -> cold directly
    stays, fresh_path = await place(store, hot.root, fresh, 1)
    still_open, open_path = await place(store, hot.root, recorded[3], 60, closed=False)

    report = await tiers.run_once()

    assert sorted(report.moved) == sorted([(to_warm, "hot", "warm"), (to_cold, "hot", "cold")])
    assert not report.failed and not report.deleted
    assert await tiers_of(store) == {to_warm: "warm", to_cold: "cold", stays: "hot", still_open: "hot"}
    for moved in (warm_path, cold_path):
        assert not (hot.root / moved).exists() and not layout.index_path(hot.root / moved).exists()
    assert (hot.root / fresh_path).exists() and (hot.root / open_path).exists()
    assert (warm.root / warm_path).read_bytes() == week_old.data
    assert layout.index_path(warm.root / warm_path).read_bytes() == week_old.index
    assert not list(warm.root.rglob("*.part"))

    # The object, its metadata and its .idx, as the S3 API itself reports them.
    key = f"site-1/recordings/{cold_path}"
    async with _client(moto_endpoint) as s3:
        head = await s3.head_object(Bucket=bucket, Key=key)
        body = await (await s3.get_object(Bucket=bucket, Key=key))["Body"].read()
        index = await (await s3.get_object(Bucket=bucket, Key=key + ".idx"))["Body"].read()
    assert head["Metadata"]["sha256"] == month_old.checksum == hashlib.sha256(body).hexdigest()
    assert head["ContentLength"] == len(month_old.data)
    assert "-" in head["ETag"]  # went up in parts
    assert index == month_old.index

    # Reading back through the tier: whole, ranged across several Range GETs, past the end, and the .idx.
    data = month_old.data
    assert b"".join([chunk async for chunk in cold.read(cold_path)]) == data
    assert b"".join([chunk async for chunk in cold.read(cold_path, 1000, 3 * PART + 17)]) == data[1000 : 3 * PART + 17]
    assert b"".join([chunk async for chunk in cold.read(cold_path, len(data) - 5)]) == data[-5:]
    assert [chunk async for chunk in cold.read(cold_path, len(data) + 10)] == []
    assert await cold.read_all(cold_path + ".idx") == month_old.index
    assert await cold.size(cold_path) == len(data)
    with pytest.raises(layout.LayoutError):
        await cold.size("../" + cold_path)

    # A month later the warm one goes on to cold.
    async with store.sessions.begin() as session:
        old = datetime.fromtimestamp(time.time() - 40 * DAY, UTC)
        await session.execute(update(Recording).where(Recording.id == to_warm).values(started_at=old))
    report = await tiers.run_once()
    assert report.moved == [(to_warm, "warm", "cold")]
    assert not (warm.root / warm_path).exists() and not layout.index_path(warm.root / warm_path).exists()
    assert await cold.sha256(warm_path) == week_old.checksum
    # Empty folders of past days are pruned on the tier a file left.
    assert not (warm.root / warm_path).parent.exists()

    assert sample(registry, "mediaserver_recording_tier_moves_total", **{"from": "hot", "to": "warm"}, result="ok") == 1
    assert (
        sample(registry, "mediaserver_recording_tier_moves_total", **{"from": "warm", "to": "cold"}, result="ok") == 1
    )
    assert sample(registry, "mediaserver_recording_tier_moved_bytes_total", **{"from": "hot", "to": "cold"}) == len(
        data
    )
    assert sample(registry, "mediaserver_recording_tier_move_seconds_count", **{"from": "hot", "to": "warm"}) == 1
    assert sample(registry, "mediaserver_recording_tier_files", tier="cold") == 2
    assert sample(registry, "mediaserver_recording_tier_bytes", tier="cold") == len(data) + len(week_old.data)
    assert sample(registry, "mediaserver_recording_tier_files", tier="warm") == 0
    oldest_hot = sample(registry, "mediaserver_recording_tier_oldest_timestamp_seconds", tier="hot")
    assert abs(oldest_hot - (time.time() - 60 * DAY)) < 60
    await tiers.stop()
    assert SECRET not in repr(cold)


async def test_without_warm_hot_goes_straight_to_cold_at_its_age(
    store: Store, tmp_path: Path, recorded: list[Recorded], moto_endpoint: str, bucket: str
) -> None:
    hot = LocalTier("hot", tmp_path / "hot")
    cold = cold_tier(moto_endpoint, bucket)
    tiers = job(store, settings(), hot, None, cold)
    old, old_path = await place(store, hot.root, recorded[4], 31)
    young, _ = await place(store, hot.root, recorded[5], 10)  # past warm_after_days, but there is no warm tier
    report = await tiers.run_once()
    assert report.moved == [(old, "hot", "cold")]
    assert await tiers_of(store) == {old: "cold", young: "hot"}
    assert await cold.sha256(old_path) == recorded[4].checksum
    await tiers.stop()


async def test_a_row_is_never_in_two_moves_at_once(store: Store, tmp_path: Path, recorded: list[Recorded]) -> None:
    hot, warm = LocalTier("hot", tmp_path / "hot"), LocalTier("warm", tmp_path / "warm")
    tiers = job(store, settings(), hot, warm)
    row_id, path = await place(store, hot.root, recorded[0], 10)
    item = Item(row_id, CAMERAS[0], path, "hot", datetime.now(UTC), len(recorded[0].data), recorded[0].checksum)
    results = await asyncio.gather(tiers.move(item, hot, warm), tiers.move(item, hot, warm))
    assert sorted(results) == ["busy", "ok"]
    assert await tiers_of(store) == {row_id: "warm"}


async def test_a_row_deleted_during_its_move_leaves_no_copy(
    store: Store, tmp_path: Path, recorded: list[Recorded]
) -> None:
    hot, warm = LocalTier("hot", tmp_path / "hot"), LocalTier("warm", tmp_path / "warm")
    tiers = job(store, settings(), hot, warm)
    row_id, path = await place(store, hot.root, recorded[0], 10)
    item = Item(row_id, CAMERAS[0], path, "hot", datetime.now(UTC), len(recorded[0].data), recorded[0].checksum)
    async with store.sessions.begin() as session:  # as the API's delete does, between the pass's query and its move
        await session.execute(delete(Recording).where(Recording.id == row_id))
    assert await tiers.move(item, hot, warm) == "gone"
    assert not (warm.root / path).exists() and not layout.index_path(warm.root / path).exists()


async def test_a_move_cut_before_the_source_went_is_settled(
    store: Store, tmp_path: Path, recorded: list[Recorded]
) -> None:
    """The row switched to warm, the process died before deleting the hot file, the start-up reconcile indexed that
    file again as a hot row: the first pass keeps the verified copy's row and drops the other."""
    hot, warm = LocalTier("hot", tmp_path / "hot"), LocalTier("warm", tmp_path / "warm")
    kept, path = await place(store, warm.root, recorded[0], 3, tier="warm")
    stale_file = hot.root / path
    stale_file.parent.mkdir(parents=True)
    stale_file.write_bytes(recorded[0].data)
    async with store.sessions.begin() as session:
        row = (await session.execute(select(Recording).where(Recording.id == kept))).scalar_one()
        session.add(
            Recording(
                camera_id=row.camera_id,
                started_at=row.started_at,
                path=path,
                size_bytes=row.size_bytes,
                tier="hot",
                checksum=row.checksum,
            )
        )
    tiers = job(store, settings(), hot, warm)
    await tiers.run_once()
    assert await tiers_of(store) == {kept: "warm"}
    assert not stale_file.exists() and (warm.root / path).read_bytes() == recorded[0].data
    assert not await _audit_rows(store)  # nothing was lost: no recording was deleted


async def test_a_path_outside_the_root_is_never_touched(store: Store, tmp_path: Path, recorded: list[Recorded]) -> None:
    hot, warm = LocalTier("hot", tmp_path / "hot"), LocalTier("warm", tmp_path / "warm")
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(recorded[0].data)
    row_id, _ = await place(store, None, recorded[0], 10)
    async with store.sessions.begin() as session:
        await session.execute(update(Recording).where(Recording.id == row_id).values(path="../outside.mp4"))
    tiers = job(store, settings(), hot, warm)
    report = await tiers.run_once()
    assert report.failed == [(row_id, "hot", "warm", "refused")]
    assert outside.exists() and not warm.root.exists()


class _ErrorS3:
    """An S3 endpoint answering 500 InternalError to everything (a real HTTP server on loopback)."""

    def __init__(self) -> None:
        self.requests = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        await request.read()
        body = "<?xml version='1.0'?><Error><Code>InternalError</Code><Message>internal error</Message></Error>"
        return web.Response(status=500, text=body, content_type="application/xml")


@pytest.fixture
async def failing_s3() -> AsyncIterator[tuple[str, _ErrorS3]]:
    errors = _ErrorS3()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", errors.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", errors
    await runner.cleanup()


@pytest.mark.parametrize("fault", ["unreachable", "http_500"])
async def test_s3_faults_fail_the_move_and_keep_the_source(
    store: Store,
    tmp_path: Path,
    recorded: list[Recorded],
    failing_s3: tuple[str, _ErrorS3],
    fault: str,
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}" if fault == "unreachable" else failing_s3[0]
    hot = LocalTier("hot", tmp_path / "hot")
    cold = cold_tier(endpoint, "recordings", max_attempts=2, connect_timeout=1.0)
    registry = CollectorRegistry()
    tiers = RecordingTiers(store, Audit(store), settings(), hot, None, cold, registry)
    first, first_path = await place(store, hot.root, recorded[0], 40)
    second, _ = await place(store, hot.root, recorded[1], 35)

    report = await tiers.run_once()

    assert not report.moved and not report.deleted
    # The first failure marks the tier as failing for the pass: the second recording is not even tried.
    assert [(f[0], f[3]) for f in report.failed] == [(first, "failed")]
    assert await tiers_of(store) == {first: "hot", second: "hot"}
    assert (hot.root / first_path).read_bytes() == recorded[0].data
    assert layout.index_path(hot.root / first_path).exists()
    assert (
        sample(registry, "mediaserver_recording_tier_moves_total", **{"from": "hot", "to": "cold"}, result="failed")
        == 1
    )
    if fault == "http_500":
        assert failing_s3[1].requests == 2  # the retry budget, then the failure
    await tiers.stop()


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real file system of 64 KiB (tmpfs), smaller than two recordings."""
    path = tmp_path / "small"
    if not _mount_tmpfs(path, "64k"):
        pytest.skip("mounting a tmpfs needs root")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.parametrize("fault", ["disk_full", "not_writable"])
async def test_warm_faults_fail_the_move_and_keep_the_source(
    store: Store, tmp_path: Path, recorded: list[Recorded], request: pytest.FixtureRequest, fault: str
) -> None:
    if fault == "disk_full":
        warm_root = request.getfixturevalue("small_disk")
        (warm_root / "filler").write_bytes(b"\0" * 48 * 1024)
    else:
        blocker = tmp_path / "blocker"
        blocker.write_bytes(
            b""
        )  # a file where the warm folder should be: nothing can be created under it, even by root
        warm_root = blocker / "warm"
    hot, warm = LocalTier("hot", tmp_path / "hot"), LocalTier("warm", warm_root)
    tiers = job(store, settings(), hot, warm)
    row_id, path = await place(store, hot.root, recorded[0], 10)

    report = await tiers.run_once()

    assert [(f[0], f[2], f[3]) for f in report.failed] == [(row_id, "warm", "failed")]
    assert await tiers_of(store) == {row_id: "hot"}
    assert (hot.root / path).read_bytes() == recorded[0].data
    if fault == "disk_full":
        assert sorted(p.name for p in warm_root.rglob("*") if p.is_file()) == ["filler"]  # no partial copy left


# ----- retention -------------------------------------------------------------------------------------------------


async def _audit_rows(store: Store) -> list[AuditLog]:
    async with store.reader() as session:
        query = select(AuditLog).where(AuditLog.action == "recording.delete").order_by(AuditLog.id)
        return list((await session.execute(query)).scalars())


async def test_retention_by_age_and_by_size_deletes_oldest_first_and_audits(
    store: Store, tmp_path: Path, recorded: list[Recorded], moto_endpoint: str, bucket: str
) -> None:
    hot, warm = LocalTier("hot", tmp_path / "hot"), LocalTier("warm", tmp_path / "warm")
    cold = cold_tier(moto_endpoint, bucket)
    registry = CollectorRegistry()
    size = len(recorded[0].data)
    config = settings(
        retention_days=90, max_bytes_per_camera=2 * size + size // 2, warm_after_days=1000, cold_after_days=2000
    )
    tiers = RecordingTiers(store, Audit(store), config, hot, warm, cold, registry)
    first = CAMERAS[0]
    # Camera 1, by age: one past retention on each tier.
    expired_cold, expired_cold_path = await place(store, None, recorded[0], 120, camera=first, tier="cold")
    await cold.put_file(_scratch(tmp_path, recorded[0].data), expired_cold_path, recorded[0].checksum)
    expired_warm, expired_warm_path = await place(store, warm.root, recorded[1], 95, camera=first, tier="warm")
    kept = [await place(store, hot.root, recorded[i], age, camera=first) for i, age in ((2, 30), (3, 5))]
    # Camera 2, by size: four recordings, room for two and a half: the two oldest go; the open one counts, stays.
    second = CAMERAS[1]
    by_size = [await place(store, hot.root, recorded[i], age, camera=second) for i, age in ((0, 9), (1, 8), (2, 7))]
    open_row = await place(store, hot.root, recorded[3], 6, camera=second, closed=False)

    report = await tiers.run_once()

    deleted = {row: reason for row, reason in report.deleted}
    assert deleted == {
        expired_cold: "retention_age",
        expired_warm: "retention_age",
        by_size[0][0]: "retention_size",
        by_size[1][0]: "retention_size",
    }
    remaining = await tiers_of(store)
    assert set(remaining) == {kept[0][0], kept[1][0], by_size[2][0], open_row[0]}
    assert not (warm.root / expired_warm_path).exists()
    assert not layout.index_path(warm.root / expired_warm_path).exists()
    for _, path in by_size[:2]:
        assert not (hot.root / path).exists()
    async with _client(moto_endpoint) as s3:
        listed = await s3.list_objects_v2(Bucket=bucket)
    assert listed.get("KeyCount", 0) == 0
    audit = await _audit_rows(store)
    assert {int(a.resource_id) for a in audit} == set(deleted)
    for entry in audit:
        assert (
            entry.actor == "system" and entry.user_id is None and entry.success and entry.resource_type == "recording"
        )
        assert entry.details is not None and entry.details["reason"] == deleted[int(entry.resource_id)]
    assert sample(registry, "mediaserver_recording_deletions_total", reason="retention_age") == 2
    assert sample(registry, "mediaserver_recording_deletions_total", reason="retention_size") == 2
    await tiers.stop()


def _scratch(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / f"scratch-{secrets.token_hex(4)}.mp4"
    path.write_bytes(data)
    return path


# ----- free-space watermark --------------------------------------------------------------------------------------


async def test_watermark_moves_the_oldest_down_first(
    store: Store, tmp_path: Path, recorded: list[Recorded], monkeypatch: pytest.MonkeyPatch
) -> None:
    hot, warm = LocalTier("hot", tmp_path / "hot"), LocalTier("warm", tmp_path / "warm")
    tiers = job(store, settings(min_free_percent=10), hot, warm)
    rows = [await place(store, hot.root, recorded[i], age) for i, age in ((0, 0.3), (1, 0.2), (2, 0.1), (3, 0.05))]

    def probe(path: Path) -> float:
        # The hot disk is "short of space" while it holds more than two recordings.
        if path == hot.root:
            return 5.0 if len(list(hot.root.rglob("*.mp4"))) > 2 else 40.0
        return 80.0

    monkeypatch.setattr(recording_tiers, "free_percent", probe)
    report = await tiers.run_once()

    assert report.moved == [(rows[0][0], "hot", "warm"), (rows[1][0], "hot", "warm")]
    assert not report.deleted
    assert await tiers_of(store) == {rows[0][0]: "warm", rows[1][0]: "warm", rows[2][0]: "hot", rows[3][0]: "hot"}


@pytest.mark.parametrize("lower", ["none", "failing"])
async def test_watermark_deletes_only_as_the_last_resort(
    store: Store,
    tmp_path: Path,
    recorded: list[Recorded],
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
    lower: str,
) -> None:
    """A real small disk (tmpfs) holding three recordings, under its watermark: with no lower tier (or one that
    fails) the oldest are deleted, just enough to get back above it; audited, warned and counted."""
    disk = request.getfixturevalue("small_disk_256k")
    hot = LocalTier("hot", disk)
    rows = [await place(store, hot.root, recorded[i], age) for i, age in ((0, 0.3), (1, 0.2), (2, 0.1))]
    usage = shutil.disk_usage(disk)
    per_file = -(-(len(recorded[0].data)) // 4096) * 4096 + 4096  # the file and its .idx, in tmpfs pages
    free_after = [100 * (usage.free + k * per_file) / usage.total for k in (0, 1, 2)]
    threshold = (free_after[1] + free_after[2]) / 2  # two must go, not three
    cold = cold_tier(f"http://127.0.0.1:{free_port()}", "recordings", max_attempts=1) if lower == "failing" else None
    registry = CollectorRegistry()
    tiers = RecordingTiers(store, Audit(store), settings(min_free_percent=threshold), hot, None, cold, registry)

    with caplog.at_level("WARNING", logger="control.recordings"):
        report = await tiers.run_once()

    assert report.deleted == [(rows[0][0], "low_disk_space"), (rows[1][0], "low_disk_space")]
    assert await tiers_of(store) == {rows[2][0]: "hot"}
    assert [p.name for p in disk.rglob("*.mp4")] == [Path(rows[2][1]).name]
    audit = await _audit_rows(store)
    assert [(int(a.resource_id), a.details["reason"] if a.details else "") for a in audit] == [
        (rows[0][0], "low_disk_space"),
        (rows[1][0], "low_disk_space"),
    ]
    assert "event=recording_low_space_delete" in caplog.text
    assert sample(registry, "mediaserver_recording_deletions_total", reason="low_disk_space") == 2
    if lower == "failing":
        assert report.failed[0][:3] == (rows[0][0], "hot", "cold")
    assert SECRET not in caplog.text
    await tiers.stop()


async def test_deleted_recordings_take_their_thumbnails_from_the_hot_root(
    store: Store, tmp_path: Path, recorded: list[Recorded], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retention and the watermark (of warm, which has no lower tier) delete the thumbnails within each deleted
    recording's [start, end); they live on the hot root whatever the recording's tier. Others stay."""
    hot, warm = LocalTier("hot", tmp_path / "hot"), LocalTier("warm", tmp_path / "warm")
    tiers = job(store, settings(retention_days=90, min_free_percent=10, warm_after_days=1000), hot, warm)
    expired = await place(store, warm.root, recorded[0], 100, tier="warm")
    crowded = await place(store, warm.root, recorded[1], 0.3, tier="warm")
    kept = await place(store, warm.root, recorded[2], 0.1, tier="warm")
    async with store.reader() as session:
        rows = {row.id: row for row in (await session.execute(select(Recording))).scalars()}
    made: dict[int, list[int]] = {}
    for row_id in (expired[0], crowded[0], kept[0]):
        row = rows[row_id]
        assert row.ended_at is not None
        start, end = round(row.started_at.timestamp() * 1000), round(row.ended_at.timestamp() * 1000)
        made[row_id] = [start, start + 2000, end]  # the last one, at its end, is the next file's
        for ms in made[row_id]:
            for camera in (CAMERAS[0], CAMERAS[1]):
                thumbnails.write_atomic(thumbnails.path_of(hot.root, camera, ms), b"\xff\xd8")

    def probe(path: Path) -> float:
        # The warm disk is "short of space" while it holds more than one recording.
        return 5.0 if path == warm.root and len(list(warm.root.rglob("*.mp4"))) > 1 else 40.0

    monkeypatch.setattr(recording_tiers, "free_percent", probe)
    report = await tiers.run_once()

    assert dict(report.deleted) == {expired[0]: "retention_age", crowded[0]: "low_disk_space"}
    everything = sorted(ms for times in made.values() for ms in times)
    left = thumbnails.list_between(hot.root, CAMERAS[0], everything[0], everything[-1])
    assert left == sorted([made[expired[0]][2], made[crowded[0]][2], *made[kept[0]]])
    assert thumbnails.list_between(hot.root, CAMERAS[1], everything[0], everything[-1]) == everything
    assert not (warm.root / thumbnails.FOLDER).exists()
    await tiers.stop()


@pytest.fixture
def small_disk_256k(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "disk"
    if not _mount_tmpfs(path, "256k"):
        pytest.skip("mounting a tmpfs needs root")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


# ----- configuration ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        {"warm_after_days": -1},
        {"retention_days": -5},
        {"max_bytes_per_camera": -1},
        {"warm_root": "/srv/warm", "s3_bucket": "b", "warm_after_days": 30, "cold_after_days": 30},
        {"s3_endpoint": "http://127.0.0.1:9000"},
        {"s3_bucket": "b", "s3_part_size": 1024},
        {"tier_interval": 0},
        {"min_free_percent": 100},
        {"root": "/srv/rec", "warm_root": "/srv/rec"},
        {"root": "/srv/rec", "warm_root": "/srv/rec/warm"},
    ],
)
def test_tier_settings_are_validated(values: dict[str, Any]) -> None:
    config = Config()
    for key, value in values.items():
        setattr(config.recording, key, value)
    with pytest.raises(ConfigError):
        config.validate()


def test_tier_defaults_are_valid() -> None:
    config = Config()
    config.recording.warm_root = "/srv/warm"
    config.recording.s3_bucket = "b"
    config.validate()
    assert (config.recording.warm_after_days, config.recording.cold_after_days) == (7.0, 30.0)
    assert config.recording.retention_days == 90.0 and config.recording.min_free_percent == 10.0


# ----- wiring ----------------------------------------------------------------------------------------------------


async def test_the_control_plane_builds_the_tiers_and_runs_the_job(
    tmp_path: Path, moto_endpoint: str, bucket: str
) -> None:
    from control.plane import ControlPlane

    config = Config()
    config.server.data_dir = str(tmp_path / "data")
    config.auth_api.jwt_secret = "test-secret-" + "x" * 40
    recording = config.recording
    recording.warm_root = str(tmp_path / "warm")
    recording.s3_endpoint, recording.s3_bucket, recording.s3_prefix = moto_endpoint, bucket, "node-a"
    recording.s3_access_key, recording.s3_secret_key = KEY, SECRET
    config.validate()
    registry = CollectorRegistry()
    plane = ControlPlane(config, Hub(), environ={}, registry=registry)
    assert set(plane.recordings.tiers) == {"hot", "warm", "cold"}
    cold = plane.recordings.tiers["cold"]
    assert isinstance(cold, S3Tier) and cold.bucket == bucket and cold.prefix == "node-a"
    await plane.start()
    try:
        assert registry.get_sample_value("mediaserver_recording_tier_files", {"tier": "cold"}) == 0
        assert (await plane.recording_tiers.run_once()).moved == []
    finally:
        await plane.stop()
