"""Servers of several workers or nodes, and what the tests read of them."""

from __future__ import annotations

import re
import subprocess
import time
import urllib.request
from pathlib import Path

import psutil

from tests.conftest import ServerProcess, require, start_server


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (a machine's /metrics has one per worker)."""
    total = 0.0
    for line in server.get_text("/metrics").splitlines():
        found = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? ([-+0-9.e]+)$", line)
        if found is None:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', found.group(1) or ""))
        if all(have.get(key) == value for key, value in labels.items()):
            total += float(found.group(2))
    return total


def start_workers(tmp_path: Path, count: int = 2, extra_env: dict[str, str] | None = None) -> ServerProcess:
    """`mediaserver serve` with `count` workers, returned once every worker answers (its samples in /metrics)."""
    server = start_server(tmp_path, {"MEDIASERVER_CLUSTER_WORKERS": str(count), **(extra_env or {})})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = server.get_text("/metrics")
        if all(f'worker="{index}"' in text for index in range(count)):
            return server
        time.sleep(0.2)
    server.stop()
    raise AssertionError(f"the workers did not all come up:\n{server.log()[-4000:]}")


def worker_pids(server: ServerProcess) -> dict[int, int]:
    """worker index -> pid, read from the workers' environment."""
    pids = {}
    for child in psutil.Process(server.process.pid).children():
        try:
            role = child.environ().get("MEDIASERVER_WORKER_ROLE", "")
        except psutil.Error:
            continue
        if role:
            pids[int(role.partition("/")[0])] = child.pid
    return pids


def owner(server: ServerProcess, app: str, name: str) -> int | None:
    data = server.get_json("/api/v1/streams")
    assert isinstance(data, dict)
    for stream in data["streams"]:
        if stream["app"] == app and stream["name"] == name:
            return int(stream["worker"])
    return None


def ffprobe_codecs(url: str, timeout: float = 20) -> list[str]:
    """The codecs real ffprobe finds at `url` (it reads until it has seen every stream's parameters)."""
    out = subprocess.run(
        [require("ffprobe"), "-v", "error", "-show_entries", "stream=codec_name", "-of", "csv=p=0", url],
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return out.stdout.decode().split()


def fetch(url: str) -> str:
    """GET on a connection of its own (so that the kernel may hand it to any worker)."""
    request = urllib.request.Request(url, headers={"Connection": "close"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(response.read().decode())
