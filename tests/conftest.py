"""Shared fixtures: a real server process on free loopback ports, and test media made by ffmpeg."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def normal_scheduling() -> Iterator[None]:
    """Put the test process back on normal scheduling after every test.

    libSvtAv1Enc (PyAV's AV1 encoder, used by tests that make AV1 media) switches threads to SCHED_FIFO 99 when
    it may, as root; processes started afterwards (servers, ffmpeg, Chromium) inherit it, and a spinning
    real-time Chromium once froze the whole machine. `.ci/run` takes CAP_SYS_NICE away from the whole run; this
    is the guard for a plain `pytest` as root."""
    yield
    if hasattr(os, "sched_setscheduler") and os.sched_getscheduler(0) != os.SCHED_OTHER:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    rtmp_port: int
    http_port: int
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    rtmps_port: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    _token: str | None = None

    def rtmp_url(self, path: str) -> str:
        return f"rtmp://127.0.0.1:{self.rtmp_port}/{path}"

    def http_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def admin_token(self) -> str:
        """An access token of the admin the server was started with (logs in once)."""
        import json

        if self._token is None:
            body = json.dumps({"username": self.env[ADMIN_USER_ENV], "password": self.env[ADMIN_PASSWORD_ENV]}).encode()
            request = urllib.request.Request(
                self.http_url("/api/v1/auth/login"), body, {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                self._token = str(json.loads(response.read())["access_token"])
        return self._token

    def get_json(self, path: str, auth: bool = False) -> object:
        """GET a JSON route; `auth` sends the admin's token (routes behind the API's permission checks)."""
        import json

        headers = {"Authorization": f"Bearer {self.admin_token()}"} if auth else {}
        request = urllib.request.Request(self.http_url(path), headers=headers)
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def get_text(self, path: str) -> str:
        with urllib.request.urlopen(self.http_url(path), timeout=5) as response:
            return str(response.read().decode())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


ADMIN_USER_ENV = "MEDIASERVER_ADMIN_USERNAME"
ADMIN_PASSWORD_ENV = "MEDIASERVER_ADMIN_PASSWORD"


def start_server(
    tmp_path: Path,
    extra_env: dict[str, str] | None = None,
    rtmps: bool = False,
    ports: tuple[int, int] | None = None,
) -> ServerProcess:
    """A real server process; `ports` (RTMP, HTTP) when the test must know them before it starts."""
    rtmp_port, http_port = ports or (free_port(), free_port())
    data_dir = tmp_path / "data"
    env = dict(os.environ)
    env.update(
        {
            "MEDIASERVER_RTMP_HOST": "127.0.0.1",
            "MEDIASERVER_RTMP_PORT": str(rtmp_port),
            "MEDIASERVER_HTTP_HOST": "127.0.0.1",
            "MEDIASERVER_HTTP_PORT": str(http_port),
            "MEDIASERVER_SERVER_DATA_DIR": str(data_dir),
            "MEDIASERVER_SERVER_LOG_LEVEL": "debug",
            # Protocol tests publish to arbitrary names; the camera-key default is tested in tests/control.
            "MEDIASERVER_AUTH_PUBLISH_MODE": "open",
            # A first admin, so that tests can read the routes behind the API's permission checks.
            ADMIN_USER_ENV: "admin",
            ADMIN_PASSWORD_ENV: "test-admin-" + os.urandom(6).hex(),
        }
    )
    rtmps_port = None
    if rtmps:
        rtmps_port = free_port()
        env["MEDIASERVER_RTMPS_HOST"] = "127.0.0.1"
        env["MEDIASERVER_RTMPS_PORT"] = str(rtmps_port)
    env.update(extra_env or {})
    log_path = tmp_path / f"server-{rtmp_port}.log"
    log_file = open(log_path, "wb")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen(
        [sys.executable, "-m", "mediaserver", "serve"], env=env, stdout=log_file, stderr=subprocess.STDOUT
    )
    server = ServerProcess(rtmp_port, http_port, data_dir, process, log_path, rtmps_port, env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{server.log()}")
        try:
            server.get_json("/healthz")
            return server
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server did not become healthy:\n{server.log()}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path)
    yield proc
    proc.stop()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def factory(extra_env: dict[str, str] | None = None, rtmps: bool = False) -> ServerProcess:
        index = len(started)
        directory = tmp_path / f"server{index}"
        directory.mkdir()
        proc = start_server(directory, extra_env, rtmps)
        started.append(proc)
        return proc

    yield factory
    for proc in started:
        proc.stop()


def api_call(
    server: ServerProcess, method: str, path: str, token: str | None = None, body: Any = None
) -> tuple[int, Any]:
    """One /api/v1 request to a server process: (status, JSON body or None), error statuses included."""
    request = urllib.request.Request(server.http_url("/api/v1" + path), method=method)
    if body is not None:
        request.data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else None


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (as a subjectAltName, which TLS clients check), its own CA."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            require("openssl"),
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


def require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} is not installed (.ci/run installs it)")
    return path


def ffmpeg_publish(
    url: str, seconds: float, *, size: str = "640x360", rate: int = 25, gop: int = 25, extra: list[str] | None = None
) -> subprocess.Popen[bytes]:
    """A real ffmpeg publishing testsrc + sine as H.264/AAC at real-time pace."""
    cmd = [
        require("ffmpeg"),
        "-hide_banner",
        "-loglevel",
        "error",
        "-re",
        "-f",
        "lavfi",
        "-i",
        f"testsrc=size={size}:rate={rate}",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=44100",
        "-t",
        str(seconds),
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-tune",
        "zerolatency",
        "-g",
        str(gop),
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-b:a",
        "64k",
        *(extra or []),
        "-f",
        "flv",
        url,
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for_stream(server: ServerProcess, app: str, name: str, timeout: float = 10.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = server.get_json("/api/v1/streams")
        assert isinstance(data, dict)
        for stream in data["streams"]:
            if stream["app"] == app and stream["name"] == name and stream["video"]:
                return dict(stream)
        time.sleep(0.1)
    raise AssertionError(f"stream {app}/{name} never went live:\n{server.log()[-3000:]}")
