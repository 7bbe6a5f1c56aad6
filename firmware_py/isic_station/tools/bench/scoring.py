"""Scoring results against the truth, and pooled figures with their 95 % confidence intervals.

One place for it, shared by `isic-station bench accuracy` (the real station's results) and
`isic-model evaluate` (offline), so both count the same way. `score_result` scores one result;
`pooled_figures` turns many into the figures the commands print. A later figure (a coverage or a
calibration error, say) is one more key in `score_result`'s dict and one more entry in
`pooled_figures`.

Intervals: accuracy with Wilson's score interval (right near 100 %, where the normal
approximation leaves [0, 1]); MAE with the normal approximation of the mean of per-result errors
(hundreds of results, errors independent between samples). At the station several results come
from the same piece of fabric under the probe and share its error, so they are not independent:
scores that name their `sample` also get `accuracy_ci95_by_sample` and `coverage_95_ci95`, percentile
intervals of a bootstrap that draws whole samples (each with all its results), and `pieces`, how
many distinct pieces were scored (`isic-model evaluate`'s `samples` is its count of measurements).
Offline every measurement is its own piece: the two agree there.
"""

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from isic_station.uncertainty_metrics import (
    confidence_figures,
    coverage_95,
    inside_interval,
    median_interval_width,
)

Z95 = 1.959964
BOOTSTRAP_DRAWS = 2000
BOOTSTRAP_SEED = 0  # the same scores give the same interval


def score_result(composition: Mapping[str, float], blend: str, truth: Mapping[str, float],
                 true_blend: str, confidence: Optional[float] = None,
                 interval_95: Optional[Mapping[str, Sequence[float]]] = None,
                 flags: Optional[Sequence[str]] = None, sample: Optional[str] = None) -> Dict[str, Any]:
    """One result against the sample that was measured (`sample`: which piece of fabric, when several
    results may come from one; None: this result's own).

    `correct`: the blend class matches; `abs_error`: |predicted - true| averaged over the fibres
    the sample contains (as `isic-model evaluate` counts MAE); `blend`: the true blend. With the
    result's `confidence` and `interval_95` (as published), also `confidence` and, per fibre the
    sample contains, `present_truth` and `present_intervals` for the coverage figures. With the
    result's `flags`, `unknown_fibre`: whether it was flagged as holding a fibre the model does not know, and
    `outside_trained_range`: whether it was measured in a room outside the model's trained range.
    """
    present = [f for f, v in truth.items() if v > 0]
    error = sum(abs(float(composition.get(f, 0.0)) - float(truth[f])) for f in present) / len(present)
    score: Dict[str, Any] = {"correct": blend == true_blend, "abs_error": error, "blend": true_blend}
    if sample is not None:
        score["sample"] = sample
    if confidence is not None:
        score["confidence"] = float(confidence)
    if interval_95 is not None:
        score["present_truth"] = [float(truth[f]) for f in present]
        score["present_intervals"] = [[float(v) for v in interval_95[f]] for f in present]
    if flags is not None:
        score["unknown_fibre"] = "unknown_fibre" in flags
        score["outside_trained_range"] = "outside_trained_range" in flags
    return score


