"""A NIR spectrometer as the virtual lab sees it: reflectance in, 16-bit raw counts out.

Counts = dark level (offset + fixed pattern + dark current x time) + lamp x detector response x
integration time x reflectance + stray light, with shot and read noise, clipped at the ADC
maximum. The station then needs a dark and a white reference to get reflectance back, exactly as
with a real instrument: R = (S - D) / (W - D).
"""

import math
from dataclasses import dataclass, field
from typing import Optional, Tuple

import numpy as np

from isic_drivers.lab.fibres import LabConfigError
from isic_drivers.lab.sample import Nuisance

_NOMINAL = Nuisance()
# Planck's second radiation constant hc/k in nm*K.
_C2_NM_K = 1.4388e7


@dataclass(frozen=True)
class InstrumentModel:
    """Wavelength axis, detector and lamp of one spectrometer (defaults: InGaAs 900-1700 nm, 256 px, 16 bit)."""

    serial: str = "ISIC-VNIR-0001"
    model: str = "virtual-InGaAs-256"
    n_pixels: int = 256
    # lambda(p) = sum c_k p^k over pixel index p (the OBP wavelength coefficients).
    wavelength_coeffs: Tuple[float, ...] = (900.0, 3.1627, -1.0e-4)
    adc_max: int = 65535
    dark_level: float = 1500.0          # counts: ADC offset with the shutter closed
    fixed_pattern: float = 25.0         # counts: sd of the per-pixel offset pattern
    dark_current_per_ms: float = 2.0    # counts per millisecond of integration
    white_counts_per_us: float = 5.0    # counts per microsecond from a perfect white at the response peak
    read_noise: float = 6.0             # counts rms
    electrons_per_count: float = 10.0   # detector gain: shot noise variance = signal / gain
    lamp_temperature_k: float = 2900.0  # halogen lamp colour temperature
    cutoff_nm: float = 1720.0           # InGaAs long-wavelength cut-off (50 % point)
    cutoff_width_nm: float = 22.0
    default_integration_us: int = 8000
    min_integration_us: int = 10
    max_integration_us: int = 10_000_000
    white_tile_reflectance: float = 0.99  # the calibrated reference tile (sintered PTFE)
    pattern_seed: int = 1
    _pattern: np.ndarray = field(init=False, repr=False, compare=False)
    _peak_response: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pattern = np.random.default_rng(self.pattern_seed).normal(0.0, self.fixed_pattern, self.n_pixels)
        object.__setattr__(self, "_pattern", pattern)
        peak = float(_raw_response(self, np.linspace(800.0, 2600.0, 361)).max())
        object.__setattr__(self, "_peak_response", peak)

    @classmethod
    def extended(cls) -> "InstrumentModel":
        """An extended-InGaAs instrument, 900-2500 nm over 512 pixels (sees the combination bands)."""
        return cls(serial="ISIC-VNIR-X001", model="virtual-extInGaAs-512", n_pixels=512,
                   wavelength_coeffs=(900.0, 1600.0 / 511.0), cutoff_nm=2550.0, cutoff_width_nm=30.0)

    @property
    def wavelengths_nm(self) -> np.ndarray:
        """The nominal axis the instrument reports (its wavelength calibration)."""
        p = np.arange(self.n_pixels, dtype=float)
        return sum(c * p ** k for k, c in enumerate(self.wavelength_coeffs))

    def true_axis(self, nuisance: Optional[Nuisance] = None) -> np.ndarray:
        """The wavelengths the pixels really see: nominal + the instrument's wavelength shift."""
        shift = (nuisance or _NOMINAL).wavelength_shift_nm
        return self.wavelengths_nm + shift

    def response(self, wavelengths_nm: np.ndarray) -> np.ndarray:
        """Relative white signal (lamp blackbody x InGaAs responsivity with its cut-off), peak 1 on 800-2600 nm."""
        return _raw_response(self, wavelengths_nm) / self._peak_response


