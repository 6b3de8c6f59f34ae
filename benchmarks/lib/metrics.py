"""Our server's own figures: its Prometheus text from /metrics, and what the tools take from it."""

from __future__ import annotations

import contextlib
import re

_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) (\S+)$", re.M)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition as `name{labels}` (or `name`) -> value; comments and odd lines skipped."""
    samples: dict[str, float] = {}
    for match in _SAMPLE.finditer(text):
        with contextlib.suppress(ValueError):
            samples[match.group(1)] = float(match.group(2))
    return samples


def family(samples: dict[str, float], name: str) -> dict[str, float]:
    """The samples of one metric by their label text (without braces; "" when unlabelled)."""
    found: dict[str, float] = {}
    prefix = name + "{"
    for key, value in samples.items():
        if key == name:
            found[""] = value
        elif key.startswith(prefix) and key.endswith("}"):
            found[key[len(prefix) : -1]] = value
    return found


def first_label(labels: str) -> str:
    """The value of the first label of a label text (`reason="x",...` -> `x`), or the text itself."""
    return labels.split('"')[1] if '"' in labels else labels


def server_figures(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What our server says about itself over a window: event-loop lag, GC collections, HLS memory."""

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    figures: dict[str, float] = {}
    if "mediaserver_event_loop_lag_max_seconds" in after:
        figures["event_loop_lag_max_ms"] = round(after["mediaserver_event_loop_lag_max_seconds"] * 1000, 1)
        samples = delta("mediaserver_event_loop_lag_samples_total")
        if samples > 0:
            mean = delta("mediaserver_event_loop_oversleep_seconds_total") / samples
            figures["event_loop_lag_mean_ms"] = round(mean * 1000, 2)
    for generation in range(3):
        key = f'python_gc_collections_total{{generation="{generation}"}}'
        if key in after:
            figures[f"gc_gen{generation}_collections"] = delta(key)
    hls = sum(v for k, v in after.items() if k.startswith("mediaserver_hls_memory_bytes"))
    if hls:
        figures["hls_memory_mb"] = round(hls / 1e6, 1)
    return figures
