"""What a process is in a machine of workers: told by its parent through the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ROLE_ENV = "MEDIASERVER_WORKER_ROLE"  # "<index>/<count>"
PARENT_ENV = "MEDIASERVER_WORKER_PARENT"  # the parent's Unix socket


@dataclass(frozen=True, slots=True)
class WorkerRole:
    index: int
    count: int
    parent_socket: str

    @property
    def primary(self) -> bool:
        """Worker 0 runs the machine-wide jobs (tier moves, retention, samples, alerts, dashboard figures)."""
        return self.index == 0

    def rtmp_socket(self) -> str:
        return str(Path(self.parent_socket).parent / f"rtmp-{self.index}.sock")

    def http_socket(self) -> str:
        return str(Path(self.parent_socket).parent / f"http-{self.index}.sock")

    def handover_socket(self) -> str:
        return handover_socket_beside(self.http_socket(), self.index)

    def environ(self) -> dict[str, str]:
        return {ROLE_ENV: f"{self.index}/{self.count}", PARENT_ENV: self.parent_socket}

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> WorkerRole | None:
        env = os.environ if environ is None else environ
        role, parent = env.get(ROLE_ENV, ""), env.get(PARENT_ENV, "")
        index, _, count = role.partition("/")
        if not (parent and index.isdigit() and count.isdigit() and int(index) < int(count)):
            return None
        return cls(int(index), int(count), parent)


def handover_socket_beside(http_socket: str, index: int) -> str:
    """Where worker `index` takes HTTP connections handed over by the others (`mediaserver.http.handover`): in
    the folder of its internal HTTP socket."""
    return str(Path(http_socket).with_name(f"handover-{index}.sock"))
