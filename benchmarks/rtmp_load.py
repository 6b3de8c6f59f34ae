"""RTMP load benchmark: N publishers replaying the reference clip, M players per stream.

    python -m benchmarks.rtmp_load --target both --publishers 10 --players 1 --warmup 5 --duration 12

The tool starts the server under test itself (ours: `python -m mediaserver serve` on free
loopback ports; nginx: nginx-rtmp with /work/shared/bench/nginx-rtmp-anchor.conf), drives it
from this one process, measures, and stops everything it started, on errors and Ctrl-C too.

Publishers replay the clip's FLV tags at real-time pace, pre-chunked at chunk size 4096 (one
encoding per clip loop, shared by all publishers, timestamps carried forward loop after loop).
Players `play` each stream, read and discard, time the first video keyframe after `play`,
and in the window time each video message from when its publisher was due to send it to its
arrival (delivery latency: it grows when the server falls behind).

Over the measurement window: the server's CPU (utime+stime of the server process and its
children from /proc, % of one core), its VmRSS at the end, bytes in and out as seen by the
publishers and players, this process's own CPU and how late its publishers send (if it
saturates, the figures measure the load generator, not the server), disconnects and errors,
and packet drops (ours: `mediaserver_packets_dropped` from /metrics; nginx: `dropped` in /stat).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import heapq
import itertools
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from benchmarks.clip import ensure_clip
from benchmarks.flvfile import TAG_AUDIO, TAG_SCRIPT, TAG_VIDEO, FlvTag, read_flv
from mediaserver.formats.flv import FlvError, parse_audio, parse_video
from mediaserver.rtmp import chunk
from mediaserver.rtmp.amf import encode_amf0
from mediaserver.rtmp.chunk import Message, encode_message
from mediaserver.rtmp.client import RtmpClient

ANCHOR_CONF = Path("/work/shared/bench/nginx-rtmp-anchor.conf")
NGINX_MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")
APP = "live"
CHUNK_SIZE = 4096
MEDIA_STREAM_ID = 1
CSID_VIDEO, CSID_AUDIO, CSID_DATA = 6, 4, 5
_CSID = {TAG_VIDEO: CSID_VIDEO, TAG_AUDIO: CSID_AUDIO, TAG_SCRIPT: CSID_DATA}
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Above this the single-threaded load generator is the bottleneck, not the server.
SATURATED_CPU_PCT = 90.0
SATURATED_LAG_MS = 100.0


T = TypeVar("T")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- /proc


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, utime+stime in clock ticks), or None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(entry.name))
    found: list[int] = []
    pending = [root]
    while pending:
        pid = pending.pop()
        if pid not in found and _proc_stat(pid) is not None:
            found.append(pid)
            pending.extend(children.get(pid, ()))
    return found


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    ticks: dict[int, int] = {}
    for pid in pids:
        stat = _proc_stat(pid)
        if stat is not None:
            ticks[pid] = stat[1]
    return ticks


def machine_busy_ticks() -> int:
    """Clock ticks all CPUs spent busy (not idle, not waiting for I/O) since boot."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    # guest time is already counted in user time
    return sum(values[:8]) - idle


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode(errors="replace"))


def _stop_process(process: subprocess.Popen[bytes], extra_pids: list[int], sig: int = signal.SIGTERM) -> None:
    """Signal the server and wait; then kill it and whatever children it left behind, by pid."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for pid in extra_pids:
        if pid != process.pid and _proc_stat(pid) is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- servers


class Server:
    """A server under test, started in its own session so that Ctrl-C reaches us only."""

    name = "?"

    def __init__(self, keep_temp: bool) -> None:
        self.keep_temp = keep_temp
        self.root = Path(tempfile.mkdtemp(prefix=f"rtmp-bench-{self.name}-"))
        self.rtmp_port = free_port()
        self.http_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.root / "server.log"
        self._known_pids: list[int] = []

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def pids(self) -> list[int]:
        pids = process_tree(self.pid)
        self._known_pids = sorted(set(self._known_pids) | set(pids))
        return pids

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.process is not None:
            self.pids()
            _stop_process(self.process, self._known_pids, self._stop_signal)
        if not self.keep_temp:
            shutil.rmtree(self.root, ignore_errors=True)

    _stop_signal = signal.SIGTERM

    def drops(self) -> tuple[int | None, dict[str, int]]:
        return None, {}

    def scrape(self) -> dict[str, float]:
        """The server's own metrics, `name{labels}` -> value; empty when it has none."""
        return {}

    def log_problems(self) -> list[str]:
        return []

    def _spawn(self, command: list[str], env: dict[str, str] | None = None) -> None:
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                command,
                env=env,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _wait_ready(self, ready: Callable[[], bool], timeout: float = 20.0) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_path.read_text(errors='replace')[-3000:]}")
            with contextlib.suppress(OSError):
                if ready():
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not become ready:\n{self.log_path.read_text(errors='replace')[-3000:]}")


