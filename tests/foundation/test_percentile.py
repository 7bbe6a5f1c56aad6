"""The one percentile: nearest rank, so `status` and every `bench` quote the same kind of p50/p99."""

import pytest

from isic_common.percentile import percentile


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0], 99) == 5.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 99) == 99.0
    assert percentile(reversed(values), 0) == 1.0 and percentile(values, 100) == 100.0


def test_percentile_is_always_an_observed_value() -> None:
    # Linear interpolation (numpy's default) would give 2.5 and 3.97 here.
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 99) == 4.0


def test_percentile_refuses_a_q_outside_0_to_100() -> None:
    with pytest.raises(ValueError, match="0..100"):
        percentile([1.0], 101)
