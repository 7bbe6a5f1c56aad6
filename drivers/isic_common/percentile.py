"""The one percentile every latency figure uses: `status` p99 and `bench` p99 mean the same thing.

Nearest rank (the smallest value with at least q % of the values at or below it): always a latency
that was actually observed, never a value between two measurements, and defined for a single value,
so a short window still gives a figure. numpy's default (linear interpolation) and
`statistics.quantiles` would each give a slightly different p99 from the same numbers.
"""

import math
from typing import Iterable, Optional


def percentile(values: Iterable[float], q: float) -> Optional[float]:
    """The q-th percentile (0..100, nearest rank) of `values`, None when there are none."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be within 0..100, not {q}")
    ordered = sorted(values)
    if not ordered:
        return None
    rank = math.ceil(q / 100.0 * len(ordered))
    return ordered[max(0, min(len(ordered), rank) - 1)]