class OurServer(Server):
    name = "ours"

    def start(self) -> None:
        env = dict(os.environ)
        env.update(
            {
                "MEDIASERVER_RTMP_HOST": "127.0.0.1",
                "MEDIASERVER_RTMP_PORT": str(self.rtmp_port),
                "MEDIASERVER_HTTP_HOST": "127.0.0.1",
                "MEDIASERVER_HTTP_PORT": str(self.http_port),
                "MEDIASERVER_SERVER_DATA_DIR": str(self.root / "data"),
                "MEDIASERVER_SERVER_LOG_LEVEL": "warning",
                # Load publishers use arbitrary names, as they do against nginx.
                "MEDIASERVER_AUTH_PUBLISH_MODE": "open",
            }
        )
        self._spawn([sys.executable, "-m", "mediaserver", "serve"], env)
        self._wait_ready(lambda: bool(http_get(f"http://127.0.0.1:{self.http_port}/healthz", 2)))

    def drops(self) -> tuple[int | None, dict[str, int]]:
        by_reason: dict[str, int] = {}
        for key, value in self.scrape().items():
            match = re.fullmatch(r'mediaserver_packets_dropped_total\{reason="([^"]*)"\}', key)
            if match:
                by_reason[match.group(1)] = int(value)
        return sum(by_reason.values()), by_reason

    def scrape(self) -> dict[str, float]:
        text = http_get(f"http://127.0.0.1:{self.http_port}/metrics", timeout=20)
        samples: dict[str, float] = {}
        for match in re.finditer(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) (\S+)$", text, re.M):
            with contextlib.suppress(ValueError):
                samples[match.group(1)] = float(match.group(2))
        return samples

    def log_problems(self) -> list[str]:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return [line for line in text.splitlines() if "level=ERROR" in line or "Traceback" in line][:20]


