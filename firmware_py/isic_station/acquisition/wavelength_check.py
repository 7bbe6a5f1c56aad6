"""Wavelength axis check: find the reference tile's certified bands, fit the axis offset, keep it.

A spectrometer's wavelength axis drifts (temperature, mechanics); 2-3 nm moves the model's bands
enough to cost several points of accuracy. With the wavelength reference tile under the probe,
`calibrate wavelength` measures its reflectance, finds each certified band's minimum (parabola
through the three lowest points of the smoothed spectrum near where the band should be), and fits
the offset true = reported + offset as the median over the bands. The offset is stored beside the
dark/white references (`wavelength.json` in the calibration folder, with time, instrument serial and
the band positions) and added to the reported axis of every later measurement, so the spectrum is
resampled onto the model grid at the wavelengths it really has. A check that finds the axis moved by
more than `DRIFT_LIMIT_NM` since the previous one says so (`wavelength_drift`).
"""

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from isic_common.errors import StationError

FILE_NAME = "wavelength.json"
DRIFT_LIMIT_NM = 0.5  # a check finding more than this since the previous one flags wavelength_drift
MAX_OFFSET_NM = 8.0  # bands are searched within this distance of their certified position
MIN_BANDS = 3  # bands that must be found for a fit
MAX_SCATTER_NM = 1.0  # bands disagreeing more than this (median absolute deviation) make the fit unusable


class WavelengthCheckFailed(StationError):
    """The reference tile's bands were not found or disagree: nothing is stored (names why)."""


@dataclass(frozen=True)
class WavelengthFit:
    """One check: the fitted offset (nm, true = reported + offset) and the band positions found."""

    offset_nm: float
    scatter_nm: float
    bands_nm: Dict[str, float]  # certified position -> position found on the reported axis
    fitted_at: float
    serial: Optional[str] = None


def _band_minimum(axis: np.ndarray, smoothed: np.ndarray, centre: float) -> Optional[float]:
    """Reported-axis position of the band minimum near `centre` (None when it is not there)."""
    near = np.flatnonzero(np.abs(axis - centre) <= MAX_OFFSET_NM)
    if near.size < 3:
        return None
    i = int(near[np.argmin(smoothed[near])])
    if i == 0 or i == axis.size - 1 or i in (near[0], near[-1]):
        return None  # the minimum sits on the edge of the window: no band inside it
    y0, y1, y2 = smoothed[i - 1], smoothed[i], smoothed[i + 1]
    denominator = y0 - 2.0 * y1 + y2
    if denominator <= 0:
        return None
    step = 0.5 * (y0 - y2) / denominator  # vertex of the parabola, in pixels from i
    return float(np.interp(i + step, np.arange(axis.size), axis))


def fit_offset(reflectance: np.ndarray, wavelengths_nm: np.ndarray, certified_nm: Sequence[float],
               serial: Optional[str] = None) -> WavelengthFit:
    """The axis offset from one reflectance spectrum of the reference tile (WavelengthCheckFailed if unusable)."""
    axis = np.asarray(wavelengths_nm, dtype=np.float64)
    r = np.asarray(reflectance, dtype=np.float64)
    smoothed = np.convolve(r, np.ones(3) / 3.0, mode="same")
    found = {}
    for centre in certified_nm:
        position = _band_minimum(axis, smoothed, float(centre))
        if position is not None:
            found[float(centre)] = position
    if len(found) < MIN_BANDS:
        raise WavelengthCheckFailed(
            f"wavelength check: found {len(found)} of the reference tile's {len(certified_nm)} bands "
            f"(need {MIN_BANDS}); is the wavelength reference tile under the probe, and dark/white calibrated?")
    shifts = np.array([c - p for c, p in found.items()])
    offset = float(np.median(shifts))
    scatter = float(np.median(np.abs(shifts - offset)))
    if scatter > MAX_SCATTER_NM:
        raise WavelengthCheckFailed(f"wavelength check: the bands disagree by {scatter:.2f} nm (limit "
                                    f"{MAX_SCATTER_NM} nm): {sorted(shifts.round(2).tolist())}")
    return WavelengthFit(round(offset, 3), round(scatter, 3), {f"{c:g}": round(p, 3) for c, p in found.items()},
                         time.time(), serial)


class WavelengthStore:
    """The stored offset (`wavelength.json` in the calibration folder) and what a new check found."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / FILE_NAME
        self.fit: Optional[WavelengthFit] = self._load()

    def _load(self) -> Optional[WavelengthFit]:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            return WavelengthFit(float(doc["offset_nm"]), float(doc["scatter_nm"]), dict(doc["bands_nm"]),
                                 float(doc["fitted_at"]), doc.get("serial"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StationError(f"wavelength calibration {self.path} cannot be read ({exc}): "
                               "delete it and run `calibrate wavelength` again") from None

    @property
    def offset_nm(self) -> float:
        """The correction added to the reported axis (0 before any check)."""
        return self.fit.offset_nm if self.fit is not None else 0.0

    def corrected_axis(self, wavelengths_nm: np.ndarray) -> np.ndarray:
        """The reported axis moved to the wavelengths the pixels really see."""
        return np.asarray(wavelengths_nm, dtype=np.float64) + self.offset_nm

    def save(self, fit: WavelengthFit) -> Dict[str, Any]:
        """Keep `fit` (atomically) and answer what changed: offset, drift since the previous check, flags."""
        previous = self.fit
        drift = fit.offset_nm - previous.offset_nm if previous is not None else fit.offset_nm
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(fit), indent=1), encoding="utf-8")
        os.replace(tmp, self.path)
        self.fit = fit
        flags: List[str] = ["wavelength_drift"] if abs(drift) > DRIFT_LIMIT_NM else []
        return {"reference": "wavelength", "offset_nm": fit.offset_nm, "drift_nm": round(drift, 3),
                "previous_offset_nm": previous.offset_nm if previous is not None else None,
                "drift_limit_nm": DRIFT_LIMIT_NM, "scatter_nm": fit.scatter_nm, "bands_nm": fit.bands_nm,
                "flags": flags, "file": str(self.path)}
