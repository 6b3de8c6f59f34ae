"""Several nodes on loopback sharing a real Redis (the stream registry) and the real MariaDB: a stream
published on node A plays from node B over RTMP, HLS and WHEP (B pulls an edge copy from A); a node set to
redirect sends HLS players to A; when A dies its registry entry is gone within the TTL and the camera's
reconnect to B is served again; Redis going away and coming back heals the registry. A pulled camera that
every node knows of is read by one node only (its lease), played from the others, and taken over when its
reader dies."""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from benchmarks.lib.mariadb import MYSQL
from benchmarks.lib.mariadb import execute as mysql
from tests.cluster.helpers import ffprobe_codecs, metric
from tests.conftest import ServerProcess, ffmpeg_publish, free_port, require, start_server, wait_for_stream
from tests.webrtc.helpers import WEBRTC_ENV, wait_until, whep_play

pytestmark = pytest.mark.slow

TTL = 3.0


class RedisServer:
    """A private redis-server on a free port (this test stops and restarts it)."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [require("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--dir", str(self.directory)]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def entry(self, key: str, kind: str = "stream") -> str | None:
        value = redis.Redis(port=self.port).get(f"test:{kind}:{key}")
        return value.decode() if value is not None else None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def database() -> Iterator[str]:
    name = f"ms_nodes_{os.getpid()}_{os.urandom(3).hex()}"
    asyncio.run(mysql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"))
    yield f"mysql+asyncmy://{MYSQL}/{name}"
    asyncio.run(mysql(f"DROP DATABASE IF EXISTS `{name}`"))


def start_node(tmp_path: Path, node: str, redis_url: str, database_url: str, **extra: str) -> ServerProcess:
    rtmp_port, http_port = free_port(), free_port()
    env = {
        **WEBRTC_ENV,
        "MEDIASERVER_DATABASE_URL": database_url,
        "MEDIASERVER_DATABASE_AUTO_MIGRATE": "true",
        "MEDIASERVER_REDIS_URL": redis_url,
        "MEDIASERVER_REDIS_KEY_PREFIX": "test:",
        "MEDIASERVER_CLUSTER_SECRET": "nodes-test-secret",
        "MEDIASERVER_AUTH_API_JWT_SECRET": "nodes-test-jwt-secret-0123456789abcdef",
        "MEDIASERVER_CLUSTER_NODE_ID": node,
        "MEDIASERVER_CLUSTER_REGISTRY_TTL": str(TTL),
        "MEDIASERVER_CLUSTER_ADVERTISE_RTMP": f"rtmp://127.0.0.1:{rtmp_port}",
        "MEDIASERVER_CLUSTER_ADVERTISE_HTTP": f"http://127.0.0.1:{http_port}",
        **extra,
    }
    directory = tmp_path / node
    directory.mkdir()
    return start_server(directory, env, ports=(rtmp_port, http_port))


def _wait(predicate: object, timeout: float) -> float:
    """Seconds until `predicate()` holds; fails after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def _listed(server: ServerProcess, name: str) -> bool:
    data = server.get_json("/api/v1/streams")
    assert isinstance(data, dict)
    return any(s["name"] == name for s in data["streams"])