def uncertainty_figures(scores: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """`coverage_95`, `median_interval_width`, `ece` (with its noise floor and the mean confidence) of scored
    results that carry intervals and confidences (the definitions of `uncertainty_metrics`, as `isic-model
    evaluate` uses them), and
    `flagged_known`, the share of results with flags that were flagged `unknown_fibre` (the samples
    scored hold known fibres only); `outside_trained_range`, the share flagged so, and `accuracy_within_trained`,
    the accuracy of the others (what the station vouches for; None when all were flagged)."""
    figures: Dict[str, Any] = {}
    with_intervals = [s for s in scores if "present_intervals" in s]
    if with_intervals:
        truth = np.array([v for s in with_intervals for v in s["present_truth"]]).reshape(-1, 1)
        intervals = np.array([iv for s in with_intervals for iv in s["present_intervals"]]).reshape(-1, 1, 2)
        figures.update(coverage_95=coverage_95(truth, intervals),
                       median_interval_width=median_interval_width(truth, intervals))
    with_confidence = [s for s in scores if "confidence" in s]
    if with_confidence:
        figures.update(confidence_figures([s["confidence"] for s in with_confidence],
                                          [bool(s["correct"]) for s in with_confidence]))
    with_flags = [s for s in scores if "unknown_fibre" in s]
    if with_flags:
        figures["flagged_known"] = round(sum(bool(s["unknown_fibre"]) for s in with_flags) / len(with_flags), 4)
        within = [s for s in with_flags if not s.get("outside_trained_range")]
        figures["outside_trained_range"] = round(1.0 - len(within) / len(with_flags), 4)
        figures["accuracy_within_trained"] = (round(sum(bool(s["correct"]) for s in within) / len(within), 4)
                                              if within else None)
    return figures


def sample_bootstrap_interval(hits: Sequence[float], counts: Sequence[float], samples: Sequence[str]) -> List[float]:
    """95 % percentile interval of sum(hits) / sum(counts) when whole samples are drawn with replacement
    (`hits[i]`, `counts[i]` are result i's, `samples[i]` its piece of fabric)."""
    keys = sorted(set(samples))
    index = {key: i for i, key in enumerate(keys)}
    per_hits, per_counts = np.zeros(len(keys)), np.zeros(len(keys))
    for h, c, key in zip(hits, counts, samples):
        per_hits[index[key]] += h
        per_counts[index[key]] += c
    draws = np.random.default_rng(BOOTSTRAP_SEED).integers(0, len(keys), size=(BOOTSTRAP_DRAWS, len(keys)))
    ratios = per_hits[draws].sum(axis=1) / np.maximum(per_counts[draws].sum(axis=1), 1e-12)
    return [round(float(v), 4) for v in np.percentile(ratios, [2.5, 97.5])]


def _by_sample(scores: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """`pieces`, `accuracy_ci95_by_sample` and (with intervals) `coverage_95_ci95` of scores that name
    their sample; {} when they do not."""
    named = [s for s in scores if "sample" in s]
    if not named or len(named) < len(scores):
        return {}
    keys = [str(s["sample"]) for s in named]
    out: Dict[str, Any] = {"pieces": len(set(keys)), "accuracy_ci95_by_sample": sample_bootstrap_interval(
        [float(bool(s["correct"])) for s in named], [1.0] * len(named), keys)}
    with_intervals = [s for s in named if "present_intervals" in s]
    if with_intervals:
        inside = [float(inside_interval(s["present_truth"], s["present_intervals"]).sum()) for s in with_intervals]
        out["coverage_95_ci95"] = sample_bootstrap_interval(
            inside, [len(s["present_truth"]) for s in with_intervals], [str(s["sample"]) for s in with_intervals])
    return out


def wilson_interval(successes: int, n: int) -> List[float]:
    """95 % Wilson score interval of a proportion."""
    if n == 0:
        return [0.0, 1.0]
    p = successes / n
    centre = (p + Z95 ** 2 / (2 * n)) / (1 + Z95 ** 2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / (1 + Z95 ** 2 / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def mean_interval(values: Sequence[float]) -> List[float]:
    """95 % normal-approximation interval of a mean."""
    n = len(values)
    if n < 2:
        return [float("nan"), float("nan")]
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = Z95 * sd / math.sqrt(n)
    return [mean - half, mean + half]


def pooled_figures(scores: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """`n`, `accuracy`, `accuracy_ci95`, `mae`, `mae_ci95` and `mae_per_blend` (binary blends) of scored
    results, and the `uncertainty_figures` of those that carry intervals and confidences."""
    n = len(scores)
    if n == 0:
        return {"n": 0, "accuracy": None, "accuracy_ci95": None, "mae": None, "mae_ci95": None, "mae_per_blend": {}}
    correct = sum(1 for s in scores if s["correct"])
    errors = [float(s["abs_error"]) for s in scores]
    per_blend: Dict[str, List[float]] = {}
    for s in scores:
        if s["blend"].count("/") == 1:
            per_blend.setdefault(s["blend"], []).append(float(s["abs_error"]))
    return {
        "n": n,
        "accuracy": round(correct / n, 4),
        "accuracy_ci95": [round(v, 4) for v in wilson_interval(correct, n)],
        "mae": round(sum(errors) / n, 4),
        "mae_ci95": [round(v, 4) for v in mean_interval(errors)],
        "mae_per_blend": {b: round(sum(v) / len(v), 4) for b, v in sorted(per_blend.items())},
        **uncertainty_figures(scores),
        **_by_sample(scores),
    }


def figures_line(figures: Mapping[str, Any]) -> str:
    """`accuracy 95.3 % (95 % CI 93.1-96.8), MAE 0.0190 (0.0175-0.0205), n 400` for a console."""
    if not figures["n"]:
        return "no scored results"
    lo, hi = figures["accuracy_ci95"]
    mlo, mhi = figures["mae_ci95"]
    line = (f"accuracy {100 * figures['accuracy']:.1f} % (95 % CI {100 * lo:.1f}-{100 * hi:.1f}), "
            f"MAE {figures['mae']:.4f} ({mlo:.4f}-{mhi:.4f}), n {figures['n']}")
    if figures.get("accuracy_ci95_by_sample") is not None:
        slo, shi = figures["accuracy_ci95_by_sample"]
        line += f" of {figures['pieces']} pieces (accuracy {100 * slo:.1f}-{100 * shi:.1f} by sample)"
    if figures.get("coverage_95") is not None:
        line += f", coverage_95 {figures['coverage_95']:.3f} (median width {figures['median_interval_width']:.3f}"
        if figures.get("coverage_95_ci95") is not None:
            clo, chi = figures["coverage_95_ci95"]
            line += f"; {clo:.3f}-{chi:.3f} by sample"
        line += ")"
    if figures.get("ece") is not None:
        line += (f", ECE {figures['ece']:.3f} (a perfectly calibrated model: {figures['ece_noise_floor']:.3f}; "
                 f"mean confidence {figures['mean_confidence']:.3f})")
    if figures.get("flagged_known") is not None:
        line += f", flagged unknown_fibre {100 * figures['flagged_known']:.1f} %"
    return line
