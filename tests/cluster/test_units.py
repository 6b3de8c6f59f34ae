"""The pieces of the cluster package with bytes and objects alone: the parent's registry and its links,
cluster tokens, the merging of workers' figures, the routing of stream paths, configuration."""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.workers_scale import lag_p99_ms
from control.figures import add_text_samples
from mediaserver.cluster import tokens
from mediaserver.cluster.coordinator import Coordinator
from mediaserver.cluster.gateway import _merge, merge_metrics, stream_of
from mediaserver.cluster.link import MachineLink
from mediaserver.config import ConfigError, load_config
from mediaserver.hub import Hub
from mediaserver.pull.service import PullService


async def _until(predicate: object, timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not met"
        await asyncio.sleep(0.01)


async def test_claims_are_exclusive_and_die_with_their_worker(tmp_path: Path) -> None:
    coordinator = Coordinator(tmp_path / "parent.sock")
    await coordinator.start()
    a = MachineLink(str(coordinator.path), 0, "/r0", "/h0")
    b = MachineLink(str(coordinator.path), 1, "/r1", "/h1")
    await a.start()
    await b.start()
    try:
        assert await a.claim("live/cam") is None
        assert await b.claim("live/cam") == 0  # taken: b learns who holds it
        await _until(lambda: b.owner("live/cam") is not None)
        holder = b.owner("live/cam")
        assert holder is not None and (holder.index, holder.rtmp, holder.http) == (0, "/r0", "/h0")
        assert a.owner("live/cam") is None  # its own stream is not "elsewhere"
        assert [w.index for w in a.others()] == [1]

        heard: list[str] = []
        b.on_event = heard.append
        a.send_event('{"x": 1}')
        await _until(lambda: heard == ['{"x": 1}'])

        a.release("live/cam")
        await _until(lambda: b.owner("live/cam") is None)
        assert await b.claim("live/cam") is None
        # b dies: what it held is free at once, and a hears that b is gone.
        lost: list[bool] = []
        b.on_parent_lost = lambda: lost.append(True)
        await b.stop()
        await _until(lambda: "live/cam" not in coordinator.owners and 1 not in a.workers)
        assert await a.claim("live/cam") is None
        assert lost == []  # a link closed on purpose does not report a lost parent
    finally:
        await a.stop()
        await coordinator.stop()


async def test_a_worker_notices_its_parent_going(tmp_path: Path) -> None:
    coordinator = Coordinator(tmp_path / "parent.sock")
    await coordinator.start()
    link = MachineLink(str(coordinator.path), 0, "/r0", "/h0")
    lost = asyncio.Event()
    link.on_parent_lost = lost.set
    await link.start()
    await coordinator.stop()
    await asyncio.wait_for(lost.wait(), 2)
    await link.stop()


def test_cluster_tokens() -> None:
    token = tokens.sign("s3cret", "live/cam", now=1000)
    assert tokens.verify("s3cret", "live/cam", token, now=1000)
    assert not tokens.verify("s3cret", "live/other", token, now=1000)
    assert not tokens.verify("other", "live/cam", token, now=1000)
    assert not tokens.verify("s3cret", "live/cam", token, now=1000 + tokens.LIFETIME + 1)
    assert not tokens.verify("", "live/cam", token, now=1000)
    for bad in ("", "x", "12.", ".abc", "9" * 20 + ".abc"):
        assert not tokens.verify("s3cret", "live/cam", bad, now=1000)


def _exposition(value: float) -> str:
    registry = CollectorRegistry()
    Counter("demo_requests", "Requests", ["route"], registry=registry).labels("a").inc(value)
    Gauge("demo_open", "Open", registry=registry).set(value)
    odd = Gauge("demo_odd", "Label values with braces, commas and quotes", ["stream"], registry=registry)
    odd.labels('live/a}b,c="d"\\').set(value)
    Histogram("demo_seconds", "Waits", buckets=(0.1, 1.0), registry=registry).observe(value / 10)
    return generate_latest(registry).decode()


def test_worker_metrics_are_merged_with_a_worker_label() -> None:
    merged = merge_metrics({0: _exposition(2), 1: _exposition(3)}).decode()
    families = {f.name: f for f in text_string_to_metric_families(merged)}
    assert families["demo_requests"].type == "counter"
    totals = {
        (s.labels["worker"], s.labels.get("route")): s.value
        for s in families["demo_requests"].samples
        if s.name == "demo_requests_total"
    }
    assert totals == {("0", "a"): 2.0, ("1", "a"): 3.0}
    assert sorted(s.value for s in families["demo_open"].samples) == [2.0, 3.0]
    assert merged.count("# TYPE demo_open gauge") == 1
    odd = [s for s in families["demo_odd"].samples]
    assert [(s.labels["stream"], s.labels["worker"]) for s in odd] == [
        ('live/a}b,c="d"\\', "0"),
        ('live/a}b,c="d"\\', "1"),
    ]
    buckets = [s for s in families["demo_seconds"].samples if s.name == "demo_seconds_bucket"]
    assert len(buckets) == 6 and {s.labels["worker"] for s in buckets} == {"0", "1"}


def test_machine_listings_are_joined() -> None:
    answers = [
        {"streams": [{"n": 1}], "count": 1, "by": {"up": 1}},
        {"streams": [{"n": 2}], "count": 1, "by": {"up": 2, "down": 1}},
    ]
    merged: dict[str, object] = {}
    for worker, body in enumerate(answers):
        for key, value in body.items():
            merged[key] = _merge(merged.get(key), value, worker)
    assert merged == {
        "streams": [{"n": 1, "worker": 0}, {"n": 2, "worker": 1}],
        "count": 2,
        "by": {"up": 3, "down": 1},
    }


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/hls/live/cam/index.m3u8", ("live", "cam")),
        ("/hls/live/cam/master.m3u8", ("live", "cam")),
        ("/whep/live/cam", ("live", "cam")),
        ("/whep/live/cam/abc123", ("live", "cam")),
        ("/whip/live/cam", ("live", "cam")),
        ("/api/v1/streams/live/cam", ("live", "cam")),
        ("/api/v1/streams", None),
        ("/api/v1/cameras/x", ("live", "x")),
        ("/api/v1/cameras/x/snapshot.jpg", ("live", "x")),
        ("/api/v1/cameras", None),
        ("/hls/live", None),
        ("/metrics", None),
    ],
)
def test_paths_that_belong_to_a_stream(path: str, expected: tuple[str, str] | None) -> None:
    assert stream_of(path) == expected


