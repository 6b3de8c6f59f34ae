"""The composition root: hub, RTMP(S) listeners, the HTTP application and, unless `api.enabled = false`, the
control plane, built and started together. The only data-plane module that imports `control`."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
from pathlib import Path

from aiohttp import web
from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR

from control.events.machine import MachineRelay
from control.plane import ControlPlane
from mediaserver.auth import AllowAll, Authorizer, StaticKeys
from mediaserver.cluster.edge import EdgeService, InternalPlayOnly
from mediaserver.cluster.gateway import WorkerGateway
from mediaserver.cluster.link import MachineLink
from mediaserver.cluster.machinehub import MachineHub
from mediaserver.cluster.redis_registry import NodeEntry, NodeLeases, RedisRegistry
from mediaserver.cluster.registry import StreamRegistry
from mediaserver.cluster.role import WorkerRole
from mediaserver.cluster.tokens import ClusterAuthorizer
from mediaserver.config import Config
from mediaserver.hls.segmenter import HlsSettings
from mediaserver.hls.service import HlsService
from mediaserver.http.access import OpenStats, PlayAccess, StatsGate
from mediaserver.http.app import create_app
from mediaserver.http.fastpath import FastFront
from mediaserver.http.handover import HandoverReceiver
from mediaserver.hub import Hub, HubView
from mediaserver.looplag import LoopLagMonitor
from mediaserver.metrics import Metrics
from mediaserver.pull.service import PullService
from mediaserver.recording.recorder import LogSink, PatternPolicy, Recorder, RecordingSink, RecordPolicy
from mediaserver.relay.service import RelayService
from mediaserver.rtmp.context import RtmpContext
from mediaserver.rtmp.server import start_rtmp, start_rtmp_unix, tls_context
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


async def prepare_machine(config: Config) -> None:
    """What the parent of worker processes does once, before any worker takes a stream: the control plane's
    start-up steps (schema, first admin, stale camera status, the recording index against the disk)."""
    Path(config.server.data_dir).mkdir(parents=True, exist_ok=True)
    if not config.api.enabled:
        return
    plane = ControlPlane(config, Hub())
    try:
        await plane.prepare()
    finally:
        await plane.store.close()


def node_entry(config: Config, worker: int) -> NodeEntry:
    """This node and worker as the Redis registry shows them to the other nodes."""
    cluster = config.cluster
    host = socket.gethostname()
    return NodeEntry(
        cluster.node_id or host,
        worker,
        cluster.advertise_rtmp or f"rtmp://{host}:{config.rtmp.port}",
        cluster.advertise_http or f"http://{host}:{config.http.port}",
    )


class MediaServer:
    def __init__(self, config: Config, authorizer: Authorizer | None = None, role: WorkerRole | None = None) -> None:
        """`role`: this process is one worker of a machine (its parent supervises it); None: a lone process."""
        self.config = config
        self.role = role
        self.hub = Hub(
            max_gop_bytes=config.hub.gop_cache_max_bytes,
            idle_timeout=config.rtmp.idle_timeout,
            join_min_video_frames=config.hub.join_min_video_frames,
        )
        self.metrics = Metrics(self.hub)
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.metrics.registry.register(collector)
        # A worker's line to its parent (the machine's stream registry), made before the control plane: a worker's
        # control plane sees the hub through it (a kick reaches the publisher in whichever worker it is).
        self.link = (
            MachineLink(role.parent_socket, role.index, role.rtmp_socket(), role.http_socket())
            if role is not None
            else None
        )
        self.machine_hub = MachineHub(self.hub, self.link) if self.link is not None else None
        hub_view: HubView = self.machine_hub or self.hub
        # The control plane (store, REST API, database authorizer) unless api.enabled = false.
        self.control = ControlPlane(config, hub_view, registry=self.metrics.registry) if config.api.enabled else None
        self.authorizer = authorizer or make_authorizer(config, self.control)
        if config.cluster.secret:
            self.authorizer = ClusterAuthorizer(self.authorizer, config.cluster.secret)
        self.rtmp_context = RtmpContext(config.rtmp, self.hub, self.authorizer, self.metrics)
        # One play-authorization path for HLS and WHEP (RTMP play asks the same authorizer).
        self.play_access = PlayAccess(self.authorizer, self.metrics.registry)
        stats_gate: StatsGate = self.control.stats_gate if self.control is not None else OpenStats()
        self._servers: list[asyncio.Server] = []
        self._stop_requested = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.http_front: FastFront | None = None
        self._handover: HandoverReceiver | None = None
        self._http_server: asyncio.Server | None = None
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
        self.pull = PullService(
            self.hub, config.pull, self.metrics.registry, (role.index, role.count) if role is not None else (0, 1)
        )
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
        self._build_cluster()

    def _build_cluster(self) -> None:
        """Worker processes and nodes: the parent link, the stream registry, edge copies, forwarded requests."""
        config, role = self.config, self.role
        nodes = None
        if config.redis.url and config.cluster.secret:
            entry = node_entry(config, role.index if role is not None else 0)
            nodes = RedisRegistry(
                config.redis.url, config.redis.key_prefix, entry, config.cluster.registry_ttl, self.metrics.registry
            )
        self.registry: StreamRegistry | None = None
        self.edge: EdgeService | None = None
        self.gateway: WorkerGateway | None = None
        if self.link is None and nodes is None:
            return
        if nodes is not None:
            # Every node knows every pulled camera: the one holding a camera's lease reads it.
            self.pull.share_with_nodes(
                NodeLeases(nodes, self.pull.lease_lost), nodes.ttl / 3, config.cluster.pull_handover
            )
        cluster = config.cluster
        self.registry = StreamRegistry(self.hub, self.link, nodes)
        if self.link is not None:
            # Players asking for a stopped on-demand camera in two workers at once: one starts it, the other plays
            # it from there.
            self.pull.claims = self.registry
        self.edge = EdgeService(
            self.hub,
            self.registry,
            cluster.secret,
            cluster.edge_wait,
            cluster.edge_idle,
            config.rtmp.max_message_size,
            self.metrics.registry,
            self.transcode.source_of,
            config.transcode.wait,
        )
        if self.hls is not None:
            self.hls.segments = self.edge.segmented_here
            registry = self.registry
            self.hls.held_elsewhere = lambda app, name: registry.local_owner(f"{app}/{name}") is not None
        self.gateway = WorkerGateway(
            self.hub,
            self.registry,
            self.link,
            cluster.http_mode,
            config.api.publish_app,
            self.metrics.registry,
            self.pull.reader,
            self.transcode.source_of,
        )
        self.http_app.middlewares.append(self.gateway.middleware)
        if self.link is not None and self.control is not None:
            # The dashboard's viewers and bandwidth are the machine's: every worker serves some of them.
            self.control.figures.remote_metrics = self.gateway.other_workers_metrics
            if not config.redis.url:
                self.control.attach_machine_relay(MachineRelay(self.control.events, self.link))

    async def start(self) -> None:
        Path(self.config.server.data_dir).mkdir(parents=True, exist_ok=True)
        role = self.role
        if self.link is not None:
            self.link.on_parent_lost = self._stop_requested.set
            await self.link.start()
        if self.control is not None:
            await self.control.start(prepared=role is not None, machine_jobs=role is None or role.primary)
        self.hub.start()
        if self.registry is not None:
            self.registry.start()
        if self.edge is not None:
            self.edge.start()
        if self.machine_hub is not None:
            self.machine_hub.start()
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
        # Workers share the public ports; the kernel spreads new connections over them.
        shared = role is not None
        self._servers.append(await start_rtmp(self.rtmp_context, rtmp.host, rtmp.port, reuse_port=shared))
        rtmps = self.config.rtmps
        if rtmps.enabled:
            tls = tls_context(rtmps.cert_file, rtmps.key_file)
            self._servers.append(await start_rtmp(self.rtmp_context, rtmps.host, rtmps.port, tls, reuse_port=shared))
        self._runner = web.AppRunner(self.http_app, access_log=None, handle_signals=False)
        await self._runner.setup()
        http = self.config.http
        if http.front and self.hls is not None and self.config.hls.enabled and self._runner.server is not None:
            # HLS hits are answered by the front; every other request, with its connection, by aiohttp.
            self.http_front = FastFront(self.hls, self._runner.server, self.metrics.registry)
            self._http_server = await asyncio.get_running_loop().create_server(
                self.http_front, http.host, http.port, reuse_address=True, reuse_port=shared or None, backlog=1024
            )
        else:
            site = web.TCPSite(self._runner, http.host, http.port, reuse_address=True, reuse_port=shared or None)
            await site.start()
        front = self.http_front is not None
        log.info("event=listening protocol=http address=%s:%d front=%s", http.host, http.port, front)
        if role is not None:
            # The other workers' way in: RTMP plays for edge copies, forwarded HTTP requests.
            internal = RtmpContext(self.config.rtmp, self.hub, InternalPlayOnly(), self.metrics)
            self._servers.append(await start_rtmp_unix(internal, role.rtmp_socket()))
            await web.UnixSite(self._runner, role.http_socket()).start()
            if self.http_front is not None and self.gateway is not None:
                # An HLS player's connection that reached this worker for another's stream goes there whole.
                self.http_front.pass_to = self.gateway.handover_target
                self._handover = HandoverReceiver(role.handover_socket(), self.http_front.adopt)
                self._handover.start()
        # Everything built so far (modules, codecs, the ORM, the routes) lives as long as the process: out of the
        # collector's sight, so that a full collection scans only what came later (it held the loop for up to
        # 0.3 s with a thousand WebSocket clients).
        gc.freeze()

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        if self._http_server is not None:
            self._http_server.close()
        if self.edge is not None:
            await self.edge.stop()
        if self.machine_hub is not None:
            await self.machine_hub.stop()
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
        if self._handover is not None:
            self._handover.close()
        if self.http_front is not None:
            self.http_front.close_connections()
            self.http_front.sender.close()
        if self._runner is not None:
            await self._runner.cleanup()  # closes the connections handed to aiohttp too
            self._runner = None
        if self._http_server is not None:
            await self._http_server.wait_closed()
            self._http_server = None
        if self.gateway is not None:
            await self.gateway.close()
        if self.registry is not None:
            await self.registry.stop()
        if self.control is not None:
            await self.control.stop()
        if self.link is not None:
            await self.link.stop()

    async def run_forever(self) -> None:
        stop = self._stop_requested
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        await stop.wait()
        log.info("event=shutdown")
        await self.stop()