def test_edge_nodes(tmp_path: Path, redis_server: RedisServer, database: str) -> None:
    a = start_node(tmp_path, "a", redis_server.url, database)
    b = start_node(tmp_path, "b", redis_server.url, database)
    c = start_node(tmp_path, "c", redis_server.url, database, MEDIASERVER_CLUSTER_HTTP_MODE="redirect")
    nodes = [a, b, c]
    publisher = ffmpeg_publish(a.rtmp_url("live/cam"), 90, gop=25)
    try:
        wait_for_stream(a, "live", "cam", timeout=15)
        _wait(lambda: redis_server.entry("live/cam") is not None, 5)
        assert '"node": "a"' in (redis_server.entry("live/cam") or "")

        # B serves A's stream over RTMP, HLS and WHEP from one edge copy.
        assert ffprobe_codecs(b.rtmp_url("live/cam")) == ["h264", "aac"]
        assert set(ffprobe_codecs(b.http_url("/hls/live/cam/index.m3u8"))) == {"h264", "aac"}
        assert asyncio.run(_whep_frames(b)) >= 5
        assert metric(b, "mediaserver_edge_copies_opened_total", source="node") == 1
        # C redirects HLS players to the node that holds the stream.
        connection = http.client.HTTPConnection("127.0.0.1", c.http_port, timeout=5)
        connection.request("GET", "/hls/live/cam/index.m3u8")
        redirect = connection.getresponse()
        assert redirect.status == 307
        assert redirect.headers["Location"] == a.http_url("/hls/live/cam/index.m3u8")
        connection.close()

        # A dies: its entry expires within the TTL (plus a heartbeat's slack) and B's copy ends.
        os.kill(a.process.pid, signal.SIGKILL)
        a.process.wait()
        publisher.wait(timeout=15)
        gone_after = _wait(lambda: redis_server.entry("live/cam") is None, TTL + 2)
        assert gone_after <= TTL + 1.5
        _wait(lambda: not _listed(b, "cam"), 10)
        assert ffprobe_codecs(b.rtmp_url("live/cam"), timeout=15) == []  # nobody holds it: refused, not stuck

        # The camera reconnects to B: B holds it now, and serves it.
        publisher = ffmpeg_publish(b.rtmp_url("live/cam"), 60, gop=25)
        wait_for_stream(b, "live", "cam", timeout=15)
        _wait(lambda: '"node": "b"' in (redis_server.entry("live/cam") or ""), 5)
        assert ffprobe_codecs(b.rtmp_url("live/cam")) == ["h264", "aac"]

        # Redis goes away: B goes on serving what it holds; when Redis is back the heartbeat writes it again.
        redis_server.stop()
        time.sleep(TTL)
        assert ffprobe_codecs(b.rtmp_url("live/cam")) == ["h264", "aac"]
        redis_server.start()
        _wait(lambda: '"node": "b"' in (redis_server.entry("live/cam") or ""), TTL + 2)
        assert metric(b, "mediaserver_registry_connected") == 1
    finally:
        publisher.kill()
        publisher.wait()
        for node in nodes:
            node.stop()
    for node in (b, c):
        assert "Traceback" not in node.log(), node.log()[-5000:]


async def _whep_frames(server: ServerProcess) -> int:
    pc, answer, received = await whep_play(server, "/whep/live/cam", audio=False)
    try:
        assert answer.status == 201, answer.body
        await wait_until(lambda: len(received.video) >= 5, 15)
        return len(received.video)
    finally:
        await pc.close()


def test_a_pulled_camera_is_read_by_one_node_and_taken_over_when_it_dies(
    tmp_path: Path, redis_server: RedisServer, database: str
) -> None:
    # The "camera": a lone server with a live stream, pulled over RTMP by both nodes' configuration.
    (tmp_path / "camera").mkdir()
    camera = start_server(tmp_path / "camera")
    publisher = ffmpeg_publish(camera.rtmp_url("live/src"), 120, gop=25)
    pull = {
        "MEDIASERVER_PULL_SOURCES": f"live/door={camera.rtmp_url('live/src')}",
        "MEDIASERVER_PULL_ALLOW_LOOPBACK": "true",
        "MEDIASERVER_PULL_RECONNECT_MIN": "0.5",
    }
    nodes: list[ServerProcess] = []
    try:
        wait_for_stream(camera, "live", "src", timeout=15)
        nodes = [start_node(tmp_path, "a", redis_server.url, database, **pull),
                 start_node(tmp_path, "b", redis_server.url, database, **pull)]  # fmt: skip
        _wait(lambda: any(_listed(node, "door") for node in nodes), 20)
        reader, other = nodes if _listed(nodes[0], "door") else nodes[::-1]
        reader_name, other_name = ("a", "b") if reader is nodes[0] else ("b", "a")
        assert f'"node": "{reader_name}"' in (redis_server.entry("live/door", "pull") or "")

        # The other node never opened the camera: it leaves it to the lease holder, and plays it from there.
        time.sleep(2.5)  # a few lease retries
        assert metric(other, "mediaserver_pull_sessions_total") == 0
        assert metric(other, "mediaserver_pull_sources", state="elsewhere") == 1
        assert metric(reader, "mediaserver_pull_sessions_total") == 1
        assert ffprobe_codecs(other.rtmp_url("live/door")) == ["h264", "aac"]

        # The reader dies: its lease expires within the TTL and the other node reads the camera.
        os.kill(reader.process.pid, signal.SIGKILL)
        reader.process.wait()
        _wait(lambda: _listed(other, "door"), TTL + 10)
        assert f'"node": "{other_name}"' in (redis_server.entry("live/door", "pull") or "")
        assert metric(other, "mediaserver_pull_sessions_total") == 1
        assert ffprobe_codecs(other.rtmp_url("live/door")) == ["h264", "aac"]
    finally:
        publisher.kill()
        publisher.wait()
        for node in nodes:
            node.stop()
        camera.stop()
    assert "Traceback" not in other.log(), other.log()[-5000:]
