"""The uncertainty figures `isic-model evaluate --json` adds: coverage_95, interval width, ECE, unknown fibres.

Kept apart from evaluate.py so the figures are computed once, from the station's own Predictions
(`isic_station.uncertainty_metrics` does the arithmetic, so the station bench can use it too).
"""

from pathlib import Path
from typing import Any, Dict, Sequence

import numpy as np

from isic_common.errors import ModelError
from isic_model.calibration_data import apply_records, collect
from isic_station.manifest import load_manifest
from isic_station.uncertainty import UncertaintyCalibration
from isic_station.uncertainty_metrics import (
    confidence_figures,
    coverage_95,
    median_interval_width,
    unknown_fibre_rates,
)


def interval_figures(predictions: Sequence[Any], truth: np.ndarray, labels: Sequence[str],
                     fibres: Sequence[str]) -> Dict[str, Any]:
    """{coverage_95, median_interval_width, ece, ece_noise_floor, mean_confidence} of a path's Predictions ({}
    without a calibration)."""
    if not predictions or predictions[0].interval_95 is None:
        return {}
    intervals = np.array([[p.interval_95[f] for f in fibres] for p in predictions])
    return {
        "coverage_95": coverage_95(truth, intervals),
        "median_interval_width": median_interval_width(truth, intervals),
        **confidence_figures([p.confidence for p in predictions],
                             [p.blend == label for p, label in zip(predictions, labels)]),
    }


def unknown_fibre_figures(manifest_path: Path, seed: int, samples: int, preset: str, unknown: Sequence[str],
                          known_predictions: Sequence[Any], progress: bool = True,
                          settings: Any = None, room_sensor: bool = True) -> Dict[str, Any]:
    """flagged_unknown over `samples` fabrics each holding one `unknown` fibre (seed + 100, measured with the
    evaluation's `settings`, and like it without a room reading unless `room_sensor`), flagged_known over the
    evaluation's own (known-fibre) Predictions."""
    calibration = UncertaintyCalibration.from_manifest(load_manifest(manifest_path))
    if calibration is None:
        raise ModelError(f"{manifest_path} has no uncertainty calibration: run `isic-model calibrate-uncertainty`")
    records = collect(manifest_path, seed + 100, samples, preset, unknown=list(unknown), progress=progress,
                      settings=settings, room_sensor=room_sensor)
    rates = unknown_fibre_rates(apply_records(calibration, records)["unknown"],
                                [p.unknown_fibre for p in known_predictions])
    return dict(rates, fibres=list(unknown), seed=seed + 100)
