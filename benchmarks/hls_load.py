"""HLS load benchmark: K RTMP publishers replaying the reference clip, M HLS viewers spread over them.

    python -m benchmarks.hls_load --target both --streams 50 --viewers 0          # ingest+HLS CPU vs nginx
    python -m benchmarks.hls_load --target ours --mode ll --streams 5 --viewers 30  # LL-HLS latency
    python -m benchmarks.hls_load --target ours --mode plain --streams 1 --viewers 1000
    python -m benchmarks.hls_load --target both --mode ll --streams 1 --viewers 2000   # ours LL, nginx plain

The tool starts the server under test (ours: `python -m mediaserver serve`; nginx: nginx-rtmp with
`hls on`, /work/shared/bench/nginx-rtmp-anchor.conf), drives it from this one process with the
publishers of `benchmarks.lib.publish` (real-time pace, one timer for all) and with simulated HLS
viewers (`benchmarks.hls_viewer`, `--mode ll|plain`) on one shared aiohttp session, measures over a
window and stops everything it started, on errors, Ctrl-C and SIGTERM too.

Latency (ours only; nginx writes no PROGRAM-DATE-TIME): the time a viewer finished downloading a
part or segment minus the wall-clock time its media ends, i.e. PROGRAM-DATE-TIME of its segment
plus the DURATIONs of the parts up to and including it (or plus EXTINF for a segment). The server
stamps PROGRAM-DATE-TIME from its clock when the segment's first frame arrives, so this is
ingest-to-viewer latency on one machine's clock. Two more figures do not trust that stamp:
  e2e         download done minus when the publisher was due to send the media's last frame
              (the moof's tfdt + duration on the publisher's clip clock);
  ingest lag  probed after the window over every listed segment: PROGRAM-DATE-TIME minus when the
              publisher was due to send the segment's first frame (how far behind the server ingests).

Also measured over the window: requests/s and bytes/s of the viewers (playlists counted decoded),
failed requests by kind (non-2xx as http_<status>, exceptions by type; from the first viewer's
start to the window's end), viewers that got no media in the window, the server's CPU (process tree,
% of one core) and RSS, and for ours its worst event-loop lag from /metrics; this process's CPU and
how late its publishers send (`!` marks a saturated load generator). `--json` keeps everything.
Playlists are gzip'd when the server offers it (aiohttp sends Accept-Encoding: gzip, as browsers
do; `--no-gzip` turns that off).

nginx-rtmp has no LL-HLS: with `--mode ll --target both` its viewers are plain ones (the same number), so the
ratio compares our LL-HLS serving with nginx's plain HLS serving of the same audience. Ours also reports, over
the window, how often it rendered a playlist against how often one was asked for (`renders/s`, `playlist req/s`:
a render per change, not per request) and the share of segment and part bytes that left through sendfile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import aiohttp

from benchmarks.hls_viewer import HEAD_BYTES, Meter, Viewer, first_decode_time, init_timescale, join_uri, parse_playlist
from benchmarks.lib.clip import EncodedClip
from benchmarks.lib.measure import LOADGEN_COLUMNS, TargetResult, WindowMeter
from benchmarks.lib.metrics import family, first_label
from benchmarks.lib.procfs import rss_bytes
from benchmarks.lib.publish import APP, Publisher, PublisherFleet, Window
from benchmarks.lib.report import print_summary, ratios, write_report
from benchmarks.lib.runner import add_target_arguments, log, raise_fd_limit, run_interruptible, run_targets
from benchmarks.lib.servers import NginxServer, OurServer, Server, make_server
from benchmarks.lib.stats import percentiles


@dataclass(kw_only=True)
class HlsResult(TargetResult):
    mode: str = ""
    streams: int = 0
    viewers: int = 0
    latency_samples: int = 0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_max_ms: float | None = None
    # From when the publisher was due to send the media's last frame (tfdt + duration on its clip clock)
    # to the download's end: also counts how late the server ingests, which PDT-based latency cannot see.
    e2e_samples: int = 0
    e2e_p50_ms: float | None = None
    e2e_p95_ms: float | None = None
    e2e_p99_ms: float | None = None
    e2e_max_ms: float | None = None
    # Ours, probed after the window over every listed segment: PROGRAM-DATE-TIME minus when the publisher
    # was due to send the segment's first frame, i.e. how far behind real time the server ingests.
    ingest_lag_samples: int = 0
    ingest_lag_p50_ms: float | None = None
    ingest_lag_p99_ms: float | None = None
    ingest_lag_max_ms: float | None = None
    server_loop_lag_max_ms: float | None = None  # ours: the worst event-loop oversleep in the window
    # Ours with --record: what the recorder wrote in the window, its gaps, and the writer's latency.
    record_mbps: float | None = None
    record_fragments: int | None = None
    record_gaps: int | None = None
    record_write_p99_ms: float | None = None
    requests_per_s: float = 0.0
    bytes_per_s: float = 0.0
    failures: int = 0  # failed requests from the first viewer's start to the window's end
    failures_window: int = 0
    failures_by_kind: dict[str, int] = field(default_factory=dict)
    viewers_started: int = 0
    viewers_stalled: int = 0  # viewers that downloaded no media during the window
    resyncs: int = 0
    anomalies: int = 0
    hls_streams: int | None = None  # streams with an HLS playlist at the end
    # Ours, over the window: playlists rendered and asked for per second, and the share of segment and part bytes
    # sent from written-out segments' files with sendfile.
    playlist_renders_per_s: float | None = None
    playlist_requests_per_s: float | None = None
    sendfile_share: float | None = None
    hls_segments_in_window: int | None = None
    server_hls_errors: dict[str, int] = field(default_factory=dict)


def playlist_url(server: Server, stream: str) -> str:
    if isinstance(server, NginxServer):
        return server.url(f"/hls/{stream}.m3u8")
    return server.url(f"/hls/{APP}/{stream}/index.m3u8")


# `--private`: cameras in the database, published with their stream keys, played with the API's URLs.
PRIVATE_ENV = {
    "MEDIASERVER_AUTH_PUBLISH_MODE": "database",
    "MEDIASERVER_ADMIN_USERNAME": "bench",
    "MEDIASERVER_ADMIN_PASSWORD": "bench-password-0123",
}


async def private_cameras(session: aiohttp.ClientSession, server: Server, count: int) -> list[tuple[str, str]]:
    """`count` private cameras made through the API: each one's stream key and the HLS URL (with its play
    token) that `GET /api/v1/streaming/hls/{id}` hands a viewer."""
    login = {
        "username": PRIVATE_ENV["MEDIASERVER_ADMIN_USERNAME"],
        "password": PRIVATE_ENV["MEDIASERVER_ADMIN_PASSWORD"],
    }
    async with session.post(server.url("/api/v1/auth/login"), json=login) as response:
        response.raise_for_status()
        auth = {"Authorization": f"Bearer {(await response.json())['access_token']}"}
    cameras = []
    for index in range(count):
        body = {"name": f"bench{index}", "private": True}
        async with session.post(server.url("/api/v1/cameras"), json=body, headers=auth) as response:
            response.raise_for_status()
            camera = await response.json()
        async with session.get(server.url(f"/api/v1/streaming/hls/{camera['id']}"), headers=auth) as response:
            response.raise_for_status()
            cameras.append((str(camera["stream_key"]), str((await response.json())["url"])))
    return cameras


class HlsCounters:
    """Segments produced and streams with a playlist, from the server's own books."""

    def __init__(self, server: Server, streams: int) -> None:
        self.server = server
        self.streams = streams

    def read(self) -> tuple[int, int, dict[str, int], float | None]:
        """(streams with a playlist, segments made, HLS request errors by status, worst loop lag since the last
        read in seconds)."""
        server = self.server
        if isinstance(server, NginxServer):
            hls = server.root / "hls"
            playlists = sum(1 for i in range(self.streams) if (hls / f"bench{i}.m3u8").exists())
            return playlists, server.hls_segments(), {}, None
        samples = server.scrape()
        streams = int(sum(family(samples, "mediaserver_hls_streams").values()))
        segments = int(sum(family(samples, "mediaserver_hls_segments_total").values()))
        errors = {
            first_label(labels): int(value)
            for labels, value in family(samples, "mediaserver_hls_request_errors_total").items()
        }
        lag = family(samples, "mediaserver_event_loop_lag_max_seconds")
        return streams, segments, errors, (max(lag.values()) if lag else None)


