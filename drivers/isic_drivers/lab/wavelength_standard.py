"""The wavelength reference tile: a diffuse standard with sharp, certified NIR absorption bands.

Labs check a spectrometer's wavelength axis against such a standard (polystyrene, or rare-earth
oxides such as holmium/erbium oxide in a diffuse matrix). The virtual lab's tile is a bright
matrix (reflectance ~0.9) with narrow Gaussian bands at the positions of its certificate,
`CERTIFIED_BANDS_NM`; the station reads those positions from here, as it would read the tile's
certificate. A shifted instrument axis moves the bands on the reported axis by the shift.
"""

from typing import Tuple

import numpy as np

# Band centres (nm) of the certificate, band full width at half minimum, depth, matrix reflectance.
CERTIFIED_BANDS_NM: Tuple[float, ...] = (975.0, 1120.0, 1260.0, 1395.0, 1530.0, 1655.0)
BAND_FWHM_NM = 10.0
BAND_DEPTH = 0.55
MATRIX_REFLECTANCE = 0.9


def wavelength_standard_reflectance(true_axis_nm: np.ndarray) -> np.ndarray:
    """Diffuse reflectance of the tile at the wavelengths the pixels really see."""
    wl = np.asarray(true_axis_nm, dtype=float)
    sigma = BAND_FWHM_NM / 2.3548
    absorbed = sum(np.exp(-0.5 * ((wl - c) / sigma) ** 2) for c in CERTIFIED_BANDS_NM)
    return MATRIX_REFLECTANCE * (1.0 - BAND_DEPTH * np.clip(absorbed, 0.0, 1.0))