def _raw_response(instrument: InstrumentModel, wl: np.ndarray) -> np.ndarray:
    wl = np.asarray(wl, dtype=float)
    planck = wl ** -5.0 / np.expm1(_C2_NM_K / (wl * instrument.lamp_temperature_k))
    responsivity = wl / (1.0 + np.exp((wl - instrument.cutoff_nm) / instrument.cutoff_width_nm))
    return planck * responsivity


def _check_integration(instrument: InstrumentModel, integration_us: float) -> None:
    if not instrument.min_integration_us <= integration_us <= instrument.max_integration_us:
        raise LabConfigError(f"integration time {integration_us} us outside "
                         f"{instrument.min_integration_us}..{instrument.max_integration_us} us")


def _detector_counts(instrument: InstrumentModel, photo_counts: np.ndarray, integration_us: float,
                     rng: np.random.Generator, nuisance: Nuisance) -> np.ndarray:
    """Add dark signal and noise to the photo-generated counts; round and clip like a 16-bit ADC."""
    dark_current = instrument.dark_current_per_ms * nuisance.dark_current_factor * integration_us / 1000.0
    generated = photo_counts + dark_current
    shot_sd = np.sqrt(np.maximum(generated, 0.0) / instrument.electrons_per_count)
    read_sd = instrument.read_noise * nuisance.detector_noise
    noise = rng.standard_normal(instrument.n_pixels) * np.hypot(shot_sd, read_sd)
    counts = instrument.dark_level + instrument._pattern + generated + noise
    return np.clip(np.rint(counts), 0, instrument.adc_max).astype(np.uint16)


def _white_rate(instrument: InstrumentModel, nuisance: Nuisance, lamp: float) -> np.ndarray:
    return instrument.white_counts_per_us * lamp * instrument.response(instrument.true_axis(nuisance))


def raw_counts(instrument: InstrumentModel, reflectance: np.ndarray, integration_us: float,
               rng: np.random.Generator, nuisance: Optional[Nuisance] = None) -> np.ndarray:
    """One scan of a target of the given reflectance (on `instrument.true_axis(nuisance)`), uint16 counts.

    The lamp is at `lamp_intensity * (1 + lamp_drift)`: the drift is how far it moved since the
    white reference. Stray light adds a flat `stray_light` share of the mean white signal.
    """
    nuisance = nuisance or _NOMINAL
    _check_integration(instrument, integration_us)
    rate = _white_rate(instrument, nuisance, nuisance.lamp_intensity * (1.0 + nuisance.lamp_drift))
    photo = rate * np.asarray(reflectance, dtype=float) + nuisance.stray_light * rate.mean()
    return _detector_counts(instrument, photo * integration_us, integration_us, rng, nuisance)


def white_counts(instrument: InstrumentModel, integration_us: float, rng: np.random.Generator,
                 nuisance: Optional[Nuisance] = None) -> np.ndarray:
    """One scan of the white reference tile (lamp at `lamp_intensity`, no drift)."""
    nuisance = nuisance or _NOMINAL
    _check_integration(instrument, integration_us)
    rate = _white_rate(instrument, nuisance, nuisance.lamp_intensity)
    photo = rate * instrument.white_tile_reflectance + nuisance.stray_light * rate.mean()
    return _detector_counts(instrument, photo * integration_us, integration_us, rng, nuisance)


def dark_counts(instrument: InstrumentModel, integration_us: float, rng: np.random.Generator,
                nuisance: Optional[Nuisance] = None) -> np.ndarray:
    """One scan with the light path closed (dark reference): offset, fixed pattern, dark current, noise."""
    nuisance = nuisance or _NOMINAL
    _check_integration(instrument, integration_us)
    return _detector_counts(instrument, np.zeros(instrument.n_pixels), integration_us, rng, nuisance)


def saturating_integration_us(instrument: InstrumentModel, nuisance: Optional[Nuisance] = None) -> int:
    """The shortest integration time at which the white reference reaches the ADC maximum."""
    nuisance = nuisance or _NOMINAL
    peak = float(_white_rate(instrument, nuisance, nuisance.lamp_intensity).max())
    headroom = instrument.adc_max - instrument.dark_level
    return int(math.ceil(headroom / peak))
