"""Composition error figures: what `isic-model evaluate` and `isic-model counting-limit` both report.

Its own module so the two commands share it without importing each other.
"""

from typing import Any, Dict, Sequence

import numpy as np


def composition_figures(
    pred: np.ndarray, truth: np.ndarray, labels: Sequence[str], fibres: Sequence[str]
) -> Dict[str, Any]:
    """mae, mae_all_fibres, mae_per_fibre, mae_per_blend for predicted vs true fractions [N, F]."""
    err = np.abs(pred - truth)
    present = truth > 0
    per_sample = (err * present).sum(axis=1) / present.sum(axis=1)
    per_fibre = {f: round(float(err[present[:, j], j].mean()), 4) for j, f in enumerate(fibres) if present[:, j].any()}
    label_array = np.asarray(labels)
    per_blend = {
        b: round(float(per_sample[label_array == b].mean()), 4)
        for b in sorted(set(labels), key=lambda s: (s.count("/"), s))
        if b.count("/") == 1
    }
    return {
        "mae": round(float(per_sample.mean()), 4),
        "mae_all_fibres": round(float(err.mean()), 4),
        "mae_per_fibre": per_fibre,
        "mae_per_blend": per_blend,
    }
