"""The board's spectrum preprocessing matches the training-side reference within 1e-5.

The reference is written here the way a training script would: np.interp, numpy SNV and
scipy.signal.savgol_filter. The board's version (numpy only) must give the same model input.
"""

import copy

import numpy as np
import pytest

from fakes import measurement
from isic_station.preprocess.spectrum import preprocess_spectrum

scipy_signal = pytest.importorskip("scipy.signal", reason="the training-side reference needs scipy (train extra)")

PARITY_TOLERANCE = 1e-5


def reference_features(reflectance, wavelengths_nm, params):
    """Training-side preprocessing up to (not including) the standardisation, float64."""
    x = np.interp(params["wavelengths_nm"], wavelengths_nm, reflectance)
    lo, hi = params["reflectance_clip"]
    x = np.log10(1.0 / np.clip(x, lo, hi))
    if params["scatter"] == "snv":
        x = (x - x.mean()) / x.std()
    savgol = params["savgol"]
    if savgol is not None:
        x = scipy_signal.savgol_filter(x, savgol["window"], savgol["polyorder"], deriv=savgol["deriv"], mode="interp")
    return x


@pytest.mark.parametrize(
    "scatter, savgol",
    [
        ("snv", {"window": 7, "polyorder": 2, "deriv": 1}),
        ("snv", {"window": 11, "polyorder": 3, "deriv": 2}),
        ("snv", {"window": 5, "polyorder": 2, "deriv": 0}),
        ("none", {"window": 9, "polyorder": 2, "deriv": 1}),
        ("snv", None),
    ],
)
def test_board_preprocessing_matches_training_reference(tiny_manifest, scatter, savgol):
    rng = np.random.default_rng(8)
    spectra = [measurement.reflectance(rng) for _ in range(40)]
    params = copy.deepcopy(tiny_manifest.spectrum)
    params["scatter"], params["savgol"] = scatter, savgol
    # Standardise with statistics of the reference features, as training derives mean/std.
    features = np.array([reference_features(r, measurement.INSTRUMENT_NM, params) for r in spectra])
    params["mean"], params["std"] = features.mean(axis=0).tolist(), features.std(axis=0).tolist()
    reference = (features - np.array(params["mean"])) / np.array(params["std"])

    board = np.array([preprocess_spectrum(r, measurement.INSTRUMENT_NM, params) for r in spectra])
    assert board.dtype == np.float32 and board.shape == reference.shape
    worst = np.abs(board.astype(np.float64) - reference).max()
    assert worst <= PARITY_TOLERANCE, f"max abs difference {worst:.3g} > {PARITY_TOLERANCE}"


def test_parity_check_detects_a_different_filter(tiny_manifest):
    """The comparison can fail: a window the board was not told about gives a clear difference."""
    rng = np.random.default_rng(9)
    refl = measurement.reflectance(rng)
    params = copy.deepcopy(tiny_manifest.spectrum)
    params["mean"], params["std"] = [0.0] * len(params["mean"]), [1.0] * len(params["std"])
    other = dict(params, savgol={"window": 9, "polyorder": 2, "deriv": 1})
    board = preprocess_spectrum(refl, measurement.INSTRUMENT_NM, params)
    assert np.abs(board - reference_features(refl, measurement.INSTRUMENT_NM, other)).max() > 1e-3
