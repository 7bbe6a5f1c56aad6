"""Reflectance from a spectrometer's raw counts and its dark and white references.

A spectrometer's counts depend on its lamp, detector and integration time; reflectance does not:
R = (S - D) / (W - D), with D the dark reference (light path closed) and W the white reference tile
(R_tile ~ 1). The one place the formula lives: the station's calibration store and the virtual lab's
simulated measurement both call it, so the lab computes exactly what the station would.
"""

import numpy as np


def reflectance_from_counts(raw: np.ndarray, dark: np.ndarray, white: np.ndarray) -> np.ndarray:
    """R = (S - D) / (W - D); pixels whose white is not above the dark give R = 0."""
    span = np.asarray(white, dtype=np.float64) - dark
    return np.divide(np.asarray(raw, dtype=np.float64) - dark, span, out=np.zeros_like(span), where=span > 0)
