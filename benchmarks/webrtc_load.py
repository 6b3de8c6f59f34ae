"""WebRTC (WHEP) load benchmark: one RTMP publisher, N aiortc WHEP viewers on 127.0.0.1.

    python -m benchmarks.webrtc_load --viewers 10,25,50,100 --workers 2 --warmup 4 --duration 10

The tool starts the server (`python -m mediaserver serve` on free loopback ports, ICE host candidates on
127.0.0.1), publishes the reference clip over RTMP at real-time pace from this process, and adds viewers
level by level (10, then 25, ... in total), measuring each level over a window. Viewers run in `--workers`
separate processes (this machine's cores are shared by the server and the load generator: the viewers'
own CPU, and everything else the machine ran, are reported so a saturated machine shows). The first
`--full-viewers` viewers are complete aiortc receivers; the others are "light": same ICE, DTLS, RTCP and
consent as a full one, so the server does the same work for them, but they count the SRTP packets instead
of decrypting them (half the load-generator CPU per viewer).

Measured per level, over the window:
- server CPU: utime+stime of the server process tree from /proc, % of one core; per viewer: the increase
  over the level with 0 viewers (publisher only), divided by the viewers;
- set-up time: from the WHEP POST to the first complete video frame received by that viewer (the viewers
  that joined at this level);
- the server's event-loop lag: `mediaserver_event_loop_lag_max_seconds` scraped every second (worst
  oversleep of a 100 ms sleep since the previous scrape), and the mean oversleep over the window;
- delivery latency: every video frame the publisher sends carries its send time (wall clock) in an SEI NAL
  unit (user data unregistered) inserted into the AVCC payload; the server forwards it untouched; each viewer
  takes the encoded frame as soon as aiortc has re-assembled it (its decoder queue is tapped, nothing is
  decoded); the time is taken when the frame's last RTP packet (marker bit) arrives, now - send time. This
  is publisher-send to viewer-receive latency (RTMP in, hub, RTP packetising, SRTP, UDP, SRTP), on one
  machine and one clock. It leaves out
  the camera's encoder and the player's jitter buffer, decoder and display, which depend on the client, not
  the server; the browser test prints the receive-to-display time Chromium adds (20-100 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.clip import ensure_clip
from benchmarks.flvfile import TAG_AUDIO, TAG_VIDEO, read_flv
from benchmarks.rtmp_load import cpu_ticks, free_port, machine_busy_ticks, process_tree, rss_bytes
from mediaserver.formats.flv import parse_audio, parse_video
from mediaserver.rtmp.client import RtmpClient

CLK_TCK = os.sysconf("SC_CLK_TCK")
APP, STREAM = "live", "webrtc-bench"
CHUNK_SIZE = 4096
# SEI user_data_unregistered: our UUID (no zero bytes, so no emulation prevention is needed), then the
# send time in microseconds as 16 ASCII digits.
SEI_UUID = bytes.fromhex("5745425254432d42454e43482d544d53")
SEI_PAYLOAD = len(SEI_UUID) + 16


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sei_nal(sent_us: int) -> bytes:
    return bytes((0x06, 0x05, SEI_PAYLOAD)) + SEI_UUID + b"%016d" % sent_us + b"\x80"


def sei_time(annexb: bytes) -> float | None:
    """The send time (s) carried by our SEI in an Annex-B access unit, if any."""
    at = annexb.find(SEI_UUID)
    if at < 0:
        return None
    digits = annexb[at + len(SEI_UUID) : at + len(SEI_UUID) + 16]
    return int(digits) / 1e6 if digits.isdigit() else None


def percentile(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


# --------------------------------------------------------------------------- server


class Server:
    def __init__(self, keep_temp: bool, max_sessions: int, log_level: str = "warning") -> None:
        self.root = Path(tempfile.mkdtemp(prefix="webrtc-bench-"))
        self.keep_temp = keep_temp
        self.rtmp_port = free_port()
        self.http_port = free_port()
        self.log_path = self.root / "server.log"
        self.max_sessions = max_sessions
        self.log_level = log_level
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def start(self) -> None:
        env = dict(os.environ)
        env.update(
            {
                "MEDIASERVER_RTMP_HOST": "127.0.0.1",
                "MEDIASERVER_RTMP_PORT": str(self.rtmp_port),
                "MEDIASERVER_HTTP_HOST": "127.0.0.1",
                "MEDIASERVER_HTTP_PORT": str(self.http_port),
                "MEDIASERVER_SERVER_DATA_DIR": str(self.root / "data"),
                "MEDIASERVER_SERVER_LOG_LEVEL": self.log_level,
                "MEDIASERVER_AUTH_PUBLISH_MODE": "open",
                "MEDIASERVER_WEBRTC_HOST_ADDRESSES": "127.0.0.1",
                "MEDIASERVER_WEBRTC_MAX_SESSIONS": str(self.max_sessions),
                "MEDIASERVER_WEBRTC_SESSION_TIMEOUT": "20",
            }
        )
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mediaserver", "serve"],
                env=env,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log_path.read_text(errors='replace')[-3000:]}")
            with contextlib.suppress(OSError):
                urllib.request.urlopen(self.url("/healthz"), timeout=2).close()
                return
            time.sleep(0.1)
        raise RuntimeError("server did not start")

    def pids(self) -> list[int]:
        assert self.process is not None
        return process_tree(self.process.pid)

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url("/metrics"), timeout=5) as response:
            return str(response.read().decode())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not self.keep_temp:
            shutil.rmtree(self.root, ignore_errors=True)


def metric_value(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


# --------------------------------------------------------------------------- publisher


class Publisher:
    """Replays the clip's audio/video tags over RTMP at real-time pace, looping, SEI send times in video."""

    def __init__(self, clip: Path) -> None:
        tags = [t for t in read_flv(clip) if t.type in (TAG_AUDIO, TAG_VIDEO)]
        self.config: list[tuple[int, bytes]] = []
        self.media: list[tuple[int, int, bytes, bool]] = []  # (type, timestamp, body, is_avc_frame)
        for tag in tags:
            packet = (parse_video if tag.type == TAG_VIDEO else parse_audio)(tag.body, tag.timestamp)
            if packet is None:
                continue
            if packet.is_config:
                self.config.append((tag.type, tag.body))
            else:
                self.media.append((tag.type, tag.timestamp, tag.body, tag.type == TAG_VIDEO and packet.offset == 5))
        self.duration_ms = self.media[-1][1] + 33
        self.client = RtmpClient()
        self.sent_frames = 0
        self.max_late = 0.0
        self._task: asyncio.Task[None] | None = None

    async def start(self, port: int) -> None:
        await self.client.connect("127.0.0.1", port, APP)
        self.client.set_chunk_size(CHUNK_SIZE)
        await self.client.publish(STREAM)
        for type_id, body in self.config:
            self.client.write_message(type_id, 0, body)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        loops = 0
        while True:
            base = loops * self.duration_ms
            for type_id, timestamp, body, avc in self.media:
                due = start + (base + timestamp) / 1000
                delay = due - loop.time()
                if delay > 0.001:
                    await asyncio.sleep(delay)
                else:
                    self.max_late = max(self.max_late, -delay)
                if avc:
                    sei = sei_nal(int(time.time() * 1e6))
                    body = body[:5] + len(sei).to_bytes(4, "big") + sei + body[5:]
                    self.sent_frames += 1
                self.client.write_message(type_id, base + timestamp, body)
            loops += 1

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.client.close()


