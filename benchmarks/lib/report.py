"""The one report writer (JSON), and the Markdown table and summary the tools print.

The JSON report is the run as data: when, on what machine, the tool's arguments, its wall time, and every
figure of every result (a dataclass or a dict), under "results" or the key a tool names.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

R = TypeVar("R")


class TargetFigures(Protocol):
    """What the ratio and the summary read of a result (`measure.TargetResult` has it)."""

    target: str
    cpu_pct_per_stream: float
    rss_mb: float
    loadgen_saturated: bool
    loadgen_cpu_pct: float
    send_lateness_p99_ms: float
    error_samples: list[str]
    server_log_problems: list[str]


F = TypeVar("F", bound=TargetFigures)


def _plain(result: Any) -> Any:
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return dataclasses.asdict(result)
    return result


def write_report(
    path: Path,
    args: argparse.Namespace,
    started: float,
    results: Sequence[Any],
    ratio: Mapping[str, float] | None = None,
    key: str = "results",
    extra: Mapping[str, Any] | None = None,
) -> None:
    """The run as JSON into `path`: the date (UTC), the machine, `args`, the wall time since `started`
    (time.monotonic()), the `results` under `key`, `ratio` (ours over nginx) when given, and the tool's `extra`
    top-level entries (dataclasses as dicts)."""
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "wall_seconds": round(time.monotonic() - started, 1),
        key: [_plain(r) for r in results],
        "ratio": ratio,
    }
    for name, value in (extra or {}).items():
        report[name] = _plain(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def format_table(results: Iterable[R], columns: Sequence[tuple[str, Callable[[R], str]]]) -> str:
    """One row per result, one cell per (header, getter) of `columns`."""
    return markdown_table([name for name, _ in columns], ([get(r) for _, get in columns] for r in results))


def ms(value: float | None, missing: str = "-") -> str:
    """A figure in whole milliseconds for a table cell; `missing` when there is none."""
    return missing if value is None else f"{value:.0f}"


def ratios(results: Sequence[TargetFigures]) -> dict[str, float] | None:
    """Ours over nginx: CPU per stream and RSS; None without both (or with nginx at 0)."""
    ours = next((r for r in results if r.target == "ours"), None)
    nginx = next((r for r in results if r.target == "nginx"), None)
    if ours is None or nginx is None or not nginx.cpu_pct_per_stream or not nginx.rss_mb:
        return None
    return {
        "cpu_per_stream_ours_over_nginx": round(ours.cpu_pct_per_stream / nginx.cpu_pct_per_stream, 2),
        "rss_ours_over_nginx": round(ours.rss_mb / nginx.rss_mb, 2),
    }


def print_summary(
    results: Sequence[F],
    columns: Sequence[tuple[str, Callable[[F], str]]],
    ratio: Mapping[str, float] | None,
    notes: Callable[[F], Iterable[str]] = lambda r: (),
) -> None:
    """The table, the ratio, and per result: a saturated-generator warning, `notes`, errors and log problems."""
    print()
    print(format_table(results, columns))
    if ratio is not None:
        print(
            f"\nours/nginx: CPU per stream {ratio['cpu_per_stream_ours_over_nginx']:.2f}x, "
            f"RSS {ratio['rss_ours_over_nginx']:.2f}x"
        )
    for result in results:
        if result.loadgen_saturated:
            print(
                f"\nWARNING [{result.target}]: the load generator is saturated (CPU {result.loadgen_cpu_pct}%, "
                f"send lateness p99 {result.send_lateness_p99_ms} ms): the figures measure it, not the server."
            )
        for line in notes(result):
            print(f"[{result.target}] {line}")
        for line in result.error_samples:
            print(f"[{result.target}] {line}")
        for line in result.server_log_problems:
            print(f"[{result.target}] server log: {line}")
