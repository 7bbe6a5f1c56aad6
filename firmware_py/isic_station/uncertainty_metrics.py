"""How honest the uncertainty is: interval coverage, interval width, calibration error, unknown-fibre rates.

Shared by `isic-model evaluate`, `isic-model calibrate-uncertainty` and the station bench (numpy
only, so it runs on the board). Coverage and width are taken over the fibres a sample contains
(a fibre that is absent and predicted absent is easy to cover and would flatter the figure).
"""

from typing import Dict, Optional, Sequence

import numpy as np


def inside_interval(truth: np.ndarray, intervals: np.ndarray) -> np.ndarray:
    """Whether each true fraction lies in its [low, high] interval ([N, F] and [N, F, 2]; 1e-9 of rounding)."""
    truth, intervals = np.asarray(truth, dtype=np.float64), np.asarray(intervals, dtype=np.float64)
    return (intervals[..., 0] <= truth + 1e-9) & (truth - 1e-9 <= intervals[..., 1])


def coverage_95(truth: np.ndarray, intervals: np.ndarray) -> Optional[float]:
    """Share of true fractions inside their interval, over the fibres present ([N, F] and [N, F, 2])."""
    present = np.asarray(truth, dtype=np.float64) > 0
    if not present.any():
        return None
    return round(float(inside_interval(truth, intervals)[present].mean()), 4)


def median_interval_width(truth: np.ndarray, intervals: np.ndarray) -> Optional[float]:
    """Median width (high - low, as a fraction) of the intervals of the fibres present."""
    present = np.asarray(truth) > 0
    if not present.any():
        return None
    widths = np.asarray(intervals, dtype=np.float64)[..., 1] - np.asarray(intervals, dtype=np.float64)[..., 0]
    return round(float(np.median(widths[present])), 4)


def expected_calibration_error(confidence: Sequence[float], correct: Sequence[bool], bins: int = 10) -> Optional[float]:
    """ECE: the share-weighted mean |accuracy - mean confidence| over equal-width confidence bins."""
    conf = np.asarray(confidence, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    if conf.size == 0:
        return None
    which = np.minimum((conf * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.mean() * abs(hit[mask].mean() - conf[mask].mean())
    return round(float(total), 4)


def ece_noise_floor(confidence: Sequence[float], bins: int = 10, draws: int = 200, seed: int = 0) -> Optional[float]:
    """The median ECE a perfectly calibrated model would show with these confidences (each answer right
    with probability = its confidence), over `draws` simulated outcomes: what ECE reads from counting
    noise alone at this sample size (about 0.03 for 180 results near 0.95 confidence, 0.014 for 900)."""
    conf = np.asarray(confidence, dtype=np.float64)
    if conf.size == 0:
        return None
    rng = np.random.default_rng(seed)
    values = [expected_calibration_error(conf, rng.random(conf.size) < conf, bins) for _ in range(draws)]
    return round(float(np.median(values)), 4)


def confidence_figures(confidence: Sequence[float], correct: Sequence[bool]) -> Dict[str, Optional[float]]:
    """{ece, ece_noise_floor, mean_confidence} of blend answers: how far the confidence is from the hit rate,
    what counting noise alone would read at this sample size, and the mean confidence (against the accuracy
    it tells over- from underconfidence, which ECE does not)."""
    conf = [float(c) for c in confidence]
    return {"ece": expected_calibration_error(conf, correct), "ece_noise_floor": ece_noise_floor(conf),
            "mean_confidence": round(float(np.mean(conf)), 4) if conf else None}


def unknown_fibre_rates(flags_unknown: Sequence[bool], flags_known: Sequence[bool]) -> Dict[str, Optional[float]]:
    """{flagged_unknown: share of samples holding an unknown fibre that were flagged, flagged_known:
    share of ordinary samples flagged, n_unknown, n_known}."""
    unknown, known = np.asarray(flags_unknown, dtype=bool), np.asarray(flags_known, dtype=bool)
    return {
        "flagged_unknown": round(float(unknown.mean()), 4) if unknown.size else None,
        "flagged_known": round(float(known.mean()), 4) if known.size else None,
        "n_unknown": int(unknown.size),
        "n_known": int(known.size),
    }
