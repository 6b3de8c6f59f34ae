"""Running a tool: logging, the fd limit, uvloop with clean interruption, and one run per `--target`."""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from benchmarks.lib.clip import EncodedClip, ensure_clip

T = TypeVar("T")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def raise_fd_limit(needed: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE to `needed` (as far as the hard limit lets it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return
        except (ValueError, OSError):
            needed = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the tools that run once per `--target` (rtmp_load, hls_load), as `run_targets` reads them."""
    parser.add_argument("--target", choices=("ours", "nginx", "both"), default="ours")
    parser.add_argument("--duration", type=float, default=12.0, help="measurement window, seconds")
    parser.add_argument("--clip", type=Path, default=None, help="FLV clip (default: the reference clip, made once)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--start-interval", type=float, default=0.02, help="seconds between publisher starts")
    parser.add_argument("--keep-temp", action="store_true", help="keep the servers' temp dirs (logs, HLS)")


async def run_targets(
    args: argparse.Namespace, run_one: Callable[[str, argparse.Namespace, EncodedClip], Awaitable[T]]
) -> list[T]:
    """Load the clip (`--clip`, or the reference clip), then run `run_one` for each target of `--target`
    ("ours", "nginx" or "both": ours, then nginx), one after the other. SIGTERM cancels the run like Ctrl-C."""
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    if main_task is not None:
        loop.add_signal_handler(signal.SIGTERM, main_task.cancel)
    clip_path = args.clip if args.clip is not None else await asyncio.to_thread(ensure_clip)
    clip = await asyncio.to_thread(EncodedClip.read, clip_path)
    log(f"clip {clip_path}: {clip.duration_ms / 1000:.2f} s, {clip.bitrate_bps / 1e6:.2f} Mbit/s")
    targets = ["ours", "nginx"] if args.target == "both" else [args.target]
    results: list[T] = []
    for index, target in enumerate(targets):
        if index:
            await asyncio.sleep(2.0)  # let the previous run's sockets and processes go
        results.append(await run_one(target, args, clip))
    return results


def run_interruptible(main: Coroutine[Any, Any, list[T]]) -> list[T] | None:
    """Run the tool's main coroutine on uvloop when available; None when interrupted (all stopped)."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    except ImportError:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        try:
            return runner.run(main)
        except (KeyboardInterrupt, asyncio.CancelledError):
            log("interrupted; everything started was stopped")
            return None
