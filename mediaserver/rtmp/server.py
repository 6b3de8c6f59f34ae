"""RTMP and RTMPS listeners."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl

from mediaserver.rtmp.connection import RtmpConnection
from mediaserver.rtmp.context import RtmpContext

log = logging.getLogger("mediaserver.rtmp")


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


async def start_rtmp(
    ctx: RtmpContext, host: str, port: int, tls: ssl.SSLContext | None = None, *, reuse_port: bool = False
) -> asyncio.Server:
    protocol = "rtmps" if tls is not None else "rtmp"
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: RtmpConnection(ctx, protocol),
        host,
        port,
        ssl=tls,
        ssl_handshake_timeout=ctx.config.handshake_timeout if tls is not None else None,
        reuse_address=True,
        reuse_port=reuse_port or None,
        backlog=1024,
    )
    for sock in server.sockets:
        log.info("event=listening protocol=%s address=%s", protocol, sock.getsockname())
    return server


async def start_rtmp_unix(ctx: RtmpContext, path: str) -> asyncio.Server:
    """A listener on a Unix socket, readable and writable by this user only (a worker's internal listener)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = await asyncio.get_running_loop().create_unix_server(lambda: RtmpConnection(ctx, "rtmp"), path, backlog=256)
    os.chmod(path, 0o600)
    log.info("event=listening protocol=rtmp address=unix:%s", path)
    return server
