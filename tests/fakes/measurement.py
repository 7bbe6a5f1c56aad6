"""Synthetic raw inputs of one measurement for the runtime's tests: a NIR reflectance and microscope frames.

Only shape and plausibility matter here (smooth reflectance with absorption bands on an instrument
axis wider than the model grid; frames with dark fibre strokes); the virtual lab does physics.
"""

from typing import List, Tuple

import numpy as np

INSTRUMENT_NM = np.linspace(900.0, 1700.0, 256)  # the virtual lab's InGaAs axis
BANDS_NM = (1030.0, 1200.0, 1360.0, 1450.0, 1540.0, 1660.0)


def reflectance(rng: np.random.Generator, wavelengths_nm: np.ndarray = INSTRUMENT_NM) -> np.ndarray:
    """A reflectance curve (0..1) with random band depths, a sloped baseline and a little noise."""
    slope = rng.uniform(-1e-4, 1e-4) * (wavelengths_nm - wavelengths_nm.mean())
    absorbance = rng.uniform(0.1, 0.3) + slope
    for centre in BANDS_NM:
        width = rng.uniform(15.0, 60.0)
        absorbance = absorbance + rng.uniform(0.0, 0.4) * np.exp(-0.5 * ((wavelengths_nm - centre) / width) ** 2)
    return 10.0 ** -absorbance + rng.normal(0.0, 1e-3, wavelengths_nm.shape)


def frames(rng: np.random.Generator, count: int = 2, shape: Tuple[int, int] = (64, 80)) -> List[np.ndarray]:
    """Bright-field BGR frames with two dark fibre strokes each, one in each half of the frame, far enough
    apart that the label detector never closes them into one printed code (three strokes drawn anywhere
    sometimes made a whole frame "label", and a label in one frame blocks its tiles in every frame)."""
    out = []
    half = shape[0] // 2
    for _ in range(count):
        frame = np.full(shape + (3,), 210, np.uint8)
        frame += rng.integers(0, 6, frame.shape, dtype=np.uint8)
        for low in (0, half + 8):
            row = int(rng.integers(low, low + half - 12))
            frame[row : row + 4, :] = int(rng.integers(20, 80))
        out.append(frame)
    return out
