"""The HTTP side of worker processes: any worker answers for any stream.

- HLS, WHEP/WHIP, a live stream's stats and a live camera's own API routes (its status, snapshot, the kick of
  its publisher) belong to the worker that holds the stream (its segment numbers, its WebRTC sessions, its
  cached keyframes): a request that reached another worker is forwarded, as it came, over the holder's
  internal Unix socket, and the answer sent back as it is (compressed or not).
- `/metrics` and `/api/v1/streams` speak for the machine: the answering worker adds every other worker's
  figures (each sample labelled with its `worker`) and streams.
- For a stream another node holds, with `cluster.http_mode = "redirect"`, HLS and WHEP requests get a 307
  to that node; with "relay" they are served here from an edge copy like any local stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from mediaserver.cluster.link import MachineLink, WorkerAddress
from mediaserver.cluster.registry import StreamRegistry
from mediaserver.cluster.role import handover_socket_beside
from mediaserver.hub import EDGE_PROTOCOL, Hub

log = logging.getLogger("mediaserver.cluster")

# Set on a forwarded request: the receiving worker answers it itself, whatever it holds.
FORWARDED_HEADER = "X-Mediaserver-Forwarded"
# Asks a worker for its own figures only (what the gathering worker asks the others).
LOCAL_PARAM = "local"
_STREAM_ROOTS = ("hls", "whep", "whip")
_HOP_HEADERS = frozenset(
    h.lower() for h in ("Connection", "Keep-Alive", "Transfer-Encoding", "TE", "Upgrade", "Proxy-Authorization",
                        "Proxy-Authenticate", "Trailer", "Content-Length", "Host")
)  # fmt: skip
_NO_AUTO_HEADERS = ("Accept-Encoding", "User-Agent", "Content-Type")
FORWARD_TIMEOUT = 30.0
# Listings that speak for the whole machine.
MACHINE_LISTINGS = frozenset(
    {"/api/v1/streams", "/api/v1/webrtc/sessions"}
)  # above an LL-HLS blocking reload's longest hold


def stream_of(path: str, camera_app: str = "live") -> tuple[str, str] | None:
    """The (app, name) a request is about: /hls|/whep|/whip/<app>/<name>/..., /api/v1/streams/<app>/<name>, and
    a camera's own routes, /api/v1/cameras/<id>[/...] (its stream is <camera_app>/<id>)."""
    parts = path.split("/", 6)
    if len(parts) >= 4 and parts[1] in _STREAM_ROOTS and parts[2] and parts[3]:
        return parts[2], parts[3]
    if len(parts) >= 5 and parts[1:3] == ["api", "v1"] and parts[4]:
        if parts[3] == "streams" and len(parts) == 6 and parts[5]:
            return parts[4], parts[5]
        if parts[3] == "cameras":
            return camera_app, parts[4]
    return None


# A sample line of the text exposition: its name, and its labels when it has any.
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:[^"}]|"(?:[^"\\]|\\.)*")*)\})? ', re.MULTILINE)


def merge_metrics(texts: dict[int, str]) -> bytes:
    """Several workers' text expositions (prometheus-client's: each family a `# HELP`, a `# TYPE` and its
    samples) as one, each sample labelled with its worker's index and each family given once. Done on the text
    with one regular-expression pass per worker: parsing and rendering again cost tens of milliseconds of the
    event loop for a few hundred streams."""
    order: list[str] = []
    heads: dict[str, str] = {}
    bodies: dict[str, list[str]] = {}
    for worker, text in sorted(texts.items()):
        tag = f'worker="{worker}"'

        def labelled(match: re.Match[str], tag: str = tag) -> str:
            labels = match.group(2)
            return f"{match.group(1)}{{{labels},{tag}}} " if labels else f"{match.group(1)}{{{tag}}} "

        for block in text.split("# HELP ")[1:]:
            name = block.split(" ", 1)[0]
            head, _, samples = block.partition("\n# TYPE ")
            kind_line, _, samples = samples.partition("\n")
            if name not in heads:
                order.append(name)
                heads[name] = f"# HELP {head}\n# TYPE {kind_line}\n"
                bodies[name] = []
            bodies[name].append(_SAMPLE.sub(labelled, samples))
    return "".join(heads[name] + "".join(bodies[name]) for name in order).encode()


