"""Spectrum preprocessing shared by training, evaluation and both inference backends.

The model sees exactly what this module produces, on the board and in training, so the steps and
their parameters come from the manifest's `spectrum` object and nowhere else. The order is the
schema's: resample the reflectance to the model grid (linear), clip it, absorbance log10(1/R),
SNV scatter correction, Savitzky-Golay smoothing/derivative, standardise with the training mean/std.

numpy only (the board has no scipy): the Savitzky-Golay filter is written out here as a
least-squares polynomial fit, with scipy's `savgol_filter(mode="interp")` edge handling, and the
tests check it against scipy coefficient by coefficient.
"""

from functools import lru_cache
from math import factorial
from typing import Any, Dict, Sequence, Tuple

import numpy as np

from isic_common.errors import ModelError

# Half a grid step of tolerance when checking that the model grid lies inside the instrument axis.
_EDGE_TOLERANCE_STEPS = 0.5


@lru_cache(maxsize=8)
def savgol_matrix(n_points: int, window: int, polyorder: int, deriv: int) -> np.ndarray:
    """The [n, n] matrix G with G @ x == scipy.signal.savgol_filter(x, window, polyorder, deriv, mode='interp').

    Cached and read-only: it depends only on these four integers, and every measurement needs it.

    Interior points use the centred least-squares coefficients; the first and last window//2
    points take the polynomial fitted to the first (last) full window, as scipy's 'interp' mode.
    Derivatives are per grid step (delta = 1), as scipy's default.
    """
    if window % 2 == 0 or window < 3:
        raise ModelError(f"spectrum.savgol.window must be an odd integer >= 3, got {window}")
    if not 0 <= polyorder < window:
        raise ModelError(f"spectrum.savgol.polyorder must be in [0, window), got {polyorder} with window {window}")
    if deriv > polyorder:
        raise ModelError(f"spectrum.savgol.deriv ({deriv}) must not exceed polyorder ({polyorder})")
    if n_points < window:
        raise ModelError(f"spectrum has {n_points} points, fewer than the Savitzky-Golay window {window}")
    half = window // 2
    positions = np.arange(window, dtype=np.float64) - half
    # Least-squares fit of a polynomial in the window position: coefficients = pinv(V) @ y.
    vander = np.vander(positions, polyorder + 1, increasing=True)
    fit = np.linalg.pinv(vander)  # [polyorder+1, window]
    # d^deriv/dt^deriv of sum_k c_k t^k evaluated at position t: sum_k c_k k!/(k-deriv)! t^(k-deriv).
    powers = np.arange(polyorder + 1)
    scale = np.array([factorial(k) / factorial(k - deriv) if k >= deriv else 0.0 for k in powers])

    def weights_at(t: float) -> np.ndarray:
        basis = np.where(powers >= deriv, scale * np.power(t, np.maximum(powers - deriv, 0)), 0.0)
        return basis @ fit  # [window]

    matrix = np.zeros((n_points, n_points), dtype=np.float64)
    centre = weights_at(0.0)
    for row in range(half, n_points - half):
        matrix[row, row - half : row + half + 1] = centre
    for offset in range(half):
        matrix[offset, :window] = weights_at(float(offset - half))
        matrix[n_points - 1 - offset, n_points - window :] = weights_at(float(half - offset))
    matrix.setflags(write=False)
    return matrix


def _interpolation(source_nm: np.ndarray, target_nm: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices and weights of linear interpolation from an ascending source axis to the target grid."""
    step = float(np.median(np.abs(np.diff(source_nm)))) if source_nm.size > 1 else 0.0
    lo, hi = float(source_nm[0]), float(source_nm[-1])
    tol = _EDGE_TOLERANCE_STEPS * step
    if target_nm[0] < lo - tol or target_nm[-1] > hi + tol:
        raise ModelError(
            f"the model's wavelength grid {target_nm[0]:.1f}-{target_nm[-1]:.1f} nm is not inside the "
            f"instrument's axis {lo:.1f}-{hi:.1f} nm; use a spectrometer that covers the model grid"
        )
    right = np.clip(np.searchsorted(source_nm, target_nm, side="right"), 1, source_nm.size - 1)
    left = right - 1
    span = source_nm[right] - source_nm[left]
    frac = np.clip((target_nm - source_nm[left]) / span, 0.0, 1.0)
    return left, right, frac


def preprocess_spectra(reflectance: np.ndarray, wavelengths_nm: Sequence[float], params: Dict[str, Any]) -> np.ndarray:
    """Batch form: reflectance [N, L] on the instrument axis -> model input float32 [N, S].

    `params` is the manifest's `spectrum` object (wavelengths_nm, reflectance_clip, scatter,
    savgol, mean, std).
    """
    refl = np.asarray(reflectance, dtype=np.float64)
    if refl.ndim != 2:
        raise ValueError(f"reflectance must be [N, L], got shape {refl.shape}")
    source_nm = np.asarray(wavelengths_nm, dtype=np.float64)
    if source_nm.shape != (refl.shape[1],):
        raise ModelError(
            f"the instrument's wavelength axis has {source_nm.size} points but the spectrum has {refl.shape[1]}"
        )
    if source_nm.size > 1 and source_nm[0] > source_nm[-1]:
        source_nm, refl = source_nm[::-1], refl[:, ::-1]
    target_nm = np.asarray(params["wavelengths_nm"], dtype=np.float64)

    left, right, frac = _interpolation(source_nm, target_nm)
    x = refl[:, left] * (1.0 - frac) + refl[:, right] * frac
    lo, hi = params["reflectance_clip"]
    x = -np.log10(np.clip(x, float(lo), float(hi)))
    if params["scatter"] == "snv":
        x = (x - x.mean(axis=1, keepdims=True)) / np.maximum(x.std(axis=1, keepdims=True), 1e-12)
    savgol = params.get("savgol")
    if savgol is not None:
        matrix = savgol_matrix(x.shape[1], int(savgol["window"]), int(savgol["polyorder"]), int(savgol["deriv"]))
        x = x @ matrix.T
    mean = np.asarray(params["mean"], dtype=np.float64)
    std = np.asarray(params["std"], dtype=np.float64)
    return ((x - mean) / std).astype(np.float32)


def preprocess_spectrum(reflectance: np.ndarray, wavelengths_nm: Sequence[float], params: Dict[str, Any]) -> np.ndarray:
    """One measurement: reflectance [L] on the instrument axis -> model input float32 [S]."""
    refl = np.asarray(reflectance, dtype=np.float64)
    if refl.ndim != 1:
        raise ValueError(f"reflectance must be one spectrum [L], got shape {refl.shape}")
    return preprocess_spectra(refl[None, :], wavelengths_nm, params)[0]
