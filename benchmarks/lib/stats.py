"""The one percentile definition every benchmark tool reports with, so their figures compare."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def _rank(ordered: Sequence[float], pct: float) -> float:
    if not 0 <= pct <= 100:
        raise ValueError(f"percentile {pct} is not between 0 and 100")
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def percentile(values: Iterable[float], pct: float) -> float | None:
    """The `pct`-th percentile of `values` by the nearest-rank method; None when there are none.

    Nearest rank: sort the n values and take the one at rank ceil(pct / 100 * n) (1-based, at least 1),
    without interpolating. The result is always a value that was measured; p100 is the maximum and p0
    the minimum; p50 of an even count is the lower middle value (p50 of [1, 2, 3, 4] is 2); p99 of 100
    values is the 99th smallest, p99 of fewer than 100 values is their maximum. `pct` must be in
    [0, 100] (ValueError otherwise).
    """
    ordered = sorted(values)
    return _rank(ordered, pct) if ordered else None


def percentiles(values: Iterable[float], pcts: Iterable[float], digits: int = 1) -> dict[str, float | None]:
    """`percentile` for each of `pcts`, rounded to `digits`, by name: "p50", "p99", ..., and "max" for 100.

    The values are sorted once; every name maps to None when there are no values.
    """
    ordered = sorted(values)
    found: dict[str, float | None] = {}
    for pct in pcts:
        name = "max" if pct == 100 else f"p{pct:g}"
        found[name] = round(_rank(ordered, pct), digits) if ordered else None
    return found