def test_cluster_configuration() -> None:
    config = load_config(environ={"MEDIASERVER_CLUSTER_WORKERS": "0"})
    assert config.worker_count() >= 1
    assert config.runtime_dir().endswith("run")
    bad_settings = (
        {"MEDIASERVER_CLUSTER_WORKERS": "-1"},
        {"MEDIASERVER_CLUSTER_HTTP_MODE": "proxy"},
        {"MEDIASERVER_CLUSTER_ADVERTISE_RTMP": "http://x"},
        {"MEDIASERVER_CLUSTER_REGISTRY_TTL": "0.1"},
    )
    for bad in bad_settings:
        with pytest.raises(ConfigError):
            load_config(environ=bad)


def test_each_always_on_source_is_read_by_one_worker() -> None:
    sources = [f"live/cam{i}=rtsp://127.0.0.1:8554/cam{i}" for i in range(40)]
    config = load_config(environ={"MEDIASERVER_PULL_SOURCES": ",".join(sources)})
    owners: dict[str, list[int]] = {}
    for index in range(3):
        service = PullService(Hub(), config.pull, CollectorRegistry(), (index, 3))
        for source in service.sources:
            if service.mine(source):
                owners.setdefault(source.key, []).append(index)
    assert len(owners) == 40 and all(len(workers) == 1 for workers in owners.values())
    assert {w[0] for w in owners.values()} == {0, 1, 2}


def test_lag_percentile_from_histogram_growth() -> None:
    name = "mediaserver_event_loop_lag_sample_seconds_bucket"
    before = {f'{name}{{le="0.01",worker="0"}}': 10.0, f'{name}{{le="0.05",worker="0"}}': 10.0,
              f'{name}{{le="+Inf",worker="0"}}': 10.0}  # fmt: skip
    after = {f'{name}{{le="0.01",worker="0"}}': 100.0, f'{name}{{le="0.05",worker="0"}}': 109.0,
             f'{name}{{le="+Inf",worker="0"}}': 110.0, f'{name}{{le="0.01",worker="1"}}': 50.0,
             f'{name}{{le="0.05",worker="1"}}': 50.0, f'{name}{{le="+Inf",worker="1"}}': 50.0}  # fmt: skip
    # worker 0: 100 new samples, 90 under 10 ms, 99 under 50 ms; worker 1: all under 10 ms.
    assert lag_p99_ms(before, after) == 50.0


def test_figures_take_the_other_workers_per_worker_samples() -> None:
    """Another worker's exposition adds its viewers and byte counters; its other families are not parsed."""
    registry = CollectorRegistry()
    viewers = Gauge("mediaserver_hls_viewers", "Distinct recent HLS clients", ["stream"], registry=registry)
    viewers.labels("live/a").set(3)
    sent = Counter("mediaserver_sent_bytes", "Bytes sent", registry=registry)
    sent.inc(1000)
    tiers = Gauge("mediaserver_recording_tier_bytes", "Bytes per tier", ["tier"], registry=registry)
    tiers.labels("hot").set(5)
    samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    samples["mediaserver_hls_viewers"].append(({"stream": "live/a"}, 1.0))
    add_text_samples(samples, generate_latest(registry).decode())
    assert samples["mediaserver_hls_viewers"] == [({"stream": "live/a"}, 1.0), ({"stream": "live/a"}, 3.0)]
    assert samples["mediaserver_sent_bytes_total"] == [({}, 1000.0)]
    # The tiers are the machine's in every worker: adding them would count them twice.
    assert "mediaserver_recording_tier_bytes" not in samples
    assert "mediaserver_sent_bytes_created" not in samples