_SERVING = (
    "mediaserver_hls_playlist_renders_total",
    "mediaserver_hls_playlist_requests_total",
    "mediaserver_hls_sendfile_bytes_total",
)


def serving_counters(samples: dict[str, float]) -> dict[str, float]:
    """Ours: playlist renders and requests, bytes sent with sendfile, and segment plus part bytes sent."""
    counters = {name: sum(family(samples, name).values()) for name in _SERVING}
    sent = family(samples, "mediaserver_hls_sent_bytes_total")
    counters["media"] = sum(value for labels, value in sent.items() if first_label(labels) in ("segment", "part"))
    return counters


def _fill_serving(result: HlsResult, before: dict[str, float], after: dict[str, float], seconds: float) -> None:
    delta = {key: after[key] - before.get(key, 0.0) for key in after}
    result.playlist_renders_per_s = round(delta["mediaserver_hls_playlist_renders_total"] / seconds, 1)
    result.playlist_requests_per_s = round(delta["mediaserver_hls_playlist_requests_total"] / seconds, 1)
    if delta["media"] > 0:
        result.sendfile_share = round(delta["mediaserver_hls_sendfile_bytes_total"] / delta["media"], 3)


async def _wait_playlists(server: Server, session: aiohttp.ClientSession, urls: list[str], timeout: float) -> int:
    """Wait until every stream's playlist lists a complete segment; how many did."""

    async def one(url: str) -> bool:
        deadline = time.monotonic() + timeout
        # nginx logs every 404: look for its playlist file first, then ask over HTTP.
        on_disk = server.root / "hls" / url.rsplit("/", 1)[1] if isinstance(server, NginxServer) else None
        while time.monotonic() < deadline:
            if on_disk is not None and not on_disk.exists():
                await asyncio.sleep(0.25)
                continue
            with contextlib.suppress(Exception):
                async with session.get(url) as response:
                    if response.status == 200 and any(
                        s.duration is not None for s in parse_playlist(await response.text()).segments
                    ):
                        return True
            await asyncio.sleep(0.25)
        return False

    return sum(await asyncio.gather(*(one(url) for url in urls)))


