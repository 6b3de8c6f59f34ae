"""The one percentile of the benchmark tools: nearest rank, on known values."""

from __future__ import annotations

import pytest

from benchmarks.lib.stats import percentile, percentiles


def test_nearest_rank_known_values() -> None:
    values = [15.0, 20.0, 35.0, 40.0, 50.0]  # the textbook example of the nearest-rank method
    assert percentile(values, 5) == 15.0
    assert percentile(values, 30) == 20.0
    assert percentile(values, 40) == 20.0
    assert percentile(values, 50) == 35.0
    assert percentile(values, 100) == 50.0


def test_order_does_not_matter_and_no_interpolation() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.0  # the lower middle value, not 2.5
    assert percentile([4.0, 1.0, 3.0, 2.0], 75) == 3.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 76) == 4.0


def test_ends_and_tails() -> None:
    hundred = [float(i) for i in range(1, 101)]
    assert percentile(hundred, 0) == 1.0
    assert percentile(hundred, 50) == 50.0
    assert percentile(hundred, 99) == 99.0
    assert percentile(hundred, 99.5) == 100.0
    assert percentile(hundred, 100) == 100.0
    assert percentile([7.0, 3.0, 9.0], 99) == 9.0  # fewer than 100 values: p99 is the maximum
    assert percentile([42.0], 1) == 42.0


def test_empty_and_out_of_range() -> None:
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile([1.0], 101)
    with pytest.raises(ValueError):
        percentile([1.0], -1)


def test_percentiles_names_and_rounding() -> None:
    values = [0.04, 0.06, 0.11, 10.26]
    assert percentiles(values, (50, 99, 100)) == {"p50": 0.1, "p99": 10.3, "max": 10.3}
    assert percentiles(values, (99.9,), digits=2) == {"p99.9": 10.26}
    assert percentiles([], (50, 100)) == {"p50": None, "max": None}