async def test_a_heartbeat_renews_only_its_own_keys_and_tells_of_the_lost_ones() -> None:
    """Two nodes that both took a stream and a pull lease while Redis was away: once it is back, the first
    renewal keeps the key and the other node is told it lost it (no overwriting back and forth)."""
    from redis.asyncio import Redis

    from mediaserver.cluster.redis_registry import LEASE, STREAM, NodeEntry, NodeLeases, RedisRegistry

    url, prefix = "redis://127.0.0.1:6379/0", f"test-units-{os.urandom(4).hex()}:"
    a = RedisRegistry(url, prefix, NodeEntry("a", 0, "rtmp://a", "http://a"), 0.6)
    b = RedisRegistry(url, prefix, NodeEntry("b", 0, "rtmp://b", "http://b"), 0.6)
    lost: list[tuple[str, str]] = []
    b.on_lost.append(lambda kind, key: lost.append((kind, key)))
    a_leases, b_leases = NodeLeases(a, lambda key: None), NodeLeases(b, lambda key: None)
    client = Redis.from_url(url)
    try:
        assert await a.claim("live/x") is None
        assert await a_leases.take("live/door") is None
        assert (await b.claim("live/x")) == a.entry and await b_leases.take("live/door") == "a"
        # Redis forgets (a restart), B takes both while A still thinks it holds them; A renews first.
        await client.delete(f"{prefix}stream:live/x", f"{prefix}pull:live/door")
        assert await b.claim("live/x") is None and await b_leases.take("live/door") is None
        await client.delete(f"{prefix}stream:live/x", f"{prefix}pull:live/door")
        await a._beat()
        await b._beat()
        assert sorted(lost) == [(LEASE, "live/door"), (STREAM, "live/x")]
        assert b.held == frozenset() and a.held == {"live/x"}
        assert (await client.get(f"{prefix}stream:live/x") or b"").decode() == a.entry.encoded()
        # A lost key is not renewed again: A's entry stays A's.
        await b._beat()
        assert await b.lookup("live/x") == a.entry
        assert await client.pttl(f"{prefix}pull:live/door") > 0
    finally:
        await client.delete(f"{prefix}stream:live/x", f"{prefix}pull:live/door")
        await client.aclose()
        await a.stop()
        await b.stop()


async def test_a_lease_holder_that_cannot_read_its_camera_hands_the_lease_over() -> None:
    """Node A holds a pulled camera's lease but its route to the camera is cut (here: a port nobody listens on):
    after `pull_handover` seconds without reading it, A gives the lease back and leaves it alone for a while, so
    node B takes the camera; B failing in turn hands it back. Real Redis, real pulling sessions."""
    import socket

    from mediaserver.cluster.redis_registry import LEASE, NodeEntry, NodeLeases, RedisRegistry

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]  # closed again: connections there are refused
    url, prefix, ttl = "redis://127.0.0.1:6379/0", f"test-handover-{os.urandom(4).hex()}:", 0.6
    env = {
        "MEDIASERVER_PULL_SOURCES": f"live/door=rtmp://127.0.0.1:{dead}/live/src",
        "MEDIASERVER_PULL_ALLOW_LOOPBACK": "true",
        "MEDIASERVER_PULL_RECONNECT_MIN": "0.1",
        "MEDIASERVER_PULL_RECONNECT_MAX": "0.2",
    }
    config = load_config(None, env)
    nodes, services = [], []
    for name in ("a", "b"):
        registry = RedisRegistry(url, prefix, NodeEntry(name, 0, f"rtmp://{name}", f"http://{name}"), ttl)
        service = PullService(Hub(), config.pull, CollectorRegistry())
        service.share_with_nodes(NodeLeases(registry, service.lease_lost), ttl / 3, handover=0.8)
        nodes.append(registry)
        services.append(service)
    a, b = services
    a_source, b_source = a.sources[0], b.sources[0]
    from redis.asyncio import Redis

    holder = Redis.from_url(url)  # the lease as Redis has it
    lease = f"{prefix}{LEASE}:live/door"
    try:
        for registry in nodes:
            registry.start()
        a.start()
        await _until(lambda: a_source.running, 2)
        b.start()
        await asyncio.sleep(0.5)  # B's lease retries find A's lease
        assert b_source.state == "elsewhere" and not b_source.running
        assert b'"node": "a"' in (await holder.get(lease) or b"")
        # A fails to read for 0.8 s: it hands over, and B (every 0.2 s) takes the lease and tries the camera.
        await _until(lambda: b_source.running, 3)
        assert a.handovers == 1 and not a_source.running
        assert b_source.sessions >= 1
        assert b'"node": "b"' in (await holder.get(lease) or b"")
        # A rests for three retries and does not take the lease back while B holds it; B failing hands it back.
        await _until(lambda: b.handovers == 1 and a_source.running, 4)
        assert b'"node": "a"' in (await holder.get(lease) or b"")
    finally:
        for service in services:
            await service.stop()
        for registry in nodes:
            await registry.stop()
        await holder.aclose()