class WorkerGateway:
    def __init__(
        self,
        hub: Hub,
        registry: StreamRegistry,
        link: MachineLink | None,
        http_mode: str,
        camera_app: str = "live",
        metrics: CollectorRegistry | None = None,
        pull_reader: Callable[[str, str], int | None] | None = None,
        rung_source: Callable[[str, str], str | None] | None = None,
    ) -> None:
        self.hub = hub
        # The stream an ABR rung is transcoded from: a rung is made, and served, by the worker holding its source.
        self.rung_source = rung_source
        # Which other worker reads an always-on pulled source (its state lives there while it is not live).
        self.pull_reader = pull_reader
        self.camera_app = camera_app
        self.registry = registry
        self.link = link
        self.http_mode = http_mode
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._forwarded = Counter(
            "mediaserver_worker_forwarded_requests", "HTTP requests forwarded to the worker holding the stream",
            registry=metrics,
        )  # fmt: skip
        self._redirected = Counter(
            "mediaserver_node_redirected_requests", "HLS/WHEP requests redirected to the node holding the stream",
            registry=metrics,
        )  # fmt: skip

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()

    def _session(self, socket_path: str) -> aiohttp.ClientSession:
        session = self._sessions.get(socket_path)
        if session is None or session.closed:
            session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=socket_path, limit=256),
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT),
            )
            self._sessions[socket_path] = session
        return session

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if FORWARDED_HEADER in request.headers:
            response: web.StreamResponse = await handler(request)
            return response
        path = request.path
        if self.link is not None and LOCAL_PARAM not in request.query:
            if path == "/metrics":
                return await self._machine_metrics(request, handler)
            if path in MACHINE_LISTINGS:
                return await self._machine_json(request, handler)
        target = stream_of(path, self.camera_app)
        if target is not None:
            app, name = target
            local = self.hub.get(app, name)
            if local is None or local.is_copy:
                worker = self.registry.local_owner(f"{app}/{name}")
                if worker is None and local is None:
                    worker = self._pull_worker(app, name) or self._rung_worker(app, name)
                if worker is not None:
                    return await self._forward(request, worker)
                if local is None and self.http_mode == "redirect" and path.split("/", 2)[1] in ("hls", "whep"):
                    location = await self.registry.locate(f"{app}/{name}")
                    if location is not None and location.http_url:
                        self._redirected.inc()
                        raise web.HTTPTemporaryRedirect(location.http_url.rstrip("/") + request.path_qs)
        response = await handler(request)
        return response

    def handover_target(self, path: str) -> str | None:
        """For the HTTP front: the handover socket of the other worker holding the stream an HLS request path
        names (None: held here, unknown, or not HLS). The connection goes there whole, not each request."""
        if not path.startswith("/hls/"):
            return None
        target = stream_of(path, self.camera_app)
        if target is None:
            return None
        local = self.hub.get(*target)
        if local is not None and not local.is_copy:
            return None
        worker = self.registry.local_owner(f"{target[0]}/{target[1]}")
        return handover_socket_beside(worker.http, worker.index) if worker is not None else None

    def _rung_worker(self, app: str, name: str) -> WorkerAddress | None:
        """The other worker holding the source of the rung `app/name` (not live yet): its ladder makes the rung,
        rather than a second ladder here transcoding an edge copy of the same source."""
        base = self.rung_source(app, name) if self.rung_source is not None else None
        if base is None:
            return None
        source = self.hub.get(app, base)
        if source is not None and not source.is_copy:
            return None
        return self.registry.local_owner(f"{app}/{base}")

    def _pull_worker(self, app: str, name: str) -> WorkerAddress | None:
        if self.link is None or self.pull_reader is None:
            return None
        index = self.pull_reader(app, name)
        return self.link.workers.get(index) if index is not None else None

    async def _forward(self, request: web.Request, worker: WorkerAddress) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        headers[FORWARDED_HEADER] = "1"
        if request.remote:
            headers["X-Forwarded-For"] = request.remote
        body = await request.read() if request.body_exists else None
        self._forwarded.inc()
        try:
            async with self._session(worker.http).request(
                request.method,
                f"http://worker{request.path_qs}",
                headers=headers,
                data=body,
                allow_redirects=False,
                skip_auto_headers=_NO_AUTO_HEADERS,  # the player's own (no gzip unless it asked for it)
            ) as answer:
                payload = await answer.read()
                out = [(k, v) for k, v in answer.headers.items() if k.lower() not in _HOP_HEADERS]
                response = web.Response(status=answer.status, body=payload)
                for key, value in out:
                    response.headers.add(key, value)
                return response
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("event=worker_forward_failed worker=%d path=%s error=%s", worker.index, request.path,
                        type(exc).__name__)  # fmt: skip
            return web.json_response(
                {"error": {"code": "worker_unavailable", "message": "the worker holding this stream did not answer"}},
                status=502,
            )

    async def other_workers_metrics(self) -> list[str]:
        """Every other worker's own `/metrics` text (for the machine's dashboard figures; those that do not
        answer are left out)."""
        if self.link is None:
            return []
        gathered = await self._gather("/metrics?local=1", None)
        return [body.decode() for _, body in sorted(gathered.items())]

    async def _gather(self, path: str, request: web.Request | None) -> dict[int, bytes]:
        """`path` from every other worker, asked with the caller's credentials (those that do not answer are
        left out, and logged)."""
        assert self.link is not None
        others = self.link.others()
        headers = {FORWARDED_HEADER: "1"}
        for name in ("Authorization", "Cookie"):
            if request is not None and name in request.headers:
                headers[name] = request.headers[name]

        async def one(worker: WorkerAddress) -> bytes | None:
            try:
                async with self._session(worker.http).get(
                    f"http://worker{path}", headers=headers, timeout=aiohttp.ClientTimeout(total=5)
                ) as answer:
                    return await answer.read() if answer.status == 200 else None
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("event=worker_gather_failed worker=%d error=%s", worker.index, type(exc).__name__)
                return None

        bodies = await asyncio.gather(*(one(worker) for worker in others))
        return {worker.index: body for worker, body in zip(others, bodies, strict=True) if body is not None}

    async def _machine_metrics(self, request: web.Request, handler: Any) -> web.StreamResponse:
        assert self.link is not None
        own: web.Response = await handler(request)
        texts = {self.link.index: bytes(own.body or b"").decode()}  # type: ignore[arg-type]
        gathered = await self._gather("/metrics?local=1", request)
        texts.update({index: body.decode() for index, body in gathered.items()})
        body = await asyncio.get_running_loop().run_in_executor(None, merge_metrics, texts)
        return web.Response(body=body, headers={"Content-Type": own.headers.get("Content-Type", "text/plain")})

    async def _machine_json(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """A JSON listing for the whole machine: lists joined (each entry with its `worker`), counts added."""
        assert self.link is not None
        own: web.Response = await handler(request)
        if own.status != 200:
            return own
        answers = {self.link.index: bytes(own.body or b"")}  # type: ignore[arg-type]
        answers.update(await self._gather(f"{request.path}?{LOCAL_PARAM}=1", request))
        merged: dict[str, Any] = {}
        for index, body in sorted(answers.items()):
            for key, value in json.loads(body).items():
                merged[key] = _merge(merged.get(key), value, index)
        if request.path == "/api/v1/streams":
            # An edge copy is listed by the worker that holds the stream.
            streams = [s for s in merged.get("streams", []) if s.get("publisher", {}).get("protocol") != EDGE_PROTOCOL]
            streams.sort(key=lambda entry: (str(entry.get("app")), str(entry.get("name"))))
            merged.update(streams=streams, count=len(streams))
        return web.json_response(merged)


def _merge(have: Any, value: Any, worker: int) -> Any:
    """One worker's field into the machine's: lists are joined, numbers added, objects merged the same way."""
    if isinstance(value, list):
        tagged = [{**item, "worker": worker} if isinstance(item, dict) else item for item in value]
        return (have if isinstance(have, list) else []) + tagged
    if isinstance(value, bool) or have is None:
        return value
    if isinstance(value, (int, float)) and isinstance(have, (int, float)):
        return have + value
    if isinstance(value, dict) and isinstance(have, dict):
        return {**have, **{k: _merge(have.get(k), v, worker) for k, v in value.items()}}
    return have
