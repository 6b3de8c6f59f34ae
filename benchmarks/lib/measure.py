"""One measurement window over a server under test and its RTMP publishers, and the figures every
server run reports (`TargetResult`; each tool's result adds its own).

Over the window: the server's CPU (utime+stime of its process tree, % of one core) and its RSS at the end,
this process's CPU and how late its publishers sent (if it saturates, the figures measure the load
generator, not the server), the rest of the machine's busy time (noise), and the publishers' bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks.lib.procfs import CpuReading, CpuUse, cpu_use, read_cpu, rss_bytes
from benchmarks.lib.publish import PublisherFleet
from benchmarks.lib.servers import Server
from benchmarks.lib.stats import percentiles

# Above this the single-threaded load generator is the bottleneck, not the server.
SATURATED_CPU_PCT = 90.0
SATURATED_LAG_MS = 100.0


@dataclass(kw_only=True)
class TargetResult:
    """The figures of one server's run that rtmp_load and hls_load both report."""

    target: str
    window_s: float = 0.0
    server_processes: int = 0
    server_cpu_pct: float = 0.0
    cpu_pct_per_stream: float = 0.0
    rss_mb: float = 0.0
    rss_idle_mb: float = 0.0
    in_mbps: float = 0.0
    out_mbps: float = 0.0
    loadgen_cpu_pct: float = 0.0
    loadgen_saturated: bool = False
    # Everything else the machine did during the window (other tenants, the kernel's softirqs
    # not charged to a process): a noise indicator.
    other_cpu_pct: float = 0.0
    send_lateness_p50_ms: float = 0.0
    send_lateness_p99_ms: float = 0.0
    send_lateness_max_ms: float = 0.0
    publishers_connected_at_end: int = 0
    publisher_errors: int = 0
    drops: int | None = None
    error_samples: list[str] = field(default_factory=list)
    server_log_problems: list[str] = field(default_factory=list)


# The last columns of the rtmp_load and hls_load tables: is the load generator, or the machine, the limit?
LOADGEN_COLUMNS: list[tuple[str, Callable[[TargetResult], str]]] = [
    ("gen CPU %", lambda r: f"{r.loadgen_cpu_pct:.0f}" + ("!" if r.loadgen_saturated else "")),
    ("send late p99 ms", lambda r: f"{r.send_lateness_p99_ms:.0f}"),
    ("other CPU %", lambda r: f"{r.other_cpu_pct:.0f}"),
]


class WindowMeter:
    """`open()`, let the load run, `close()`, then `fill()` a result (and `mbps()` for the tool's own bytes)."""

    def __init__(self, server: Server, fleet: PublisherFleet) -> None:
        self.server = server
        self.fleet = fleet
        self._before: CpuReading | None = None
        self._sent0 = 0
        self._sent1 = 0
        self._pids: list[int] = []
        self._rss = 0
        self.use: CpuUse | None = None

    def open(self) -> None:
        self._before = read_cpu(self.server.pids())
        self._sent0 = self.fleet.bytes_sent()
        self.fleet.window.active = True

    def close(self) -> None:
        self.fleet.window.active = False
        assert self._before is not None, "close() before open()"
        self._pids = self.server.pids()
        self.use = cpu_use(self._before, read_cpu(self._pids))
        self._sent1 = self.fleet.bytes_sent()
        self._rss = rss_bytes(self._pids)

    @property
    def rss(self) -> int:
        """The server's RSS at the window's end, bytes."""
        return self._rss

    @property
    def elapsed(self) -> float:
        assert self.use is not None, "the window is not closed"
        return self.use.elapsed

    def mbps(self, byte_count: int) -> float:
        """`byte_count` over the window, in Mbit/s (one decimal)."""
        return round(byte_count * 8 / self.elapsed / 1e6, 1)

    def fill(self, result: TargetResult, streams: int) -> None:
        """The common figures of the window into `result`; `streams` divides the server's CPU."""
        use = self.use
        assert use is not None, "the window is not closed"
        server_cpu = use.pct(self._pids)
        result.window_s = round(use.elapsed, 3)
        result.server_processes = len(self._pids)
        result.server_cpu_pct = round(server_cpu, 2)
        result.cpu_pct_per_stream = round(server_cpu / streams, 4)
        result.rss_mb = round(self._rss / 1e6, 1)
        result.in_mbps = self.mbps(self._sent1 - self._sent0)
        result.loadgen_cpu_pct = round(use.own_pct, 1)
        result.other_cpu_pct = round(use.other_pct(server_cpu), 1)
        late = percentiles(self.fleet.window.lateness_ms, (50, 99, 100))
        result.send_lateness_p50_ms = late["p50"] or 0.0
        result.send_lateness_p99_ms = late["p99"] or 0.0
        result.send_lateness_max_ms = late["max"] or 0.0
        result.loadgen_saturated = (
            result.loadgen_cpu_pct >= SATURATED_CPU_PCT or result.send_lateness_p99_ms >= SATURATED_LAG_MS
        )
        result.publishers_connected_at_end = self.fleet.connected()
        result.publisher_errors = sum(1 for p in self.fleet.publishers if p.error is not None)
