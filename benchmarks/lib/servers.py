"""The servers under test, started as subprocesses on free loopback ports and stopped by pid.

`OurServer` runs `python -m mediaserver serve` with its settings in `MEDIASERVER_*` variables; `NginxServer`
runs nginx-rtmp with /work/shared/bench/nginx-rtmp-anchor.conf, its ports moved to free ones; `MotoServer` runs
moto's S3 API (the recording benchmarks' cold tier) as a process of its own. Each starts in
its own session (Ctrl-C reaches the tool only, which then stops it), in a temp dir that holds its log and
data and is removed at `stop()` unless `keep_temp`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from benchmarks.lib.metrics import family, first_label, parse_metrics
from benchmarks.lib.procfs import alive, process_tree

ANCHOR_CONF = Path("/work/shared/bench/nginx-rtmp-anchor.conf")
NGINX_MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> str:
    """The body of a 2xx answer (OSError, urllib's HTTPError included, otherwise)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode(errors="replace"))


def stop_process(process: subprocess.Popen[bytes], extra_pids: list[int], sig: int = signal.SIGTERM) -> None:
    """Signal the process and wait; then kill it and whatever children it left behind, by pid."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for pid in extra_pids:
        if pid != process.pid and alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


class Server:
    """A server under test, started in its own session so that Ctrl-C reaches us only."""

    name = "?"
    # SIGTERM is a graceful stop for ours and nginx's fast shutdown (the master stops its workers).
    stop_signal = signal.SIGTERM

    def __init__(self, keep_temp: bool = False, prefix: str = "rtmp-bench") -> None:
        self.keep_temp = keep_temp
        self.root = Path(tempfile.mkdtemp(prefix=f"{prefix}-{self.name}-"))
        self.rtmp_port = free_port()
        self.http_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.root / "server.log"
        self._known_pids: list[int] = []

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def pids(self) -> list[int]:
        """The server's process tree now (every pid seen is remembered, to be killed at `stop`)."""
        pids = process_tree(self.pid)
        self._known_pids = sorted(set(self._known_pids) | set(pids))
        return pids

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.process is not None:
            self.pids()
            stop_process(self.process, self._known_pids, self.stop_signal)
        if not self.keep_temp:
            shutil.rmtree(self.root, ignore_errors=True)

    def drops(self) -> tuple[int | None, dict[str, int]]:
        """Packets the server dropped in all, and by reason; (None, {}) when it does not tell."""
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

    def _wait_ready(self, ready: Callable[[], bool], timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self._log_tail()}")
            with contextlib.suppress(OSError):
                if ready():
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not become ready:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


class OurServer(Server):
    """`python -m mediaserver serve` on loopback, data in the temp dir, open publishing, `env` on top."""

    name = "ours"

    def __init__(
        self,
        keep_temp: bool = False,
        prefix: str = "rtmp-bench",
        env: dict[str, str] | None = None,
        log_level: str = "warning",
        ready_timeout: float = 30.0,
    ) -> None:
        super().__init__(keep_temp, prefix)
        self.env = {
            "MEDIASERVER_RTMP_HOST": "127.0.0.1",
            "MEDIASERVER_RTMP_PORT": str(self.rtmp_port),
            "MEDIASERVER_HTTP_HOST": "127.0.0.1",
            "MEDIASERVER_HTTP_PORT": str(self.http_port),
            "MEDIASERVER_SERVER_DATA_DIR": str(self.root / "data"),
            "MEDIASERVER_SERVER_LOG_LEVEL": log_level,
            # Load publishers use arbitrary names, as they do against nginx.
            "MEDIASERVER_AUTH_PUBLISH_MODE": "open",
            **(env or {}),
        }
        self.ready_timeout = ready_timeout

    def start(self) -> None:
        self._spawn([sys.executable, "-m", "mediaserver", "serve"], {**os.environ, **self.env})
        self._wait_ready(self._healthy, self.ready_timeout)

    def _healthy(self) -> bool:
        http_get(self.url("/healthz"), 2)  # raises until the server answers 2xx
        return True

    def drops(self) -> tuple[int | None, dict[str, int]]:
        by_reason: dict[str, int] = {}
        for labels, value in family(self.scrape(), "mediaserver_packets_dropped_total").items():
            reason = first_label(labels)
            by_reason[reason] = by_reason.get(reason, 0) + int(value)
        return sum(by_reason.values()), by_reason

    def scrape(self) -> dict[str, float]:
        return parse_metrics(http_get(self.url("/metrics"), timeout=20))

    def log_problems(self) -> list[str]:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return [line for line in text.splitlines() if "level=ERROR" in line or "Traceback" in line][:20]


class NginxServer(Server):
    """nginx-rtmp (master + one worker, `hls on` into <root>/hls) from the reference configuration."""

    name = "nginx"

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

        self._wait_ready(ready, 20.0)

    def drops(self) -> tuple[int | None, dict[str, int]]:
        text = http_get(self.url("/stat"), timeout=20)
        dropped = sum(int(v) for v in re.findall(r"<dropped>(\d+)</dropped>", text))
        return dropped, {"stat_dropped": dropped}

    def hls_segments(self) -> int:
        return sum(1 for _ in (self.root / "hls").glob("*.ts"))

    def log_problems(self) -> list[str]:
        path = self.root / "nginx" / "logs" / "error.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return [line for line in text.splitlines() if re.search(r"\[(error|crit|alert|emerg)\]", line)][:20]


class MotoServer(Server):
    """moto's S3 API (`python -m moto.server`) as a process of its own on loopback, so that what it costs is read from
    its /proc entries and not counted as the caller's. moto keeps objects over ~5 MiB (and multipart parts) in
    temporary files: its TMPDIR is the server's temp dir, so they go when it stops."""

    name = "moto"

    def __init__(self, keep_temp: bool = False, prefix: str = "s3-bench") -> None:
        super().__init__(keep_temp, prefix)

    @property
    def endpoint(self) -> str:
        return self.url("")

    def start(self) -> None:
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.http_port)]
        self._spawn(command, {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(self.root)})

        def ready() -> bool:
            with socket.create_connection(("127.0.0.1", self.http_port), timeout=1):
                return True

        self._wait_ready(ready, 30.0)

    def log_problems(self) -> list[str]:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return [line for line in text.splitlines() if "Traceback" in line or '" 500 ' in line][:20]


def make_server(target: str, keep_temp: bool) -> Server:
    """The server of a `--target` value: "ours" or "nginx"."""
    if target == "ours":
        return OurServer(keep_temp)
    if target == "nginx":
        return NginxServer(keep_temp)
    raise ValueError(f"unknown target {target!r}")
