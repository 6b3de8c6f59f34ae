"""The parent of a machine's workers: it prepares what must be done once (the database schema, the first
admin, the recording index against the disk), keeps the stream registry, starts one `mediaserver serve`
process per worker, and restarts any that exits while the machine runs. SIGTERM or SIGINT stops them all."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from mediaserver.cluster.coordinator import Coordinator
from mediaserver.cluster.role import WorkerRole
from mediaserver.config import Config

log = logging.getLogger("mediaserver.cluster")

RESTART_MIN, RESTART_MAX = 0.5, 10.0
# A worker that lived this long before it died is restarted at once: it was not failing at start-up.
HEALTHY_SECONDS = 30.0
STOP_GRACE = 15.0


class Supervisor:
    def __init__(
        self, config: Config, config_path: str | None, count: int, prepare: Callable[[Config], Awaitable[None]]
    ) -> None:
        """`prepare`: the once-per-machine start-up, done before any worker starts (the composition root's)."""
        self.config = config
        self._prepare = prepare
        self.config_path = config_path
        self.count = count
        runtime = Path(config.runtime_dir())
        self.coordinator = Coordinator(runtime / "parent.sock")
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self.restarts = 0
        self._stopping = asyncio.Event()

    def _command(self) -> list[str]:
        command = [sys.executable, "-m", "mediaserver", "serve"]
        if self.config_path:
            command += ["--config", self.config_path]
        return command

    async def _spawn(self, index: int) -> asyncio.subprocess.Process:
        role = WorkerRole(index, self.count, str(self.coordinator.path))
        process = await asyncio.create_subprocess_exec(*self._command(), env={**os.environ, **role.environ()})
        self.processes[index] = process
        log.info("event=worker_started worker=%d pid=%d", index, process.pid)
        return process

    async def _keep(self, index: int) -> None:
        delay = RESTART_MIN
        while not self._stopping.is_set():
            started = time.monotonic()
            process = await self._spawn(index)
            code = await process.wait()
            if self._stopping.is_set():
                return
            lived = time.monotonic() - started
            log.error("event=worker_exited worker=%d pid=%d code=%s lived_seconds=%.1f", index, process.pid, code,
                      lived)  # fmt: skip
            self.restarts += 1
            delay = RESTART_MIN if lived > HEALTHY_SECONDS else min(RESTART_MAX, delay * 2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def run(self) -> int:
        await self.coordinator.start()
        try:
            await self._prepare(self.config)
        except Exception:
            await self.coordinator.stop()
            raise
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stopping.set)
        log.info("event=workers_starting workers=%d parent_pid=%d", self.count, os.getpid())
        keepers = [asyncio.create_task(self._keep(index)) for index in range(self.count)]
        await self._stopping.wait()
        log.info("event=shutdown workers=%d", self.count)
        await self._stop_workers()
        for keeper in keepers:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        await self.coordinator.stop()
        return 0

    async def _stop_workers(self) -> None:
        running = [p for p in self.processes.values() if p.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in running)), STOP_GRACE)
        except TimeoutError:
            for process in running:
                if process.returncode is None:
                    log.warning("event=worker_killed pid=%d reason=stop_timeout", process.pid)
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            await asyncio.gather(*(p.wait() for p in running))
