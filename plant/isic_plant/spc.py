"""Individuals / moving-range (I-MR) charts and the Western Electric and Nelson run rules.

Pure functions over a series of individual values (one fibre's fraction, result after result, in a
lot): the limits come from the lot's first `baseline` points (phase I): centre = their mean,
sigma = mean moving range / d2 (d2 = 1.128 for ranges of two), the MR chart's upper limit
D4 x mean MR (D4 = 3.267). Each rule is named as plants choose them in config:

| name | rule | source |
|---|---|---|
| we1 | one point beyond 3 sigma | Western Electric rule 1 (Nelson 1) |
| we2 | 2 of 3 consecutive points beyond 2 sigma, same side | Western Electric rule 2 (Nelson 5) |
| we3 | 4 of 5 consecutive points beyond 1 sigma, same side | Western Electric rule 3 (Nelson 6) |
| we4 | 8 consecutive points on one side of the centre | Western Electric rule 4 (Nelson 2 uses 9) |
| trend6 | 6 points steadily increasing or decreasing | Nelson 3 |
| alternating14 | 14 points alternating up and down | Nelson 4 |
| stratification15 | 15 points within 1 sigma, either side | Nelson 7 |
| mixture8 | 8 points with none within 1 sigma, both sides | Nelson 8 |
"""

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

D2 = 1.128
D4 = 3.267
DEFAULT_RULES = ("we1", "we2", "we3", "we4")


@dataclass(frozen=True)
class Limits:
    centre: float
    sigma: float
    mr_mean: float
    points: int      # how many points they were computed from

    @property
    def ucl(self) -> float:
        return self.centre + 3 * self.sigma

    @property
    def lcl(self) -> float:
        return self.centre - 3 * self.sigma

    @property
    def mr_ucl(self) -> float:
        return D4 * self.mr_mean


def moving_ranges(values: Sequence[float]) -> List[float]:
    return [abs(b - a) for a, b in zip(values, values[1:])]


def limits(values: Sequence[float]) -> Optional[Limits]:
    """I-MR limits from `values` (the baseline), or None with fewer than 2 points."""
    if len(values) < 2:
        return None
    ranges = moving_ranges(values)
    mr_mean = sum(ranges) / len(ranges)
    return Limits(sum(values) / len(values), mr_mean / D2, mr_mean, len(values))


def _beyond(z: Sequence[float], n: int, of: int, level: float) -> bool:
    window = z[-of:]
    if len(window) < of or abs(z[-1]) <= level:
        return False
    side = 1 if z[-1] > 0 else -1
    return sum(1 for v in window if v * side > level) >= n


def _trend(z: Sequence[float], n: int) -> bool:
    if len(z) < n:
        return False
    diffs = [b - a for a, b in zip(z[-n:], z[-n + 1:])]
    return all(d > 0 for d in diffs) or all(d < 0 for d in diffs)


def _alternating(z: Sequence[float], n: int) -> bool:
    if len(z) < n:
        return False
    diffs = [b - a for a, b in zip(z[-n:], z[-n + 1:])]
    return all(d != 0 for d in diffs) and all(a * b < 0 for a, b in zip(diffs, diffs[1:]))


RULES: Dict[str, Tuple[int, Callable[[Sequence[float]], bool]]] = {
    # name -> (points the rule looks back over, test on the z-scores ending at the newest point)
    "we1": (1, lambda z: abs(z[-1]) > 3),
    "we2": (3, lambda z: _beyond(z, 2, 3, 2)),
    "we3": (5, lambda z: _beyond(z, 4, 5, 1)),
    "we4": (8, lambda z: len(z) >= 8 and (all(v > 0 for v in z[-8:]) or all(v < 0 for v in z[-8:]))),
    "trend6": (6, lambda z: _trend(z, 6)),
    "alternating14": (14, lambda z: _alternating(z, 14)),
    "stratification15": (15, lambda z: len(z) >= 15 and all(abs(v) < 1 for v in z[-15:])),
    "mixture8": (8, lambda z: len(z) >= 8 and all(abs(v) > 1 for v in z[-8:])
                 and any(v > 0 for v in z[-8:]) and any(v < 0 for v in z[-8:])),
}


def window_needed(rules: Sequence[str]) -> int:
    """How many points before the newest one a check of `rules` looks at."""
    return max(RULES[r][0] for r in rules) if rules else 1


def violations(values: Sequence[float], lim: Limits, rules: Sequence[str], start: int = 0) -> List[Tuple[int, str]]:
    """(index, rule) for every point at index >= start that completes a violation of one of `rules`."""
    if lim.sigma <= 0:
        return []  # a constant series: no spread to judge against
    z = [(v - lim.centre) / lim.sigma for v in values]
    window = window_needed(rules)
    found = []
    for i in range(max(start, 0), len(z)):
        head = z[max(0, i + 1 - window): i + 1]
        found.extend((i, name) for name in rules if RULES[name][1](head))
    return found
