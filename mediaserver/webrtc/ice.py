"""ICE set-up: STUN/TURN servers from config, and host candidates on chosen addresses and UDP ports.

aioice gathers host candidates on every interface address except 127.0.0.1, each on an ephemeral port, and has
no option to choose either. When addresses or a port range are configured we gather the host candidates
ourselves, on the peer connection's own aioice `Connection`, before aiortc asks it to gather (its
`gather_candidates` does nothing once candidates exist). Nothing global is patched: other peer connections in
the process (test clients, for instance) keep aioice's behaviour. This uses three private attributes of
aioice's `Connection` (`_local_candidates*`, `_protocols`, `_components`); aiortc is pinned below 2.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from typing import Any

from aioice import Candidate, Connection
from aioice.candidate import candidate_foundation, candidate_priority
from aioice.ice import StunProtocol, get_host_addresses, server_reflexive_candidate
from aiortc import RTCIceServer, RTCPeerConnection

log = logging.getLogger("mediaserver.webrtc")

_MDNS_CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ \S+ \d+ \S+\.local \d+ .*$", re.IGNORECASE)
_STUN_TIMEOUT = 3.0


class IceSetupError(OSError):
    """No host candidate could be gathered (addresses not on this machine, port range exhausted)."""


def ice_servers(urls: list[str], username: str, credential: str) -> list[RTCIceServer]:
    """RTCIceServer entries from `stun:`/`turn:`/`turns:` URLs; TURN URLs get the configured credentials."""
    servers: list[RTCIceServer] = []
    for url in urls:
        if url.startswith(("turn:", "turns:")):
            servers.append(RTCIceServer(urls=url, username=username or None, credential=credential or None))
        else:
            servers.append(RTCIceServer(urls=url))
    return servers


def strip_mdns_candidates(sdp: str) -> str:
    """Drop `.local` (mDNS) candidates from a remote description.

    A server cannot resolve a browser's mDNS names (they are multicast on the browser's LAN), and aioice
    would wait up to a second per name trying. The browser's connectivity checks reach our candidates anyway
    and aioice learns its address from them (a peer-reflexive candidate).
    """
    lines = sdp.splitlines()
    kept = [line for line in lines if not _MDNS_CANDIDATE.match(line)]
    if len(kept) == len(lines):
        return sdp
    return "\r\n".join(kept) + "\r\n"


class HostCandidates:
    """Host candidates on `addresses` (all interfaces when empty) with ports from `port_min..port_max`."""

    def __init__(self, addresses: list[str], port_min: int = 0, port_max: int = 0) -> None:
        self.addresses = list(addresses)
        self.port_min = port_min
        self.port_max = port_max
        self._next_port = port_min

    @property
    def active(self) -> bool:
        """False when aioice's own gathering does what the configuration asks."""
        return bool(self.addresses) or self.port_min > 0

    async def prepare(self, pc: RTCPeerConnection) -> None:
        """Gather the candidates of every ICE transport of `pc` now, before `setLocalDescription`."""
        if not self.active:
            return
        connections: dict[int, Connection] = {}
        for transceiver in pc.getTransceivers():
            gatherer = transceiver.sender.transport.transport.iceGatherer
            connection: Connection = gatherer._connection
            connections[id(connection)] = connection
        for connection in connections.values():
            await self._gather(connection)

    async def _gather(self, connection: Connection) -> None:
        state: Any = connection
        if state._local_candidates_start:
            return
        state._local_candidates_start = True
        try:
            addresses = self.addresses or get_host_addresses(use_ipv4=True, use_ipv6=True)
            for component in sorted(state._components):
                state._local_candidates += await self._component(connection, component, addresses)
        finally:
            state._local_candidates_end = True
        if not state._local_candidates:
            raise IceSetupError(f"no ICE candidate on {addresses} (ports {self.port_min}-{self.port_max})")

    async def _component(self, connection: Connection, component: int, addresses: list[str]) -> list[Candidate]:
        state: Any = connection
        loop = asyncio.get_running_loop()
        candidates: list[Candidate] = []
        hosts: list[StunProtocol] = []
        for address in addresses:
            try:
                protocol = await self._bind(loop, connection, address)
            except OSError as exc:
                log.warning("event=ice_bind_failed address=%s error=%s", address, exc)
                continue
            host, port = protocol.transport.get_extra_info("sockname")[:2]
            protocol.local_candidate = Candidate(
                foundation=candidate_foundation("host", "udp", host),
                component=component,
                transport="udp",
                priority=candidate_priority(component, "host"),
                host=host,
                port=port,
                type="host",
            )
            hosts.append(protocol)
            candidates.append(protocol.local_candidate)
        state._protocols += hosts
        # Server-reflexive candidates of our sockets (so the port range also holds behind a 1:1 NAT), and a
        # relayed candidate through aioice's own code.
        if connection.stun_server is not None:
            queries = [
                server_reflexive_candidate(p, connection.stun_server)
                for p in hosts
                if ipaddress.ip_address(p.local_candidate.host).version == 4
            ]
            if queries:
                try:
                    done = await asyncio.wait_for(asyncio.gather(*queries, return_exceptions=True), _STUN_TIMEOUT)
                except TimeoutError:
                    log.warning("event=stun_timeout server=%s:%d", *connection.stun_server)
                else:
                    candidates += [result[0] for result in done if isinstance(result, tuple)]
        if connection.turn_server is not None:
            candidates += await connection.get_component_candidates(component=component, addresses=[])
        return candidates

    async def _bind(self, loop: asyncio.AbstractEventLoop, connection: Connection, address: str) -> StunProtocol:
        if self.port_min <= 0:
            _, protocol = await loop.create_datagram_endpoint(lambda: StunProtocol(connection), local_addr=(address, 0))
            _grow_buffer(protocol)
            return protocol
        span = self.port_max - self.port_min + 1
        error: OSError | None = None
        for _ in range(span):
            port = self._next_port
            self._next_port = self.port_min + (port + 1 - self.port_min) % span
            try:
                _, protocol = await loop.create_datagram_endpoint(
                    lambda: StunProtocol(connection), local_addr=(address, port)
                )
            except OSError as exc:
                error = exc
                continue
            _grow_buffer(protocol)
            return protocol
        raise OSError(f"no free UDP port in {self.port_min}-{self.port_max}") from error


def _grow_buffer(protocol: StunProtocol) -> None:
    sock = protocol.transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024 * 1024)