# --------------------------------------------------------------------------- viewers (worker processes)


@dataclass
class ViewerState:
    posted: float
    light: bool = False
    first_frame: float | None = None  # full viewers: first complete video frame; light ones: first RTP packet
    frames: int = 0  # full viewers: video frames; light ones: RTP packets (audio and video)
    failed: str | None = None
    pc: Any = None


class SkippingSrtp:
    """A light viewer's SRTP receive side: counts RTP packets and drops them undecrypted.

    The server does the same work for every viewer; a light viewer costs the load generator about half as
    much as a full one (no decryption, RTP parsing, jitter buffer), so one 2-core machine can hold more.
    RTCP is still decrypted (the server's sender reports), and ICE consent keeps running.
    """

    def __init__(self, real: Any, state: ViewerState) -> None:
        self._real = real
        self._state = state

    def unprotect(self, data: bytes) -> bytes:
        import pylibsrtp

        state = self._state
        state.frames += 1
        if state.first_frame is None:
            state.first_frame = time.monotonic()
        raise pylibsrtp.Error("not decrypted (light viewer)")

    def unprotect_rtcp(self, data: bytes) -> bytes:
        result: bytes = self._real.unprotect_rtcp(data)
        return result


async def worker_main() -> None:
    """Viewers of one worker process, driven by JSON lines on stdin; answers on stdout."""
    import aiohttp
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from mediaserver.webrtc.ice import HostCandidates
    from mediaserver.webrtc.ingest import tap_receiver

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    viewers: list[ViewerState] = []
    latencies: list[float] = []
    loopback = HostCandidates(["127.0.0.1"])
    http = aiohttp.ClientSession()

    def reply(data: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(data) + "\n")
        sys.stdout.flush()

    async def add_viewer(url: str, light: bool) -> ViewerState:
        state = ViewerState(time.monotonic(), light)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        state.pc = pc
        video = pc.addTransceiver("video", direction="recvonly")
        audio = pc.addTransceiver("audio", direction="recvonly")
        if light:

            @pc.on("connectionstatechange")
            def skip_srtp() -> None:
                dtls = video.receiver.transport
                if pc.connectionState == "connected" and not isinstance(dtls._rx_srtp, SkippingSrtp):
                    dtls._rx_srtp = SkippingSrtp(dtls._rx_srtp, state)

        def on_video(codec: Any, frame: Any) -> None:
            if state.first_frame is None:
                state.first_frame = time.monotonic()
            state.frames += 1

        # aiortc's jitter buffer hands a frame over only when the next one starts (one frame interval
        # later): time the frames at the RTP level instead, from the packet carrying our SEI (the first of
        # the frame) to the one with the marker bit (the last).
        pending: dict[int, float] = {}
        handle_rtp = video.receiver._handle_rtp_packet

        async def timed_rtp(packet: Any, arrival_time_ms: int) -> None:
            if SEI_UUID in packet.payload:
                sent = sei_time(packet.payload)
                if sent is not None:
                    pending[packet.timestamp] = sent
            if packet.marker:
                sent = pending.pop(packet.timestamp, None)
                if sent is not None:
                    latencies.append(time.time() - sent)
                if len(pending) > 100:
                    pending.clear()
            await handle_rtp(packet, arrival_time_ms=arrival_time_ms)

        video.receiver._handle_rtp_packet = timed_rtp
        tap_receiver(video.receiver, on_video)
        tap_receiver(audio.receiver, lambda codec, frame: None)
        offer = await pc.createOffer()
        await loopback.prepare(pc)
        await pc.setLocalDescription(offer)
        state.posted = time.monotonic()
        try:
            async with http.post(
                url, data=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"}
            ) as response:
                body = await response.text()
                if response.status != 201:
                    state.failed = f"HTTP {response.status}: {body[:200]}"
                    return state
            await pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
        except Exception as exc:
            state.failed = f"{type(exc).__name__}: {exc}"
        return state

    while True:
        line = await reader.readline()
        if not line:
            break
        command = json.loads(line)
        if command["cmd"] == "add":
            added = []
            for index in range(command["count"]):
                added.append(await add_viewer(command["url"], light=index >= command.get("full", command["count"])))
                await asyncio.sleep(command.get("interval", 0.05))
            viewers.extend(added)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and any(v.first_frame is None and v.failed is None for v in added):
                await asyncio.sleep(0.05)
            reply(
                {
                    "setup": [v.first_frame - v.posted for v in added if v.first_frame is not None and not v.light],
                    "setup_light": [v.first_frame - v.posted for v in added if v.first_frame is not None and v.light],
                    "failed": [v.failed or "no media in 15 s" for v in added if v.first_frame is None],
                }
            )
        elif command["cmd"] == "reset":
            latencies.clear()
            for viewer in viewers:
                viewer.frames = 0
            reply({"ok": True})
        elif command["cmd"] == "report":
            reply(
                {
                    "latency": latencies[:],
                    "frames": sum(v.frames for v in viewers if not v.light),
                    "full": sum(1 for v in viewers if not v.light),
                    "viewers": len(viewers),
                    "receiving": sum(1 for v in viewers if v.frames > 0),
                }
            )
        elif command["cmd"] == "quit":
            break
    for viewer in viewers:
        if viewer.pc is not None:
            with contextlib.suppress(Exception):
                await viewer.pc.close()
    await http.close()


