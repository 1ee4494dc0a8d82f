"""percentile: linear interpolation between the ordered values, defined for any count."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from tidal.runtime.stats import percentile


def test_percentiles_interpolate_between_the_ordered_values():
    values = [40, 10, 30, 20]  # any order
    assert percentile(values, 0) == 10 and percentile(values, 100) == 40
    assert percentile(values, 50) == 25
    assert percentile(values, 99) == pytest.approx(39.7)


def test_one_value_is_every_percentile_and_none_is_nan():
    assert percentile([7.5], 50) == percentile([7.5], 99) == 7.5
    assert math.isnan(percentile([], 50))


def test_the_figures_are_those_of_statistics_quantiles_inclusive():
    rng = random.Random(7)
    for _ in range(200):
        values = [rng.uniform(0, 100) for _ in range(rng.randint(2, 50))]
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        for q in (50, 90, 95, 99):
            assert percentile(values, q) == pytest.approx(cuts[q - 1], rel=1e-12)