async def probe_ingest_lag(
    session: aiohttp.ClientSession, urls: list[str], publishers: list[Publisher], clock_offset: float
) -> list[float]:
    """Ours: for every segment listed now (`urls`: each publisher's playlist), PROGRAM-DATE-TIME minus when its
    publisher was due to send the segment's first frame (ms): the server's stamp is its clock when it ingested
    that frame."""
    semaphore = asyncio.Semaphore(16)
    lags: list[float] = []

    async def get(url: str, headers: dict[str, str] | None = None) -> bytes | None:
        async with semaphore:
            try:
                async with session.get(url, headers=headers) as response:
                    return await response.read() if response.status in (200, 206) else None
            except (aiohttp.ClientError, TimeoutError):
                return None

    async def one(publisher: Publisher, url: str) -> None:
        base = url.rsplit("/", 1)[0] + "/"
        text = await get(url)
        playlist = parse_playlist(text.decode()) if text else None
        if playlist is None or playlist.map_uri is None:
            return
        init = await get(join_uri(base, playlist.map_uri))
        timescale = init_timescale(init) if init else None
        if not timescale:
            return
        zero = publisher.t0 + clock_offset
        for segment in playlist.segments:
            if segment.uri is None or segment.pdt is None:
                continue
            head = await get(join_uri(base, segment.uri), {"Range": f"bytes=0-{HEAD_BYTES - 1}"})
            start = first_decode_time(head) if head else None
            if start is not None:
                lags.append((segment.pdt - zero - start / timescale) * 1000)

    await asyncio.gather(*(one(p, url) for p, url in zip(publishers, urls, strict=True) if p.live))
    return lags