class Worker:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.webrtc_load", "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        self.count = 0

    def call(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("a viewer worker died")
        result: dict[str, Any] = json.loads(line)
        return result

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(Exception):
                self.call({"cmd": "quit"})
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# --------------------------------------------------------------------------- measurement


@dataclass
class Level:
    viewers: int
    receiving: int = 0
    server_cpu_pct: float = 0.0
    cpu_per_viewer_pct: float | None = None
    viewers_cpu_pct: float = 0.0
    # Everything else on the machine (other users' work included), % of one core: a noisy machine shows here.
    others_cpu_pct: float = 0.0
    server_rss_mb: float = 0.0
    setup_ms_p50: float | None = None
    setup_ms_p95: float | None = None
    setup_ms_max: float | None = None
    # Light viewers: POST to the first RTP packet.
    first_packet_ms_p50: float | None = None
    failed: list[str] = field(default_factory=list)
    loop_lag_ms_mean: float | None = None
    loop_lag_ms_p50_of_max: float | None = None
    loop_lag_ms_max: float | None = None
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    latency_ms_p99: float | None = None
    latency_ms_max: float | None = None
    frames_per_viewer_per_s: float | None = None
    publisher_max_late_ms: float = 0.0


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


async def measure(
    server: Server, workers: list[Worker], publisher: Publisher, viewers: int, warmup: float, duration: float
) -> Level:
    level = Level(viewers)
    await asyncio.sleep(warmup)
    await asyncio.to_thread(lambda: [w.call({"cmd": "reset"}) for w in workers])
    server_pids = server.pids()
    worker_pids = [w.process.pid for w in workers]
    me = [os.getpid()]
    before = (cpu_ticks(server_pids), cpu_ticks(worker_pids), time.monotonic(), machine_busy_ticks(), cpu_ticks(me))
    metrics = server.metrics()
    lag_before = (
        metric_value(metrics, "mediaserver_event_loop_oversleep_seconds_total"),
        metric_value(metrics, "mediaserver_event_loop_lag_samples_total"),
    )
    lag_max: list[float] = []
    end = time.monotonic() + duration
    while time.monotonic() < end:
        await asyncio.sleep(1.0)
        lag_max.append(metric_value(server.metrics(), "mediaserver_event_loop_lag_max_seconds"))
    after = (cpu_ticks(server_pids), cpu_ticks(worker_pids), time.monotonic(), machine_busy_ticks(), cpu_ticks(me))
    metrics = server.metrics()
    elapsed = after[2] - before[2]
    server_ticks = sum(after[0].get(p, 0) - before[0].get(p, 0) for p in after[0])
    worker_ticks = sum(after[1].get(p, 0) - before[1].get(p, 0) for p in after[1])
    level.server_cpu_pct = round(server_ticks / CLK_TCK / elapsed * 100, 1)
    level.viewers_cpu_pct = round(worker_ticks / CLK_TCK / elapsed * 100, 1)
    own_ticks = sum(after[4].get(p, 0) - before[4].get(p, 0) for p in after[4])
    others = after[3] - before[3] - server_ticks - worker_ticks - own_ticks
    level.others_cpu_pct = round(max(0, others) / CLK_TCK / elapsed * 100, 1)
    level.server_rss_mb = round(rss_bytes(server.pids()) / 1e6, 1)
    oversleep = metric_value(metrics, "mediaserver_event_loop_oversleep_seconds_total") - lag_before[0]
    samples = metric_value(metrics, "mediaserver_event_loop_lag_samples_total") - lag_before[1]
    level.loop_lag_ms_mean = _ms(oversleep / samples) if samples else None
    level.loop_lag_ms_p50_of_max = _ms(statistics.median(lag_max)) if lag_max else None
    level.loop_lag_ms_max = _ms(max(lag_max)) if lag_max else None
    reports = await asyncio.to_thread(lambda: [w.call({"cmd": "report"}) for w in workers])
    latencies = [x for r in reports for x in r["latency"]]
    level.receiving = sum(r["receiving"] for r in reports)
    level.latency_ms_p50 = _ms(percentile(latencies, 50))
    level.latency_ms_p95 = _ms(percentile(latencies, 95))
    level.latency_ms_p99 = _ms(percentile(latencies, 99))
    level.latency_ms_max = _ms(max(latencies)) if latencies else None
    full = sum(r["full"] for r in reports)
    if full:
        level.frames_per_viewer_per_s = round(sum(r["frames"] for r in reports) / full / elapsed, 1)
    level.publisher_max_late_ms = round(publisher.max_late * 1000, 1)
    publisher.max_late = 0.0
    return level


async def run(args: argparse.Namespace) -> list[Level]:
    targets = sorted({int(v) for v in args.viewers.split(",") if v.strip()})
    clip = ensure_clip(args.clip)
    server = Server(args.keep_temp, max(targets) + 10, args.server_log_level)
    workers: list[Worker] = []
    publisher = Publisher(clip)
    levels: list[Level] = []
    try:
        server.start()
        log(f"server pid {server.process.pid if server.process else '?'} http :{server.http_port}")
        await publisher.start(server.rtmp_port)
        workers = [Worker() for _ in range(args.workers)]
        url = server.url(f"/whep/{APP}/{STREAM}")
        await asyncio.sleep(2.5)  # a GOP in the cache
        baseline = await measure(server, workers, publisher, 0, 0.5, args.duration)
        levels.append(baseline)
        log(f"0 viewers: server {baseline.server_cpu_pct}% cpu")
        current = 0
        full_left = args.full_viewers
        for target in targets:
            setups: list[float] = []
            first_packets: list[float] = []
            failed: list[str] = []
            remaining = target - current
            shares = [
                remaining // len(workers) + (1 if i < remaining % len(workers) else 0) for i in range(len(workers))
            ]
            fulls = []
            for share in shares:
                fulls.append(min(share, (full_left + len(workers) - 1) // len(workers), full_left - sum(fulls)))

            def add(worker: Worker, count: int, full: int) -> dict[str, Any]:
                command = {"cmd": "add", "count": count, "full": full, "url": url, "interval": args.join_interval}
                return worker.call(command)

            results = await asyncio.gather(
                *(asyncio.to_thread(add, w, n, f) for w, n, f in zip(workers, shares, fulls, strict=True) if n)
            )
            full_left -= sum(fulls)
            for result in results:
                setups.extend(result["setup"])
                first_packets.extend(result["setup_light"])
                failed.extend(result["failed"])
            current = target
            level = await measure(server, workers, publisher, target, args.warmup, args.duration)
            level.setup_ms_p50 = _ms(percentile(setups, 50))
            level.setup_ms_p95 = _ms(percentile(setups, 95))
            level.setup_ms_max = _ms(max(setups)) if setups else None
            level.first_packet_ms_p50 = _ms(percentile(first_packets, 50))
            level.failed = failed[:5] + ([f"... {len(failed) - 5} more"] if len(failed) > 5 else [])
            if target:
                level.cpu_per_viewer_pct = round((level.server_cpu_pct - baseline.server_cpu_pct) / target, 3)
            levels.append(level)
            log(
                f"{target} viewers ({level.receiving} receiving): server {level.server_cpu_pct}% cpu "
                f"({level.cpu_per_viewer_pct}%/viewer), viewers {level.viewers_cpu_pct}% cpu, "
                f"others {level.others_cpu_pct}% cpu, "
                f"setup p50 {level.setup_ms_p50} ms, latency p50/p95 {level.latency_ms_p50}/{level.latency_ms_p95} ms, "
                f"loop lag mean/max {level.loop_lag_ms_mean}/{level.loop_lag_ms_max} ms, failed {len(failed)}"
            )
            if len(failed) > target // 2:
                log("more than half of the new viewers failed: stopping here")
                break
    finally:
        for worker in workers:
            worker.stop()
        await publisher.stop()
        server.stop()
    return levels


def table(levels: list[Level]) -> str:
    def show(value: object) -> str:
        return "-" if value is None else str(value)

    header = (
        "| viewers | receiving | server CPU % | CPU %/viewer | viewers' CPU % | others' CPU % | RSS MB "
        "| set-up p50/p95 ms (first frame) | first packet p50 ms | loop lag mean / p50 of 1 s max / max ms "
        "| latency p50/p95/p99 ms | fps/viewer |"
    )
    rows = [header, "|" + "---|" * 12]
    for lv in levels:
        cells = [
            lv.viewers,
            lv.receiving,
            lv.server_cpu_pct,
            show(lv.cpu_per_viewer_pct),
            lv.viewers_cpu_pct,
            lv.others_cpu_pct,
            lv.server_rss_mb,
            f"{show(lv.setup_ms_p50)} / {show(lv.setup_ms_p95)}",
            show(lv.first_packet_ms_p50),
            f"{show(lv.loop_lag_ms_mean)} / {show(lv.loop_lag_ms_p50_of_max)} / {show(lv.loop_lag_ms_max)}",
            f"{show(lv.latency_ms_p50)} / {show(lv.latency_ms_p95)} / {show(lv.latency_ms_p99)}",
            show(lv.frames_per_viewer_per_s),
        ]
        rows.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--viewers", default="10,25,50,100", help="viewer totals to measure, comma-separated")
    parser.add_argument("--workers", type=int, default=2, help="viewer processes")
    parser.add_argument("--warmup", type=float, default=4.0, help="seconds after a level's viewers joined")
    parser.add_argument("--duration", type=float, default=10.0, help="measurement window, seconds")
    parser.add_argument(
        "--full-viewers",
        type=int,
        default=20,
        help="viewers that decrypt and re-assemble frames (latency, set-up, fps); the rest count packets only",
    )
    parser.add_argument("--join-interval", type=float, default=0.05, help="seconds between joins in a worker")
    parser.add_argument("--clip", type=Path, default=None, help="FLV clip (default: the reference clip)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures there")
    parser.add_argument("--keep-temp", action="store_true", help="keep the server's temp dir (its log)")
    parser.add_argument("--server-log-level", default="warning")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        asyncio.run(worker_main())
        return 0
    levels = asyncio.run(run(args))
    print(table(levels))
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "levels": [asdict(lv) for lv in levels],
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
