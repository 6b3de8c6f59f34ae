"""The composition root: hub, RTMP(S) listeners, the HTTP application and, unless `api.enabled = false`, the
control plane, built and started together. The only data-plane module that imports `control`."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from pathlib import Path

from aiohttp import web
from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR

from control.plane import ControlPlane
from mediaserver.auth import AllowAll, Authorizer, StaticKeys
from mediaserver.config import Config
from mediaserver.hls.segmenter import HlsSettings
from mediaserver.hls.service import HlsService
from mediaserver.http.access import OpenStats, PlayAccess, StatsGate
from mediaserver.http.app import create_app
from mediaserver.hub import Hub
from mediaserver.looplag import LoopLagMonitor
from mediaserver.metrics import Metrics
from mediaserver.pull.service import PullService
from mediaserver.recording.recorder import LogSink, PatternPolicy, Recorder, RecordingSink, RecordPolicy
from mediaserver.relay.service import RelayService
from mediaserver.rtmp.context import RtmpContext
from mediaserver.rtmp.server import start_rtmp, tls_context
from mediaserver.transcode.service import TranscodeService
from mediaserver.webrtc.service import WebrtcService

log = logging.getLogger("mediaserver")


def make_authorizer(config: Config, control: ControlPlane | None = None) -> Authorizer:
    if config.auth.publish_mode == "database":
        if control is None:
            raise ValueError("publish_mode 'database' needs the control plane (api.enabled)")
        return control.authorizer
    if config.auth.publish_mode == "static":
        return StaticKeys(config.auth.publish_keys, config.auth.play_keys)
    if config.auth.play_keys:
        return StaticKeys([], config.auth.play_keys, open_publish=True)
    return AllowAll()


class MediaServer:
    def __init__(self, config: Config, authorizer: Authorizer | None = None) -> None:
        self.config = config
        self.hub = Hub(
            max_gop_bytes=config.hub.gop_cache_max_bytes,
            idle_timeout=config.rtmp.idle_timeout,
            join_min_video_frames=config.hub.join_min_video_frames,
        )
        self.metrics = Metrics(self.hub)
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.metrics.registry.register(collector)
        # The control plane (store, REST API, database authorizer) unless api.enabled = false.
        self.control = ControlPlane(config, self.hub, registry=self.metrics.registry) if config.api.enabled else None
        self.authorizer = authorizer or make_authorizer(config, self.control)
        self.rtmp_context = RtmpContext(config.rtmp, self.hub, self.authorizer, self.metrics)
        # One play-authorization path for HLS and WHEP (RTMP play asks the same authorizer).
        self.play_access = PlayAccess(self.authorizer, self.metrics.registry)
        stats_gate: StatsGate = self.control.stats_gate if self.control is not None else OpenStats()
        self._servers: list[asyncio.Server] = []
        self._runner: web.AppRunner | None = None
        self.hls: HlsService | None = None
        routes = []
        recording = config.recording
        # The segmenter runs for HLS and for the recorder (one muxing pass); its routes only with HLS on.
        if config.hls.enabled or recording.enabled:
            hls = config.hls
            settings = HlsSettings(
                hls.segment_duration,
                hls.part_duration,
                hls.window,
                memory_segments=hls.memory_segments,
                spill=hls.spill,
                spill_dir=hls.spill_dir or str(Path(config.server.data_dir) / "hls"),
            )
            self.hls = HlsService(self.hub, settings, self.metrics.registry, config.hls.grace_seconds, self.play_access)
            if config.hls.enabled:
                routes.extend(self.hls.routes())
        self.recorder: Recorder | None = None
        if recording.enabled and self.hls is not None:
            policy: RecordPolicy = (
                self.control.record_policy if self.control is not None else PatternPolicy(recording.streams)
            )
            sink: RecordingSink = self.control.recording_index if self.control is not None else LogSink()
            self.recorder = Recorder(
                Path(config.recording_root()),
                policy,
                sink,
                self.metrics.registry,
                file_duration=recording.file_duration,
                max_buffer_bytes=recording.max_buffer_bytes,
                sync_interval=recording.sync_interval,
                progress_interval=recording.progress_interval,
                default_app=config.api.publish_app,
                thumbnail_interval=recording.thumbnail_interval,
                thumbnail_width=recording.thumbnail_width,
            )
            self.hls.fragment_listeners.append(self.recorder)
            if self.control is not None:
                self.control.attach_recorder(self.recorder)
            self.hub.listen(self.recorder.on_hub_event)
        self.loop_lag = LoopLagMonitor(self.metrics.registry)
        if self.control is not None:
            self.control.attach_loop_lag(self.loop_lag.recent)
        self.webrtc: WebrtcService | None = None
        if config.webrtc.enabled:
            self.webrtc = WebrtcService(
                self.hub,
                config.webrtc,
                self.metrics.registry,
                self.authorizer,
                self.metrics.traffic,
                self.play_access,
                stats_gate,
            )
            routes.extend(self.webrtc.routes())
        # Cameras that serve their stream (RTSP, RTMP, HTTP-FLV) and wait to be read.
        self.pull = PullService(self.hub, config.pull, self.metrics.registry)
        if self.control is not None:
            self.control.attach_pull(self.pull)
        # Live streams pushed to other RTMP(S) servers ([relay] pushes).
        self.relay = RelayService(self.hub, config.relay, self.metrics.registry)
        # ABR ladders ([transcode]): rungs published as streams of their own, and the master playlist, whose route
        # goes before the HLS ones (their /hls/{app}/{name}/{file} would take it).
        hls_viewers = self.hls.viewer_counts if self.hls is not None else None
        self.transcode = TranscodeService(
            self.hub, config.transcode, self.metrics.registry, self.play_access, hls_viewers
        )
        if config.hls.enabled:
            routes[:0] = self.transcode.routes()
        if self.hls is not None:
            self.hls.renditions = self.transcode.renditions
        self.http_app = create_app(self.hub, self.metrics, routes)
        if self.control is not None:
            self.control.install(self.http_app)

    async def start(self) -> None:
        Path(self.config.server.data_dir).mkdir(parents=True, exist_ok=True)
        if self.control is not None:
            await self.control.start()
        self.hub.start()
        if self.hls is not None:
            self.hls.start()
        if self.recorder is not None:
            self.recorder.start()
        self.loop_lag.start()
        if self.webrtc is not None:
            self.webrtc.start()
        self.pull.start()
        self.relay.start()
        self.transcode.start()
        rtmp = self.config.rtmp
        self._servers.append(await start_rtmp(self.rtmp_context, rtmp.host, rtmp.port))
        rtmps = self.config.rtmps
        if rtmps.enabled:
            tls = tls_context(rtmps.cert_file, rtmps.key_file)
            self._servers.append(await start_rtmp(self.rtmp_context, rtmps.host, rtmps.port, tls))
        self._runner = web.AppRunner(self.http_app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.http.host, self.config.http.port, reuse_address=True)
        await site.start()
        log.info("event=listening protocol=http address=%s:%d", self.config.http.host, self.config.http.port)
        # Everything built so far (modules, codecs, the ORM, the routes) lives as long as the process: out of the
        # collector's sight, so that a full collection scans only what came later (it held the loop for up to
        # 0.3 s with a thousand WebSocket clients).
        gc.freeze()

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        await self.transcode.stop()
        await self.pull.stop()
        await self.relay.stop()
        if self.webrtc is not None:
            await self.webrtc.stop()
        await self.loop_lag.stop()
        await self.hub.stop()
        if self.recorder is not None:
            await self.recorder.stop()
            await asyncio.sleep(0)  # let the writer's last results reach the index
        if self.hls is not None:
            await self.hls.stop()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.control is not None:
            await self.control.stop()

    async def run_forever(self) -> None:
        await self.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("event=shutdown")
        await self.stop()