async def _stop_viewers(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


def _set_percentiles(result: HlsResult, prefix: str, values: Iterable[float], pcts: Iterable[float]) -> None:
    """`<prefix>_p50_ms` ... `<prefix>_max_ms` of `result` from `values`."""
    for name, value in percentiles(values, pcts).items():
        setattr(result, f"{prefix}_{name}_ms", value)


async def run_target(target: str, args: argparse.Namespace, clip: EncodedClip) -> HlsResult:
    k, m = args.streams, args.viewers
    # nginx-rtmp has no LL-HLS: its viewers of an LL run are plain ones.
    viewer_mode = args.mode if target == "ours" else "plain"
    mode = viewer_mode if m else "none"
    result = HlsResult(target=target, mode=mode, streams=k, viewers=m)
    private = args.private and target == "ours"
    server = OurServer(args.keep_temp, env=PRIVATE_ENV) if private else make_server(target, args.keep_temp)
    loop = asyncio.get_running_loop()
    fleet = PublisherFleet(clip, Window())
    publishers = fleet.publishers
    viewers: list[Viewer] = []
    tasks: list[asyncio.Task[None]] = []
    meter = Meter()
    session: aiohttp.ClientSession | None = None
    counters = HlsCounters(server, k)
    log(f"[{target}] starting the server (temp {server.root})")
    try:
        server.start()  # blocking on purpose: nothing else runs yet
        log(f"[{target}] server pid {server.pid}")
        clock_offset = time.time() - loop.time()  # wall clock minus the loop's (monotonic) clock
        result.rss_idle_mb = round(rss_bytes(server.pids()) / 1e6, 1)
        connector = aiohttp.TCPConnector(limit=max(m, 1), limit_per_host=0, force_close=False)
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=args.request_timeout),
            # Keeps the play cookie of a private camera (the server is an IP address); one jar for every viewer.
            cookie_jar=aiohttp.CookieJar(unsafe=True),
        )
        cameras = await private_cameras(session, server, k) if private else None
        log(f"[{target}] starting {k} publishers, {args.start_interval * 1000:.0f} ms apart")
        names = [key for key, _ in cameras] if cameras is not None else None
        live = await fleet.start(k, server.rtmp_port, args.start_interval, names)
        log(f"[{target}] {live}/{k} publishers live")

        headers = {} if args.gzip else {"Accept-Encoding": "identity"}
        if cameras is not None:
            urls = [url for _, url in cameras]
        else:
            urls = [playlist_url(server, p.name) for p in publishers]
        if m:
            ready = await _wait_playlists(server, session, urls, timeout=20.0)
            log(f"[{target}] {ready}/{k} playlists have a segment")
            spread = args.join_spread if args.join_spread is not None else max(2.0, m / 500)
            log(f"[{target}] starting {m} {viewer_mode} viewers over {spread:.1f} s")
            for j in range(m):
                stream = j % k
                viewer = Viewer(
                    j, stream, urls[stream], viewer_mode, session, meter, headers, publishers[stream], clock_offset
                )
                viewers.append(viewer)
                tasks.append(loop.create_task(viewer.run()))
                await asyncio.sleep(spread / m)
            result.viewers_started = len(tasks)
        log(f"[{target}] warm-up {args.warmup} s")
        await asyncio.sleep(args.warmup)

        log(f"[{target}] measuring for {args.duration} s")
        segments0: int | None = None
        with contextlib.suppress(OSError):
            _, segments0, _, _ = await asyncio.to_thread(counters.read)
        media0 = [v.media for v in viewers]
        requests0 = sum(v.requests for v in viewers)
        bytes0 = sum(v.bytes for v in viewers)
        window = WindowMeter(server, fleet)
        recorded0 = await asyncio.to_thread(server.scrape) if args.record and target == "ours" else None
        serving0 = serving_counters(await asyncio.to_thread(server.scrape)) if target == "ours" else None
        window.open()
        meter.active = True
        await asyncio.sleep(args.duration)
        meter.active = False
        window.close()
        requests1 = sum(v.requests for v in viewers)
        bytes1 = sum(v.bytes for v in viewers)
        meter.stopping = True  # what fails from here on is our own shutdown

        window.fill(result, k)
        if serving0 is not None:
            serving1 = serving_counters(await asyncio.to_thread(server.scrape))
            _fill_serving(result, serving0, serving1, window.elapsed)
        if recorded0 is not None:
            _fill_recording(result, recorded0, await asyncio.to_thread(server.scrape), window.elapsed)
        result.requests_per_s = round((requests1 - requests0) / window.elapsed, 1)
        result.bytes_per_s = round((bytes1 - bytes0) / window.elapsed)
        result.out_mbps = window.mbps(bytes1 - bytes0)
        result.latency_samples = len(meter.latency_ms)
        _set_percentiles(result, "latency", meter.latency_ms, (50, 95, 99, 100))
        result.e2e_samples = len(meter.e2e_ms)
        _set_percentiles(result, "e2e", meter.e2e_ms, (50, 95, 99, 100))
        result.failures = sum(meter.failures.values())
        result.failures_window = sum(meter.failures_window.values())
        result.failures_by_kind = dict(meter.failures)
        result.viewers_stalled = sum(1 for v, before in zip(viewers, media0, strict=True) if v.media == before)
        result.resyncs = meter.resyncs
        result.anomalies = meter.anomalies
        result.error_samples = (
            fleet.errors()[:5] + [f"viewer {v.index}: {v.first_error}" for v in viewers if v.first_error][:10]
        )
        try:
            streams, segments1, errors, loop_lag = await asyncio.to_thread(counters.read)
            if loop_lag is not None:
                result.server_loop_lag_max_ms = round(loop_lag * 1000, 1)
            result.hls_streams = streams
            result.server_hls_errors = errors
            if segments0 is not None and not isinstance(server, NginxServer):
                result.hls_segments_in_window = segments1 - segments0
            result.drops, _ = await asyncio.to_thread(server.drops)
        except OSError as exc:
            log(f"[{target}] could not read the server's counters: {exc}")
        if not isinstance(server, NginxServer):
            await _stop_viewers(tasks)  # they would hold the pool's connections
            lags = await probe_ingest_lag(session, urls, publishers, clock_offset)
            result.ingest_lag_samples = len(lags)
            _set_percentiles(result, "ingest_lag", lags, (50, 99, 100))
        # nginx cannot raise its workers' fd limit to worker_rlimit_nofile (65535) past our hard limit; it runs
        # with the limit it inherits from us (raise_fd_limit above), which is enough here.
        result.server_log_problems = [line for line in server.log_problems() if "setrlimit(RLIMIT_NOFILE" not in line]
        log(
            f"[{target}] done: server CPU {result.server_cpu_pct}%, generator CPU {result.loadgen_cpu_pct}%, "
            f"{result.failures} failed requests"
        )
        return result
    finally:
        meter.stopping = True
        await _stop_viewers(tasks)
        if session is not None:
            await session.close()
        await fleet.stop()
        await asyncio.sleep(0.2)
        log(f"[{target}] stopping the server")
        server.stop()


