"""Configuration: one TOML file, every key overridable by `MEDIASERVER_<SECTION>_<KEY>`.

Each section is a dataclass whose defaults are the embedded defaults, so running with no
file at all gives a working server. Unknown keys are errors: a typo must not be ignored.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mediaserver.transcode.ladder import DEFAULT_LADDER, X264_PRESETS, LadderError, parse_ladder


class ConfigError(ValueError):
    pass


@dataclass(slots=True)
class ServerConfig:
    data_dir: str = "./data"
    log_level: str = "info"
    # "text" (key=value) or "json"
    log_format: str = "text"


@dataclass(slots=True)
class RtmpConfig:
    host: str = "0.0.0.0"
    port: int = 1935
    # Chunk size we send with; 4096 is what nginx-rtmp uses and every client accepts.
    out_chunk_size: int = 4096
    max_message_size: int = 8 * 1024 * 1024
    handshake_timeout: float = 10.0
    # A connection that has neither published nor played after this many seconds is closed.
    read_timeout: float = 30.0
    # A publisher that sends no media for this many seconds is dropped (0 disables).
    idle_timeout: float = 10.0
    window_ack_size: int = 2_500_000
    max_connections: int = 10_000
    # Bytes buffered towards a slow player before it skips to the next keyframe.
    player_max_buffer: int = 4 * 1024 * 1024


@dataclass(slots=True)
class RtmpsConfig:
    # The TLS listener starts only when both files are set.
    host: str = "0.0.0.0"
    port: int = 1936
    cert_file: str = ""
    key_file: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file and self.key_file)


@dataclass(slots=True)
class HttpConfig:
    host: str = "0.0.0.0"
    port: int = 8080
    # HLS reloads, parts and segments held in memory are answered by a lean front before aiohttp (a tenth of
    # its cost per request); false sends every request through aiohttp.
    front: bool = True


@dataclass(slots=True)
class HubConfig:
    # Bound on the cached keyframe group per stream.
    gop_cache_max_bytes: int = 32 * 1024 * 1024
    # A new RTMP player's burst holds at least this many video frames (from the keyframe before if needed).
    join_min_video_frames: int = 45


@dataclass(slots=True)
class HlsConfig:
    enabled: bool = True
    # Segments are cut on the first keyframe at or after this many seconds.
    segment_duration: float = 2.0
    # LL-HLS part target, in seconds.
    part_duration: float = 0.333
    # Complete segments kept in the live playlist.
    window: int = 6
    # Seconds an ended stream's playlist stays available (a reconnecting publisher continues it).
    grace_seconds: float = 30.0
    # Complete segments older than the newest `memory_segments` are written to anonymous files in `spill_dir`
    # (empty: <data_dir>/hls) and read back when asked for; LL-HLS parts of the open segment stay in memory.
    spill: bool = True
    spill_dir: str = ""
    memory_segments: int = 0


@dataclass(slots=True)
class SnapshotConfig:
    # JPEG stills of live cameras (GET /api/v1/cameras/{id}/snapshot.jpg), made from the cached keyframe on request.
    # Widest picture in pixels, aspect kept (0: the stream's own size).
    max_width: int = 640
    # Seconds a stream's picture is reused (and may be cached by the client); 0: a new one for every request.
    cache_seconds: float = 5.0
    # JPEG quantiser, ffmpeg's -q:v: 2 (best, largest) .. 31 (smallest).
    quality: int = 5
    # Threads that decode and encode snapshots.
    workers: int = 2


@dataclass(slots=True)
class AuthConfig:
    # "open": anyone may publish; "static": the stream name (or its ?key= parameter) must be in publish_keys;
    # "database": the stream key must belong to an enabled camera of the control plane.
    publish_mode: str = "database"
    publish_keys: list[str] = field(default_factory=list)
    # When non-empty, players must present one of these as the stream's ?key= parameter.
    play_keys: list[str] = field(default_factory=list)


@dataclass(slots=True)
class DatabaseConfig:
    # Empty: the embedded SQLite file <data_dir>/mediaserver.db. Otherwise an SQLAlchemy URL such as
    # mysql+asyncmy://user:password@host:3306/mediaserver (MySQL/MariaDB).
    url: str = ""
    pool_size: int = 10
    max_overflow: int = 20
    # Seconds after which a pooled connection is replaced (keep below the server's wait_timeout).
    pool_recycle: int = 3600
    # SQLite: short reads (API pages, look-ups) run on the event loop for at most this long, then move to a
    # connection thread; 0 sends every read to a thread.
    inline_read_budget_ms: float = 2.0
    # Apply migrations on `serve` for a non-embedded database (the embedded SQLite always migrates).
    auto_migrate: bool = False


@dataclass(slots=True)
class AuthApiConfig:
    # HS256 (shared secret) or RS256/ES256 (key pair files).
    jwt_algorithm: str = "HS256"
    # HS256 secret. Empty on the embedded database: generated once into <data_dir>/jwt_secret (mode 0600).
    jwt_secret: str = ""
    jwt_private_key_file: str = ""
    jwt_public_key_file: str = ""
    jwt_issuer: str = "mediaserver"
    access_token_ttl: int = 900
    refresh_token_ttl: int = 1209600
    # Lifetime of the signed play tokens in playback URLs.
    play_token_ttl: int = 300
    # argon2id cost parameters for password hashes.
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    argon2_parallelism: int = 4
    min_password_length: int = 10


@dataclass(slots=True)
class RedisConfig:
    # Empty: rate limits are kept in process. Otherwise e.g. redis://127.0.0.1:6379/0.
    url: str = ""
    key_prefix: str = "mediaserver:"


@dataclass(slots=True)
class ApiConfig:
    # The control plane: REST API under /api/v1 backed by the database.
    enabled: bool = True
    # Base URL put in playback links (e.g. https://media.example.com); empty: taken from the request.
    public_url: str = ""
    # Host put in RTMP publish URLs; empty: the host of the request (or 127.0.0.1 for the CLI).
    rtmp_public_host: str = ""
    # RTMP application that cameras publish to.
    publish_app: str = "live"
    max_body_bytes: int = 1048576
    # Origins allowed to call the API from a browser ("*" for any); empty: no CORS headers.
    cors_origins: list[str] = field(default_factory=list)
    # Requests per rate_window seconds.
    login_rate_per_ip: int = 20
    login_rate_per_username: int = 10
    rate_per_token: int = 1200
    rate_window: float = 60.0
    # Seconds a stream key lookup stays cached by the publish authorizer (changes made here invalidate at once).
    authorizer_cache_ttl: float = 30.0
    # Seconds who a token belongs to (user, role, session not signed out) is remembered instead of read per
    # request. Changes made through this node apply at once; changes made on another node or with the CLI
    # within this time. 0: read the database on every request.
    auth_cache_ttl: float = 1.0


@dataclass(slots=True)
class WebrtcConfig:
    # WHEP playback (/whep/<app>/<stream>), WHIP ingest (/whip/<app>/<stream>) and the player at /webrtc/<app>/<stream>.
    enabled: bool = True
    # Addresses to offer as ICE host candidates (and bind on); empty: every interface address aioice finds
    # (it leaves 127.0.0.1 out, so a loopback set-up must list it).
    host_addresses: list[str] = field(default_factory=list)
    # UDP ports for ICE host candidates, one per session (0/0: ephemeral ports).
    udp_port_min: int = 0
    udp_port_max: int = 0
    # STUN/TURN URLs (stun:host:port, turn:host:port?transport=udp|tcp, turns:host:port?transport=tcp).
    ice_servers: list[str] = field(default_factory=list)
    turn_username: str = ""
    turn_credential: str = ""
    # WHEP and WHIP sessions together; more are refused with 503.
    max_sessions: int = 200
    # Seconds a session may stay unconnected, disconnected, silent or without its stream before it is closed.
    session_timeout: float = 10.0
    # Seconds between keyframe requests (PLI) sent to WHIP publishers (0: only when frames are lost).
    whip_keyframe_interval: float = 2.0
    # Opus bitrate of the AAC -> Opus transcoder (WHEP) and AAC bitrate of the Opus -> AAC one (WHIP), bit/s.
    opus_bitrate: int = 64000
    aac_bitrate: int = 128000


@dataclass(slots=True)
class PullConfig:
    # Streams read from cameras or servers that serve them: "app/name=rtsp://user:pass@camera/stream1".
    sources: list[str] = field(default_factory=list)
    # RTSP over "tcp" (interleaved, through NAT and firewalls) or "udp".
    rtsp_transport: str = "tcp"
    # Seconds a connect or a read may take before the session is closed and opened again.
    timeout: float = 5.0
    # Back-off between sessions: from reconnect_min doubling up to reconnect_max seconds (with jitter).
    reconnect_min: float = 1.0
    reconnect_max: float = 30.0
    # Sources on loopback addresses are refused unless this is on (a camera URL must not reach the server's
    # own services); link-local (cloud metadata) and unspecified addresses are always refused.
    allow_loopback: bool = False
    # Sources pulled only while someone watches: "app/name" patterns (fnmatch), e.g. ["live/*"]. The first
    # player starts the source and waits up to on_demand_wait seconds for it; the source stops after
    # on_demand_idle seconds without players.
    on_demand: list[str] = field(default_factory=list)
    on_demand_wait: float = 10.0
    on_demand_idle: float = 30.0


@dataclass(slots=True)
class RelayConfig:
    # Live streams pushed to other RTMP(S) servers, each "app/name=rtmp[s]://host[:port]/app/key"; the left side
    # may be a pattern ("live/*") and the URL may use {app} and {name}, the stream's own.
    pushes: list[str] = field(default_factory=list)
    # Back-off between sessions to a target: from reconnect_min doubling up to reconnect_max seconds (with jitter).
    reconnect_min: float = 1.0
    reconnect_max: float = 30.0
    # Bytes buffered towards a target before it skips to the next keyframe.
    queue_bytes: int = 8 * 1024 * 1024
    # Seconds a connect and publish may take; also how long a target may take nothing before it is dropped.
    connect_timeout: float = 10.0
    # CA certificates (PEM) that rtmps:// targets are checked against; empty: the system's trust store.
    ca_file: str = ""


@dataclass(slots=True)
class TranscodeConfig:
    # ABR rungs "name:WIDTHxHEIGHT:bitrate", each published as the stream `<name>_<rung>` (live/cam_720p). A
    # source gets the rungs below its own height (never upscaled); the original is the top rung, not re-encoded.
    ladder: list[str] = field(default_factory=lambda: list(DEFAULT_LADDER))
    # Streams that have a ladder: "app/name" patterns (fnmatch), e.g. ["live/*"]; empty: none.
    streams: list[str] = field(default_factory=list)
    # Transcode every matching stream while it is live; off: only while someone watches a rung.
    always_on: bool = False
    # Seconds without rung players (or master playlist requests) before a ladder stops.
    idle: float = 30.0
    # Seconds a player asking for a rung waits for it to come up.
    wait: float = 10.0
    # libx264 preset of every rung.
    preset: str = "veryfast"
    # Ladders (worker processes, one per source stream) at once; more are refused.
    workers: int = 4
    # Threads per worker for decoding, scaling and each rung's encoder.
    threads: int = 2
    # Source packets queued for a worker before it skips to the next keyframe.
    queue_packets: int = 600


@dataclass(slots=True)
class RecordingConfig:
    enabled: bool = True
    # Where recordings go (the hot tier); empty: `<server.data_dir>/recordings`.
    root: str = ""
    # A file rolls over on the first keyframe after this many seconds.
    file_duration: float = 3600.0
    # Streams to record by pattern (`app/name`, shell-style: "live/*"), besides cameras with recording on.
    streams: list[str] = field(default_factory=list)
    # Bytes queued for the disk before fragments are dropped (a gap is recorded and an alert raised).
    max_buffer_bytes: int = 64 * 1024 * 1024
    # Longest time between two flushes of a file to the disk (fdatasync).
    sync_interval: float = 1.0
    # How often the index hears an open file's new end.
    progress_interval: float = 5.0
    # Longest time range (seconds) one coverage, playback or export request may ask for.
    max_query_range: float = 86400.0
    # Thumbnails along recordings (timeline scrubbing): one on the first keyframe this many seconds after the
    # stream's last one (0: none), at most this many pixels wide (aspect kept, even sides).
    thumbnail_interval: float = 60.0
    thumbnail_width: int = 320
    # Storage tiers. warm: a second local folder (empty: no warm tier). Closed recordings move down after
    # these ages (copy, verify the SHA-256 of the copy, switch the index, then delete the source).
    warm_root: str = ""
    warm_after_days: float = 7.0
    cold_after_days: float = 30.0
    # cold: S3-compatible object storage, on when s3_bucket is set (empty endpoint: AWS's own).
    s3_endpoint: str = ""
    s3_bucket: str = ""
    s3_prefix: str = ""
    s3_region: str = ""
    # Empty keys: the AWS credential chain (environment, instance or pod role). Never logged.
    s3_access_key: str = ""
    s3_secret_key: str = ""
    # Files larger than this go up in parts of this size (S3 allows 5 MiB .. 5 GiB).
    s3_part_size: int = 16 * 1024 * 1024
    # Retention per camera, over all tiers, oldest first: days kept (0: forever), bytes kept (0: no limit).
    retention_days: float = 90.0
    max_bytes_per_camera: int = 0
    # A local tier with less free space than this moves its oldest recordings down first; it deletes them only
    # when there is no lower tier or the move fails (0: no watermark).
    min_free_percent: float = 10.0
    # Seconds between two passes of moves and retention.
    tier_interval: float = 300.0


@dataclass(slots=True)
class EventsConfig:
    # The event bus (in process; through Redis pub/sub when redis.url is set) and the WebSocket /api/v1/ws.
    # A reconnecting client resumes from the last event id it saw within this window (events and seconds).
    replay_events: int = 2000
    replay_seconds: float = 120.0
    ws_max_clients: int = 5000
    # Events waiting for one client; a client further behind is dropped (close code 1013), never buffered.
    ws_queue_events: int = 1000
    # Larger client messages get an error, and the connection is closed on the second one.
    ws_max_message_bytes: int = 4096
    # Seconds between WebSocket pings; a client that does not answer within that time is closed.
    ws_heartbeat: float = 20.0
    # Seconds a connection may take to send its auth message (when the token is not in the URL).
    ws_auth_timeout: float = 5.0
    # Events are written to clients at most this often (seconds): one write per client per tick.
    ws_flush_interval: float = 0.02
    # Seconds between dashboard-update events (and the figures GET /analytics/dashboard answers with).
    dashboard_interval: float = 5.0


@dataclass(slots=True)
class AnalyticsConfig:
    # Seconds between samples of every live camera (bitrate, fps, viewers) kept in the database; 0: none.
    sample_interval: float = 60.0
    # Days samples are kept.
    retention_days: float = 30.0


@dataclass(slots=True)
class AlertsConfig:
    # A camera that is enabled and stays offline (or in error) this many seconds raises camera-offline.
    offline_after: float = 60.0
    # This many status changes within flapping_window seconds raise camera-flapping.
    flapping_changes: int = 6
    flapping_window: float = 300.0
    # A live stream whose bitrate falls below this fraction of its own average raises bitrate-collapse.
    bitrate_collapse_ratio: float = 0.2
    # Event-loop lag (seconds) above which loop-lag is raised.
    loop_lag_seconds: float = 0.25
    # Seconds between two evaluations.
    interval: float = 5.0


@dataclass(slots=True)
class ClusterConfig:
    # Worker processes on this machine sharing the RTMP, RTMPS and HTTP ports (SO_REUSEPORT); 0: one per core.
    workers: int = 1
    # Unix sockets between the workers and their parent; empty: <data_dir>/run.
    runtime_dir: str = ""
    # This node's name in the Redis stream registry; empty: the host name.
    node_id: str = ""
    # Where other nodes reach this node's RTMP and HTTP listeners; empty: rtmp://<host name>:<rtmp.port> and
    # http://<host name>:<http.port>.
    advertise_rtmp: str = ""
    advertise_http: str = ""
    # Shared by the nodes: an edge node presents a token signed with it when it pulls a stream from its origin.
    secret: str = ""
    # Seconds a registry entry lives in Redis without its node's heartbeat (sent every third of it).
    registry_ttl: float = 6.0
    # Seconds a node that holds a pulled camera's lease may go without reading it before it gives the lease to
    # another node (its own route to the camera may be the broken one); 0: never.
    pull_handover: float = 30.0
    # HLS and WHEP requests for a stream another node holds: "relay" (pull it here and serve it) or "redirect"
    # (307 to that node's advertise_http).
    http_mode: str = "relay"
    # Seconds an edge copy (a stream pulled from another worker or node) waits for its first media, and lives
    # without a player.
    edge_wait: float = 5.0
    edge_idle: float = 15.0


@dataclass(slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    rtmp: RtmpConfig = field(default_factory=RtmpConfig)
    rtmps: RtmpsConfig = field(default_factory=RtmpsConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    hls: HlsConfig = field(default_factory=HlsConfig)
    snapshot: SnapshotConfig = field(default_factory=SnapshotConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    auth_api: AuthApiConfig = field(default_factory=AuthApiConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    webrtc: WebrtcConfig = field(default_factory=WebrtcConfig)
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    pull: PullConfig = field(default_factory=PullConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)
    transcode: TranscodeConfig = field(default_factory=TranscodeConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    analytics: AnalyticsConfig = field(default_factory=AnalyticsConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def recording_root(self) -> str:
        return self.recording.root or str(Path(self.server.data_dir) / "recordings")

    def validate(self) -> None:
        if self.recording.file_duration < 1 or self.recording.max_buffer_bytes < 1024 * 1024:
            raise ConfigError("recording.file_duration must be >= 1 s and max_buffer_bytes >= 1 MiB")
        if self.recording.max_query_range <= 0:
            raise ConfigError("recording.max_query_range must be positive")
        if self.recording.thumbnail_interval < 0 or not 16 <= self.recording.thumbnail_width <= 7680:
            raise ConfigError("recording.thumbnail_interval must be >= 0 and thumbnail_width within 16..7680")
        self._validate_tiers()
        pull = self.pull
        if pull.rtsp_transport not in ("tcp", "udp") or not 0.5 <= pull.timeout <= 120:
            raise ConfigError("pull.rtsp_transport must be 'tcp' or 'udp' and pull.timeout within 0.5..120 s")
        if not 0 < pull.reconnect_min <= pull.reconnect_max:
            raise ConfigError("pull.reconnect_min must be positive and not above pull.reconnect_max")
        if not (0 < pull.on_demand_wait <= 120 and 1 <= pull.on_demand_idle <= 86400):
            raise ConfigError("pull.on_demand_wait must be within 0..120 s and pull.on_demand_idle within 1..86400 s")
        relay = self.relay
        if not 0 < relay.reconnect_min <= relay.reconnect_max or not 0.5 <= relay.connect_timeout <= 120:
            raise ConfigError("relay.reconnect_min must be positive and <= reconnect_max, connect_timeout 0.5..120 s")
        if relay.queue_bytes < 64 * 1024:
            raise ConfigError("relay.queue_bytes must be at least 65536")
        for push in relay.pushes:
            if not push.partition("=")[2].strip().lower().startswith(("rtmp://", "rtmps://")):
                raise ConfigError("relay.pushes entries look like 'live/cam=rtmp://host/app/key'")
        self._validate_transcode()
        self._validate_cluster()
        if self.auth.publish_mode not in ("open", "static", "database"):
            raise ConfigError(
                f"auth.publish_mode must be 'open', 'static' or 'database', not {self.auth.publish_mode!r}"
            )
        if self.auth.publish_mode == "database" and not self.api.enabled:
            raise ConfigError("auth.publish_mode = 'database' needs api.enabled = true")
        if self.auth_api.jwt_algorithm not in ("HS256", "RS256", "ES256"):
            raise ConfigError("auth_api.jwt_algorithm must be HS256, RS256 or ES256")
        if self.auth_api.jwt_algorithm != "HS256" and not (
            self.auth_api.jwt_private_key_file and self.auth_api.jwt_public_key_file
        ):
            raise ConfigError("auth_api.jwt_private_key_file and jwt_public_key_file are needed for RS256/ES256")
        if min(self.auth_api.access_token_ttl, self.auth_api.refresh_token_ttl, self.auth_api.play_token_ttl) < 1:
            raise ConfigError("auth_api token lifetimes must be positive")
        if self.database.inline_read_budget_ms < 0:
            raise ConfigError("database.inline_read_budget_ms must not be negative")
        if self.api.rate_window <= 0 or min(self.database.pool_size, self.api.max_body_bytes) < 1:
            raise ConfigError("api.rate_window, api.max_body_bytes and database.pool_size must be positive")
        if self.server.log_format not in ("text", "json"):
            raise ConfigError("server.log_format must be 'text' or 'json'")
        if not 128 <= self.rtmp.out_chunk_size <= 16 * 1024 * 1024:
            raise ConfigError("rtmp.out_chunk_size must be within 128..16777216")
        if not 1024 <= self.rtmp.max_message_size <= 64 * 1024 * 1024:
            raise ConfigError("rtmp.max_message_size must be within 1024..67108864")
        if not 0.1 <= self.hls.part_duration <= self.hls.segment_duration / 2:
            raise ConfigError("hls.part_duration must be within 0.1 s and half of hls.segment_duration")
        if not 1 <= self.hls.segment_duration <= 30 or not 2 <= self.hls.window <= 100:
            raise ConfigError("hls.segment_duration must be within 1..30 s and hls.window within 2..100")
        webrtc = self.webrtc
        if (webrtc.udp_port_min or webrtc.udp_port_max) and not (
            1 <= webrtc.udp_port_min <= webrtc.udp_port_max <= 65535
        ):
            raise ConfigError("webrtc.udp_port_min..udp_port_max must be a port range within 1..65535")
        if webrtc.max_sessions < 1 or webrtc.session_timeout <= 0 or webrtc.whip_keyframe_interval < 0:
            raise ConfigError("webrtc.max_sessions and webrtc.session_timeout must be positive")
        if not 6000 <= webrtc.opus_bitrate <= 510000 or not 32000 <= webrtc.aac_bitrate <= 512000:
            raise ConfigError("webrtc.opus_bitrate must be within 6000..510000 and aac_bitrate within 32000..512000")
        for url in webrtc.ice_servers:
            if not url.startswith(("stun:", "turn:", "turns:")):
                raise ConfigError(f"webrtc.ice_servers: {url!r} is not a stun:, turn: or turns: URL")
        if bool(self.rtmps.cert_file) != bool(self.rtmps.key_file):
            raise ConfigError("rtmps.cert_file and rtmps.key_file must be set together")

    def _validate_cluster(self) -> None:
        cluster = self.cluster
        if not 0 <= cluster.workers <= 256:
            raise ConfigError("cluster.workers must be within 0..256 (0: one per core)")
        if cluster.http_mode not in ("relay", "redirect"):
            raise ConfigError("cluster.http_mode must be 'relay' or 'redirect'")
        if cluster.pull_handover < 0:
            raise ConfigError("cluster.pull_handover must not be negative")
        if not (1 <= cluster.registry_ttl <= 300 and 0 < cluster.edge_wait <= 120 and 1 <= cluster.edge_idle <= 86400):
            raise ConfigError("cluster.registry_ttl within 1..300 s, edge_wait within 0..120 s, edge_idle 1..86400 s")
        for url, scheme in ((cluster.advertise_rtmp, "rtmp://"), (cluster.advertise_http, "http")):
            if url and not url.startswith(scheme):
                raise ConfigError(f"cluster.advertise_* must be a {scheme} URL, not {url!r}")

    def worker_count(self) -> int:
        """The workers to run: `cluster.workers`, or one per core when it is 0."""
        return self.cluster.workers or max(1, len(os.sched_getaffinity(0)))

    def runtime_dir(self) -> str:
        return self.cluster.runtime_dir or str(Path(self.server.data_dir) / "run")

    def _validate_transcode(self) -> None:
        tc = self.transcode
        try:
            parse_ladder(tc.ladder)
        except LadderError as exc:
            raise ConfigError(f"transcode.ladder: {exc}") from exc
        if tc.preset not in X264_PRESETS:
            raise ConfigError(f"transcode.preset must be one of {', '.join(X264_PRESETS)}")
        if not (1 <= tc.idle <= 86400 and 0 < tc.wait <= 120):
            raise ConfigError("transcode.idle must be within 1..86400 s and transcode.wait within 0..120 s")
        if not (1 <= tc.workers <= 256 and 1 <= tc.threads <= 64 and tc.queue_packets >= 16):
            raise ConfigError("transcode.workers within 1..256, threads within 1..64, queue_packets at least 16")

    def _validate_tiers(self) -> None:
        rec = self.recording
        ages = (rec.warm_after_days, rec.cold_after_days, rec.retention_days, rec.min_free_percent)
        if min(ages) < 0 or rec.max_bytes_per_camera < 0:
            raise ConfigError("recording ages, retention, min_free_percent and max_bytes_per_camera must be >= 0")
        if rec.warm_root and rec.s3_bucket and rec.cold_after_days <= rec.warm_after_days:
            raise ConfigError("recording.cold_after_days must be greater than warm_after_days")
        if rec.s3_endpoint and not rec.s3_bucket:
            raise ConfigError("recording.s3_bucket is needed when s3_endpoint is set")
        if not 5 * 1024 * 1024 <= rec.s3_part_size <= 5 * 1024**3:
            raise ConfigError("recording.s3_part_size must be within 5 MiB .. 5 GiB")
        if rec.tier_interval <= 0 or rec.min_free_percent >= 100:
            raise ConfigError("recording.tier_interval must be positive and min_free_percent below 100")
        if rec.warm_root:
            hot, warm = Path(self.recording_root()).resolve(), Path(rec.warm_root).resolve()
            if hot == warm or hot in warm.parents or warm in hot.parents:
                raise ConfigError("recording.warm_root must be a folder of its own, apart from the hot root")


def _convert(value: Any, kind: Any, where: str) -> Any:
    """Coerce a TOML or environment value to the field's declared type."""
    origin = typing.get_origin(kind)
    try:
        if kind is bool:
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered in ("1", "true", "yes", "on"):
                    return True
                if lowered in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if isinstance(value, bool):
                return value
            raise ValueError(value)
        if kind is int:
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if kind is str:
            if not isinstance(value, str):
                raise ValueError(value)
            return value
        if origin is list:
            if isinstance(value, str):
                # Environment: a JSON list, or comma-separated values.
                stripped = value.strip()
                value = json.loads(stripped) if stripped.startswith("[") else [v for v in stripped.split(",") if v]
            if not isinstance(value, list):
                raise ValueError(value)
            (item,) = typing.get_args(kind)
            return [_convert(v, item, where) for v in value]
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{where}: cannot use {value!r} as {kind}") from exc
    raise ConfigError(f"{where}: unsupported type {kind}")


def _apply(section: Any, values: Mapping[str, Any], where: str) -> None:
    hints = typing.get_type_hints(type(section))
    names = {f.name for f in dataclasses.fields(section)}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"unknown key {where}.{key}")
        setattr(section, key, _convert(value, hints[key], f"{where}.{key}"))


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    config = Config()
    sections = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    if path is not None:
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        for name, values in data.items():
            if name not in sections or not isinstance(values, dict):
                raise ConfigError(f"unknown section [{name}]")
            _apply(sections[name], values, name)
    env = os.environ if environ is None else environ
    for name, section in sections.items():
        prefix = f"MEDIASERVER_{name.upper()}_"
        overrides = {
            key[len(prefix) :].lower(): value
            for key, value in env.items()
            if key.startswith(prefix) and key[len(prefix) :].lower() in {f.name for f in dataclasses.fields(section)}
        }
        _apply(section, overrides, name)
    config.validate()
    return config