class NginxServer(Server):
    name = "nginx"
    # SIGTERM is nginx's fast shutdown: the master stops its workers and exits.
    _stop_signal = signal.SIGTERM

    def start(self) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not NGINX_MODULE.exists():
            raise RuntimeError(f"{NGINX_MODULE} is missing (apt-get install libnginx-mod-rtmp)")
        conf = ANCHOR_CONF.read_text().replace("@ROOT@", str(self.root))
        for old, new in (
            ("listen 127.0.0.1:1935;", f"listen 127.0.0.1:{self.rtmp_port};"),
            ("listen 127.0.0.1:8081;", f"listen 127.0.0.1:{self.http_port};"),
        ):
            if old not in conf:
                raise RuntimeError(f"anchor config changed: {old!r} not found")
            conf = conf.replace(old, new)
        # The workers run as an unprivileged user and write the HLS files.
        self.root.chmod(0o755)
        for sub in ("nginx/logs", "nginx/tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "hls").mkdir(mode=0o777, exist_ok=True)
        (self.root / "hls").chmod(0o777)
        conf_path = self.root / "nginx" / "nginx.conf"
        conf_path.write_text(conf)
        prefix = f"{self.root / 'nginx'}/"
        startup_log = str(self.root / "nginx" / "logs" / "startup.log")
        self._spawn([nginx, "-c", str(conf_path), "-p", prefix, "-e", startup_log])

        def ready() -> bool:
            with socket.create_connection(("127.0.0.1", self.rtmp_port), timeout=1):
                pass
            return len(process_tree(self.pid)) >= 2  # master and worker

        self._wait_ready(ready)

    def drops(self) -> tuple[int | None, dict[str, int]]:
        text = http_get(f"http://127.0.0.1:{self.http_port}/stat", timeout=20)
        dropped = sum(int(v) for v in re.findall(r"<dropped>(\d+)</dropped>", text))
        return dropped, {"stat_dropped": dropped}

    def hls_segments(self) -> int:
        return sum(1 for _ in (self.root / "hls").glob("*.ts"))

    def log_problems(self) -> list[str]:
        path = self.root / "nginx" / "logs" / "error.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return [line for line in text.splitlines() if re.search(r"\[(error|crit|alert|emerg)\]", line)][:20]


# --------------------------------------------------------------------------- the clip


@dataclass(slots=True)
class _Entry:
    csid: int
    type_id: int
    timestamp: int
    payload: bytes


class EncodedClip:
    """The clip's tags as RTMP chunks, one encoding per loop shared by every publisher.

    Loop 0 carries everything (metadata, sequence headers, media); later loops carry only
    media, with timestamps moved forward by the clip's duration per loop, as a continuous
    encoder would send them.
    """

    def __init__(self, tags: list[FlvTag]) -> None:
        if not any(tag.type == TAG_VIDEO for tag in tags):
            raise ValueError("the clip has no video")
        first: list[_Entry] = []
        rest: list[_Entry] = []
        for tag in tags:
            if tag.type not in _CSID:
                continue
            payload = tag.body
            config = False
            if tag.type == TAG_SCRIPT:
                payload = encode_amf0("@setDataFrame") + payload
                config = True
            else:
                try:
                    packet = (parse_video if tag.type == TAG_VIDEO else parse_audio)(tag.body, tag.timestamp)
                except FlvError:
                    packet = None
                if packet is None:
                    continue  # end of sequence: a looping encoder never sends it mid-stream
                config = packet.is_config
            entry = _Entry(_CSID[tag.type], tag.type, tag.timestamp, payload)
            first.append(entry)
            if not config:
                rest.append(entry)
        video_times = [tag.timestamp for tag in tags if tag.type == TAG_VIDEO]
        gaps = sorted(b - a for a, b in itertools.pairwise(video_times) if b > a) or [33]
        frame_gap = gaps[len(gaps) // 2]
        self.duration_ms = max(tag.timestamp for tag in tags) + frame_gap
        self.bitrate_bps = sum(len(e.payload) for e in rest) * 8 / (self.duration_ms / 1000)
        self._first = first
        self._rest = rest
        self.first_offsets = self._offsets(first)
        self.rest_offsets = self._offsets(rest)
        self._cache: dict[int, list[bytes]] = {}

    @staticmethod
    def _offsets(entries: list[_Entry]) -> list[float]:
        """Send times in seconds from the loop's start, never decreasing."""
        offsets: list[float] = []
        latest = 0
        for entry in entries:
            latest = max(latest, entry.timestamp)
            offsets.append(latest / 1000)
        return offsets

    def loop(self, index: int) -> list[bytes]:
        """The chunks of loop `index` (made on first use, the older ones forgotten)."""
        cached = self._cache.get(index)
        if cached is not None:
            return cached
        shift = index * self.duration_ms
        entries = self._first if index == 0 else self._rest
        encoded = [
            encode_message(e.csid, e.type_id, MEDIA_STREAM_ID, e.timestamp + shift, e.payload, CHUNK_SIZE)
            for e in entries
        ]
        self._cache[index] = encoded
        for old in [k for k in self._cache if k < index - 1]:
            del self._cache[old]
        return encoded

    def offsets(self, index: int) -> list[float]:
        return self.first_offsets if index == 0 else self.rest_offsets


# --------------------------------------------------------------------------- load


class Publisher:
    def __init__(self, index: int, clip: EncodedClip) -> None:
        self.index = index
        self.name = f"bench{index}"
        self.clip = clip
        self.client = RtmpClient(on_close=self._on_close)
        self.live = False
        self.error: str | None = None
        self.disconnected = False
        self.stopping = False
        self.max_backlog = 0
        self._loop_index = 0
        self._chunks: list[bytes] = []
        self._offsets: list[float] = []
        self._base = 0.0
        self.t0 = 0.0
        self._pos = 0

    def _on_close(self, exc: Exception | None) -> None:
        if self.live and not self.stopping:
            self.disconnected = True
            self.error = f"disconnected: {exc}" if exc else "disconnected by the server"
        self.live = False

    async def start(self, host: str, port: int, pacer: Pacer) -> bool:
        """Connect and publish; once live, the pacer sends the clip."""
        try:
            await self.client.connect(host, port, APP)
            self.client.set_chunk_size(CHUNK_SIZE)
            await self.client.publish(self.name)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self.client.abort()
            return False
        loop = asyncio.get_running_loop()
        self.t0 = loop.time()
        self._enter_loop(0)
        self.live = not self.client.closed
        if self.live:
            pacer.add(self)
        return self.live

    def _enter_loop(self, index: int) -> None:
        self._loop_index = index
        self._chunks = self.clip.loop(index)
        self._offsets = self.clip.offsets(index)
        self._base = self.t0 + index * self.clip.duration_ms / 1000
        self._pos = 0

    def next_due(self) -> float:
        return self._base + self._offsets[self._pos]

    def send(self, horizon: float, now: float) -> float:
        """Send every message due by `horizon` in one write; return how late the first was (s)."""
        lateness = now - self.next_due()
        parts: list[bytes] = []
        while True:
            parts.append(self._chunks[self._pos])
            self._pos += 1
            if self._pos == len(self._chunks):
                self._enter_loop(self._loop_index + 1)
            if self.next_due() > horizon:
                break
        self.client.write_raw(parts[0] if len(parts) == 1 else b"".join(parts))
        backlog = self.client.write_buffer_size
        if backlog > self.max_backlog:
            self.max_backlog = backlog
        return lateness


class Window:
    """Samples taken only while the measurement window is open."""

    def __init__(self) -> None:
        self.active = False
        # How late the publishers sent each batch (ms): the load generator's own pacing.
        self.lateness_ms = array.array("f")
        # Player receive time minus the time the publisher was due to send that video message.
        self.latency_ms = array.array("f")


class Pacer:
    """One timer for all publishers: a heap ordered by when each one's next message is due."""

    def __init__(self, window: Window) -> None:
        self._heap: list[tuple[float, int, Publisher]] = []
        self._stopped = False
        self.window = window

    def add(self, publisher: Publisher) -> None:
        heapq.heappush(self._heap, (publisher.next_due(), publisher.index, publisher))

    def stop(self) -> None:
        self._stopped = True

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        heap = self._heap
        while not self._stopped:
            now = loop.time()
            horizon = now + 0.001
            while heap and heap[0][0] <= horizon:
                _, index, publisher = heapq.heappop(heap)
                if not publisher.live:
                    continue
                try:
                    lateness = publisher.send(horizon, now)
                except Exception as exc:  # the connection went away under us
                    publisher.error = publisher.error or f"send failed: {exc}"
                    publisher.live = False
                    continue
                if self.window.active:
                    self.window.lateness_ms.append(lateness * 1000)
                heapq.heappush(heap, (publisher.next_due(), index, publisher))
            delay = heap[0][0] - loop.time() if heap else 0.05
            await asyncio.sleep(min(max(delay, 0.0), 0.05))


class Player:
    def __init__(self, publisher: Publisher, index: int, window: Window) -> None:
        self.publisher = publisher
        self.index = index
        self.window = window
        self.client = RtmpClient(self._on_message, on_close=self._on_close)
        self.first_keyframe_ms: float | None = None
        self.playing = False
        self.error: str | None = None
        self.stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def _on_message(self, message: Message) -> None:
        if message.type_id != chunk.VIDEO or self.first_keyframe_ms is not None:
            return
        try:
            packet = parse_video(message.payload, message.timestamp)
        except FlvError:
            return
        if packet is not None and packet.keyframe and not packet.is_config:
            sent = self.client.play_sent_at
            if sent is not None and self._loop is not None:
                self.first_keyframe_ms = (self._loop.time() - sent) * 1000
            # From here on the player reads and discards, timing video messages in the window.
            self.client.on_message = self._on_media

    def _on_media(self, message: Message) -> None:
        if message.type_id == chunk.VIDEO and self.window.active and self._loop is not None:
            due = self.publisher.t0 + message.timestamp / 1000
            self.window.latency_ms.append((self._loop.time() - due) * 1000)

    def _on_close(self, exc: Exception | None) -> None:
        if self.playing and not self.stopping:
            self.error = f"disconnected: {exc}" if exc else "disconnected by the server"
        self.playing = False

    async def start(self, host: str, port: int) -> bool:
        self._loop = asyncio.get_running_loop()
        try:
            await self.client.connect(host, port, APP)
            await self.client.play(self.publisher.name)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self.client.abort()
            return False
        self.playing = not self.client.closed
        return self.playing


# --------------------------------------------------------------------------- one run


@dataclass
class RunResult:
    target: str
    publishers: int
    players_per_stream: int
    server_cpu_pct: float = 0.0
    cpu_pct_per_stream: float = 0.0
    rss_mb: float = 0.0
    rss_mb_per_stream: float = 0.0
    rss_idle_mb: float = 0.0
    first_keyframe_p50_ms: float | None = None
    first_keyframe_p99_ms: float | None = None
    first_keyframe_max_ms: float | None = None
    first_keyframe_ms_by_join: list[float | None] = field(default_factory=list)
    players_with_keyframe: int = 0
    players_total: int = 0
    publishers_connected_at_end: int = 0
    publisher_errors: int = 0
    player_errors: int = 0
    drops: int | None = None
    drops_by_reason: dict[str, int] = field(default_factory=dict)
    in_mbps: float = 0.0
    out_mbps: float = 0.0
    loadgen_cpu_pct: float = 0.0
    # Everything else the machine did during the window (other tenants, the kernel's softirqs
    # not charged to a process): a noise indicator.
    other_cpu_pct: float = 0.0
    delivery_latency_p50_ms: float = 0.0
    delivery_latency_p99_ms: float = 0.0
    delivery_latency_max_ms: float = 0.0
    send_lateness_p50_ms: float = 0.0
    send_lateness_p99_ms: float = 0.0
    send_lateness_max_ms: float = 0.0
    publisher_max_backlog_bytes: int = 0
    loadgen_saturated: bool = False
    window_s: float = 0.0
    server_processes: int = 0
    hls_segments: int | None = None
    # From our server's /metrics over the window: event-loop lag, GC, HLS memory.
    server_metrics: dict[str, float] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    server_log_problems: list[str] = field(default_factory=list)


def server_figures(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What our server says about itself over the window."""

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    figures: dict[str, float] = {}
    if "mediaserver_event_loop_lag_max_seconds" in after:
        figures["event_loop_lag_max_ms"] = round(after["mediaserver_event_loop_lag_max_seconds"] * 1000, 1)
        samples = delta("mediaserver_event_loop_lag_samples_total")
        if samples > 0:
            mean = delta("mediaserver_event_loop_oversleep_seconds_total") / samples
            figures["event_loop_lag_mean_ms"] = round(mean * 1000, 2)
    for generation in range(3):
        key = f'python_gc_collections_total{{generation="{generation}"}}'
        if key in after:
            figures[f"gc_gen{generation}_collections"] = delta(key)
    hls = sum(v for k, v in after.items() if k.startswith("mediaserver_hls_memory_bytes"))
    if hls:
        figures["hls_memory_mb"] = round(hls / 1e6, 1)
    return figures


def percentile(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_target(target: str, args: argparse.Namespace, clip: EncodedClip) -> RunResult:
    n, m = args.publishers, args.players
    result = RunResult(target, n, m, players_total=n * m)
    server: Server = OurServer(args.keep_temp) if target == "ours" else NginxServer(args.keep_temp)
    loop = asyncio.get_running_loop()
    publishers: list[Publisher] = []
    players: list[Player] = []
    window = Window()
    pacer = Pacer(window)
    pacer_task: asyncio.Task[None] | None = None
    log(f"[{target}] starting the server (temp {server.root})")
    try:
        server.start()  # blocking on purpose: nothing else runs yet, and Ctrl-C waits for it
        result.rss_idle_mb = rss_bytes(server.pids()) / 1e6
        pacer_task = loop.create_task(pacer.run())
        log(f"[{target}] starting {n} publishers, {args.start_interval * 1000:.0f} ms apart")
        starts: list[asyncio.Task[bool]] = []
        for i in range(n):
            publisher = Publisher(i, clip)
            publishers.append(publisher)
            starts.append(loop.create_task(publisher.start("127.0.0.1", server.rtmp_port, pacer)))
            await asyncio.sleep(args.start_interval)
        ok = sum(await asyncio.gather(*starts))
        log(f"[{target}] {ok}/{n} publishers live")
        await asyncio.sleep(args.player_delay)
        # Spread the joins over at least one GOP so that they sample every point of it.
        interval = max(args.player_interval, args.join_spread / max(1, n * m))
        log(f"[{target}] starting {n * m} players, {interval * 1000:.0f} ms apart")
        plays: list[asyncio.Task[bool]] = []
        for j in range(m):
            for publisher in publishers:
                player = Player(publisher, j, window)
                players.append(player)
                plays.append(loop.create_task(player.start("127.0.0.1", server.rtmp_port)))
                await asyncio.sleep(interval)
        ok = sum(await asyncio.gather(*plays))
        log(f"[{target}] {ok}/{n * m} players playing; warm-up {args.warmup} s")
        await asyncio.sleep(args.warmup)

        log(f"[{target}] measuring for {args.duration} s")
        pids = server.pids()
        try:  # also starts a new "worst event-loop lag" period in our server
            metrics0 = await asyncio.to_thread(server.scrape)
        except OSError:
            metrics0 = {}
        ticks0 = cpu_ticks(pids)
        cpu0 = _cpu_seconds()
        busy0 = machine_busy_ticks()
        sent0 = sum(p.client.bytes_sent for p in publishers)
        received0 = sum(p.client.bytes_received for p in players)
        t0 = loop.time()
        window.active = True
        await asyncio.sleep(args.duration)
        window.active = False
        elapsed = loop.time() - t0
        cpu1 = _cpu_seconds()
        pids = server.pids()
        ticks1 = cpu_ticks(pids)
        busy1 = machine_busy_ticks()
        sent1 = sum(p.client.bytes_sent for p in publishers)
        received1 = sum(p.client.bytes_received for p in players)
        rss = rss_bytes(pids)

        result.window_s = round(elapsed, 3)
        result.server_processes = len(pids)
        server_cpu = sum(t - ticks0.get(pid, 0) for pid, t in ticks1.items()) / CLK_TCK / elapsed * 100
        result.server_cpu_pct = round(server_cpu, 2)
        result.cpu_pct_per_stream = round(server_cpu / n, 4)
        result.rss_mb = round(rss / 1e6, 1)
        result.rss_mb_per_stream = round(rss / 1e6 / n, 3)
        result.rss_idle_mb = round(result.rss_idle_mb, 1)
        result.in_mbps = round((sent1 - sent0) * 8 / elapsed / 1e6, 1)
        result.out_mbps = round((received1 - received0) * 8 / elapsed / 1e6, 1)
        result.loadgen_cpu_pct = round((cpu1 - cpu0) / elapsed * 100, 1)
        machine = (busy1 - busy0) / CLK_TCK / elapsed * 100
        result.other_cpu_pct = round(max(0.0, machine - server_cpu - result.loadgen_cpu_pct), 1)
        lateness = list(window.lateness_ms)
        result.send_lateness_p50_ms = round(percentile(lateness, 50) or 0.0, 1)
        result.send_lateness_p99_ms = round(percentile(lateness, 99) or 0.0, 1)
        result.send_lateness_max_ms = round(max(lateness, default=0.0), 1)
        result.publisher_max_backlog_bytes = max((p.max_backlog for p in publishers), default=0)
        result.loadgen_saturated = (
            result.loadgen_cpu_pct >= SATURATED_CPU_PCT or result.send_lateness_p99_ms >= SATURATED_LAG_MS
        )
        latency = list(window.latency_ms)
        result.delivery_latency_p50_ms = round(percentile(latency, 50) or 0.0, 1)
        result.delivery_latency_p99_ms = round(percentile(latency, 99) or 0.0, 1)
        result.delivery_latency_max_ms = round(max(latency, default=0.0), 1)
        result.first_keyframe_ms_by_join = [
            None if p.first_keyframe_ms is None else round(p.first_keyframe_ms, 1) for p in players
        ]
        keyframes = [p.first_keyframe_ms for p in players if p.first_keyframe_ms is not None]
        result.players_with_keyframe = len(keyframes)
        for name, pct in (("p50", 50.0), ("p99", 99.0), ("max", 100.0)):
            value = percentile(keyframes, pct)
            setattr(result, f"first_keyframe_{name}_ms", None if value is None else round(value, 1))
        result.publishers_connected_at_end = sum(1 for p in publishers if p.live and not p.client.closed)
        result.publisher_errors = sum(1 for p in publishers if p.error is not None)
        result.player_errors = sum(1 for p in players if p.error is not None)
        result.error_samples = [f"publisher {p.name}: {p.error}" for p in publishers if p.error is not None][:5]
        result.error_samples += [
            f"player {p.index} of {p.publisher.name}: {p.error}" for p in players if p.error is not None
        ][:5]
        try:
            metrics1 = await asyncio.to_thread(server.scrape)
            result.drops, result.drops_by_reason = await asyncio.to_thread(server.drops)
        except OSError as exc:
            metrics1 = {}
            log(f"[{target}] could not read the server's counters: {exc}")
        if metrics0 and metrics1:
            result.server_metrics = server_figures(metrics0, metrics1)
        if isinstance(server, NginxServer):
            result.hls_segments = server.hls_segments()
        result.server_log_problems = server.log_problems()
        log(f"[{target}] done: server CPU {result.server_cpu_pct}%, generator CPU {result.loadgen_cpu_pct}%")
        return result
    finally:
        pacer.stop()
        for publisher in publishers:
            publisher.stopping = True
            publisher.client.abort()
        for player in players:
            player.stopping = True
            player.client.abort()
        if pacer_task is not None:
            pacer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pacer_task
        await asyncio.sleep(0.2)
        log(f"[{target}] stopping the server")
        server.stop()


# --------------------------------------------------------------------------- report

COLUMNS: list[tuple[str, Callable[[RunResult], str]]] = [
    ("target", lambda r: r.target),
    ("N", lambda r: str(r.publishers)),
    ("M", lambda r: str(r.players_per_stream)),
    ("server CPU %", lambda r: f"{r.server_cpu_pct:.1f}"),
    ("CPU %/stream", lambda r: f"{r.cpu_pct_per_stream:.3f}"),
    ("RSS MB", lambda r: f"{r.rss_mb:.1f}"),
    ("RSS MB/stream", lambda r: f"{r.rss_mb_per_stream:.2f}"),
    ("1st key p50 ms", lambda r: _ms(r.first_keyframe_p50_ms)),
    ("1st key p99 ms", lambda r: _ms(r.first_keyframe_p99_ms)),
    ("pubs up", lambda r: f"{r.publishers_connected_at_end}/{r.publishers}"),
    ("errors pub/play", lambda r: f"{r.publisher_errors}/{r.player_errors}"),
    ("drops", lambda r: "n/a" if r.drops is None else str(r.drops)),
    ("in Mbit/s", lambda r: f"{r.in_mbps:.0f}"),
    ("out Mbit/s", lambda r: f"{r.out_mbps:.0f}"),
    ("latency p99 ms", lambda r: f"{r.delivery_latency_p99_ms:.0f}"),
    ("gen CPU %", lambda r: f"{r.loadgen_cpu_pct:.0f}" + ("!" if r.loadgen_saturated else "")),
    ("send late p99 ms", lambda r: f"{r.send_lateness_p99_ms:.0f}"),
    ("other CPU %", lambda r: f"{r.other_cpu_pct:.0f}"),
]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def format_table(results: list[RunResult]) -> str:
    rows = [[name for name, _ in COLUMNS]] + [[get(r) for _, get in COLUMNS] for r in results]
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("---" for _ in COLUMNS) + "|")
    return "\n".join(lines)


def ratios(results: list[RunResult]) -> dict[str, float] | None:
    ours = next((r for r in results if r.target == "ours"), None)
    nginx = next((r for r in results if r.target == "nginx"), None)
    if ours is None or nginx is None or not nginx.cpu_pct_per_stream or not nginx.rss_mb:
        return None
    return {
        "cpu_per_stream_ours_over_nginx": round(ours.cpu_pct_per_stream / nginx.cpu_pct_per_stream, 2),
        "rss_ours_over_nginx": round(ours.rss_mb / nginx.rss_mb, 2),
    }


# --------------------------------------------------------------------------- main


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return
        except (ValueError, OSError):
            needed = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.rtmp_load",
        description="RTMP publish/play load against our server and/or nginx-rtmp, one after the other.",
    )
    parser.add_argument("--target", choices=("ours", "nginx", "both"), default="ours")
    parser.add_argument("--publishers", "-n", type=int, default=10, help="streams, one publisher each")
    parser.add_argument("--players", "-m", type=int, default=1, help="RTMP players per stream")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds after the last player starts")
    parser.add_argument("--duration", type=float, default=12.0, help="measurement window, seconds")
    parser.add_argument("--clip", type=Path, default=None, help="FLV clip (default: the reference clip, made once)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--start-interval", type=float, default=0.02, help="seconds between publisher starts")
    parser.add_argument("--player-interval", type=float, default=0.01, help="seconds between player starts")
    parser.add_argument(
        "--join-spread", type=float, default=2.0, help="spread the player joins over at least this many seconds"
    )
    parser.add_argument("--player-delay", type=float, default=1.0, help="seconds between the publishers and players")
    parser.add_argument("--keep-temp", action="store_true", help="keep the servers' temp dirs (logs, HLS)")
    args = parser.parse_args(argv)
    if args.publishers < 1 or args.players < 0 or args.duration <= 0 or args.warmup < 0:
        parser.error("need --publishers >= 1, --players >= 0, --duration > 0, --warmup >= 0")
    return args


async def run_targets(
    args: argparse.Namespace, run_one: Callable[[str, argparse.Namespace, EncodedClip], Awaitable[T]]
) -> list[T]:
    """Load the clip, then run `run_one` for each target of `--target`, one after the other."""
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    if main_task is not None:
        loop.add_signal_handler(signal.SIGTERM, main_task.cancel)
    clip_path = args.clip if args.clip is not None else await asyncio.to_thread(ensure_clip)
    clip = EncodedClip(read_flv(clip_path))
    log(f"clip {clip_path}: {clip.duration_ms / 1000:.2f} s, {clip.bitrate_bps / 1e6:.2f} Mbit/s")
    targets = ["ours", "nginx"] if args.target == "both" else [args.target]
    results: list[T] = []
    for index, target in enumerate(targets):
        if index:
            await asyncio.sleep(2.0)  # let the previous run's sockets and processes go
        results.append(await run_one(target, args, clip))
    return results


def write_report(
    path: Path, args: argparse.Namespace, started: float, results: Sequence[Any], ratio: dict[str, float] | None
) -> None:
    """The run as JSON: when, where, the options, and every figure of every target."""
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "wall_seconds": round(time.monotonic() - started, 1),
        "results": [asdict(r) for r in results],
        "ratio": ratio,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def run_interruptible(main: Coroutine[Any, Any, list[T]]) -> list[T] | None:
    """Run the tool's main coroutine on uvloop when available; None when interrupted (all stopped)."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    except ImportError:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        try:
            return runner.run(main)
        except (KeyboardInterrupt, asyncio.CancelledError):
            log("interrupted; everything started was stopped")
            return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_fd_limit(2 * (args.publishers * (1 + args.players)) + 512)
    started = time.monotonic()
    results = run_interruptible(run_targets(args, run_target))
    if results is None:
        return 130
    print()
    print(format_table(results))
    ratio = ratios(results)
    if ratio is not None:
        print()
        print(
            f"ours/nginx: CPU per stream {ratio['cpu_per_stream_ours_over_nginx']:.2f}x, "
            f"RSS {ratio['rss_ours_over_nginx']:.2f}x"
        )
    for result in results:
        if result.loadgen_saturated:
            print(
                f"\nWARNING [{result.target}]: the load generator is saturated (CPU {result.loadgen_cpu_pct}%, "
                f"send lateness p99 {result.send_lateness_p99_ms} ms): the figures above measure it, not the server."
            )
        for line in result.error_samples:
            print(f"[{result.target}] {line}")
        for line in result.server_log_problems:
            print(f"[{result.target}] server log: {line}")
    if args.json is not None:
        write_report(args.json, args, started, results, ratio)
    return 0


if __name__ == "__main__":
    sys.exit(main())