def _fill_recording(result: HlsResult, before: dict[str, float], after: dict[str, float], seconds: float) -> None:
    def delta(name: str) -> float:
        return sum(after.get(key, 0.0) - before.get(key, 0.0) for key in after if key.split("{")[0] == name)

    result.record_mbps = round(delta("mediaserver_recording_written_bytes_total") * 8 / seconds / 1e6, 1)
    result.record_fragments = int(delta("mediaserver_recording_fragments_total"))
    result.record_gaps = int(delta("mediaserver_recording_gaps_total"))
    # p99 from the histogram's buckets over the window (upper bound of the bucket that holds it).
    buckets = sorted(
        (float(key.split('le="')[1].split('"')[0]), after[key] - before.get(key, 0.0))
        for key in after
        if key.startswith("mediaserver_recording_write_seconds_bucket")
    )
    total = buckets[-1][1] if buckets else 0.0
    for bound, count in buckets:
        if total and count >= 0.99 * total:
            result.record_write_p99_ms = round(bound * 1000, 2)
            break


def _num(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


COLUMNS: list[tuple[str, Callable[[HlsResult], str]]] = [
    ("target", lambda r: r.target),
    ("mode", lambda r: r.mode),
    ("K", lambda r: str(r.streams)),
    ("M", lambda r: str(r.viewers)),
    ("server CPU %", lambda r: f"{r.server_cpu_pct:.1f}"),
    ("CPU %/stream", lambda r: f"{r.cpu_pct_per_stream:.3f}"),
    ("RSS MB", lambda r: f"{r.rss_mb:.1f}"),
    ("lat p50 ms", lambda r: _num(r.latency_p50_ms)),
    ("lat p95 ms", lambda r: _num(r.latency_p95_ms)),
    ("lat p99 ms", lambda r: _num(r.latency_p99_ms)),
    ("e2e p95 ms", lambda r: _num(r.e2e_p95_ms)),
    ("ingest lag p99/max ms", lambda r: f"{_num(r.ingest_lag_p99_ms)}/{_num(r.ingest_lag_max_ms)}"),
    ("loop lag max ms", lambda r: _num(r.server_loop_lag_max_ms)),
    ("req/s", lambda r: f"{r.requests_per_s:.0f}"),
    ("playlist req/s", lambda r: _num(r.playlist_requests_per_s)),
    ("renders/s", lambda r: _num(r.playlist_renders_per_s, 1)),
    ("sendfile share", lambda r: _num(r.sendfile_share, 2)),
    ("out Mbit/s", lambda r: f"{r.out_mbps:.0f}"),
    ("failed req (run/window)", lambda r: f"{r.failures}/{r.failures_window}"),
    ("stalled viewers", lambda r: str(r.viewers_stalled)),
    ("pubs up", lambda r: f"{r.publishers_connected_at_end}/{r.streams}"),
    ("HLS streams", lambda r: _num(r.hls_streams)),
    ("rec Mbit/s", lambda r: _num(r.record_mbps, 1)),
    ("rec gaps", lambda r: _num(r.record_gaps)),
    ("rec write p99 ms", lambda r: _num(r.record_write_p99_ms, 2)),
    *LOADGEN_COLUMNS,
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.hls_load",
        description="HLS load: K RTMP publishers and M HLS viewers against our server and/or nginx-rtmp `hls on`.",
    )
    add_target_arguments(parser)
    parser.add_argument("--streams", "-k", type=int, default=10, help="streams, one RTMP publisher each")
    parser.add_argument("--viewers", "-m", type=int, default=0, help="HLS viewers in all, spread over the streams")
    parser.add_argument(
        "--mode", choices=("ll", "plain"), default="ll", help="viewer behaviour (nginx's viewers are always plain)"
    )
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds after the last viewer starts")
    parser.add_argument(
        "--join-spread",
        type=float,
        default=None,
        help="start the viewers over this many seconds (default: max(2, M/500))",
    )
    parser.add_argument("--request-timeout", type=float, default=10.0, help="per request, seconds")
    parser.add_argument(
        "--no-gzip", dest="gzip", action="store_false", help="send Accept-Encoding: identity (default: aiohttp's gzip)"
    )
    parser.add_argument(
        "--record", action="store_true", help="ours: record every stream (recording.streams = live/*) and report it"
    )
    parser.add_argument(
        "--private",
        action="store_true",
        help="ours: private cameras (database publish mode), played with play tokens and the play cookie",
    )
    args = parser.parse_args(argv)
    if args.record:
        # The server inherits this process's environment; the recorder writes into the run's temp dir.
        os.environ["MEDIASERVER_RECORDING_STREAMS"] = "live/*"
    if args.streams < 1 or args.viewers < 0 or args.duration <= 0 or args.warmup < 0:
        parser.error("need --streams >= 1, --viewers >= 0, --duration > 0, --warmup >= 0")
    if args.viewers and args.mode == "ll" and args.target == "nginx":
        parser.error("nginx-rtmp has no LL-HLS: use --mode plain with --target nginx (both: nginx's viewers are plain)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Our sockets and the server's (it inherits the limit): publishers, viewers, and some slack.
    raise_fd_limit(2 * (args.streams + args.viewers) + 512)
    started = time.monotonic()
    results = run_interruptible(run_targets(args, run_target))
    if results is None:
        return 130
    ratio = ratios(results)

    def notes(result: HlsResult) -> list[str]:
        return [f"failed requests by kind: {result.failures_by_kind}"] if result.failures_by_kind else []

    print_summary(results, COLUMNS, ratio, notes)
    if args.json is not None:
        write_report(args.json, args, started, results, ratio)
    return 0


if __name__ == "__main__":
    sys.exit(main())
