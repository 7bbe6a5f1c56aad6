"""One station measurement of a sample, as the station's devices would deliver it.

Spectrum: co-added raw scans, a dark and a white reference at the same integration time, and the
reflectance the station computes from them, R = (S - D) / (W - D). Frames: the microscope's view
of the same sample. Truth: what was really under the probe. The emulated spectrometer uses
`scan_counts` for a single scan of whatever lies on the stage.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union

import numpy as np

from isic_drivers.lab.fibres import FibreSet, load_fibres, resolve_fibres
from isic_drivers.lab.instrument import InstrumentModel, dark_counts, raw_counts, white_counts
from isic_drivers.lab.microscope import DrawnFibre, FrameDecorator, render_frame
from isic_drivers.lab.sample import Nuisance, Sample, blend_label, composition_vector
from isic_drivers.lab.spectra import reflectance
from isic_drivers.lab.stage import ReferenceTile
from isic_drivers.lab.wavelength_standard import wavelength_standard_reflectance
from isic_drivers.reflectance import reflectance_from_counts


@dataclass
class MeasurementTruth:
    """What was really measured: composition over the fibre set, blend label, fibres in each frame.

    `frame_fibres[k]` lists the fibres drawn in frame k (type, diameter, centre line in pixels): the
    ground truth a trainer uses to tell which fibre types each image tile shows.
    """

    fibre_names: List[str]
    composition: np.ndarray
    blend: str
    frame_counts: List[Dict[str, int]]
    sample: Sample
    frame_fibres: List[List[DrawnFibre]] = field(default_factory=list)


@dataclass
class Measurement:
    """Co-added raw counts, dark/white references, station reflectance, frames and the truth."""

    wavelengths_nm: np.ndarray
    integration_us: int
    coadd: int
    raw_counts: np.ndarray
    dark_counts: np.ndarray
    white_counts: np.ndarray
    reflectance: np.ndarray
    frames: List[np.ndarray] = field(default_factory=list)
    um_per_px: float = 0.8
    truth: Optional[MeasurementTruth] = None
    temperature_c: Optional[float] = None  # what the spectrometer's sensor reads: the room the sample is in


def scan_counts(instrument: InstrumentModel, target: Union[Sample, ReferenceTile], integration_us: float,
                rng: np.random.Generator, nuisance: Optional[Nuisance] = None,
                fibres: Optional[FibreSet] = None) -> np.ndarray:
    """One raw scan (uint16) of what lies under the probe: a sample, the white tile, or nothing (dark).

    The instrument state comes from `nuisance`, else from the sample's own, else nominal.
    """
    if isinstance(target, ReferenceTile):
        state = nuisance or Nuisance()
        if target.kind == "white":
            return white_counts(instrument, integration_us, rng, state)
        if target.kind == "wavelength":
            tile = wavelength_standard_reflectance(instrument.true_axis(state))
            return raw_counts(instrument, tile, integration_us, rng, state)
        return dark_counts(instrument, integration_us, rng, state)
    state = nuisance or target.nuisance
    r = reflectance(target, instrument.true_axis(state), rng, fibres)
    return raw_counts(instrument, r, integration_us, rng, state)


def simulate_measurement(sample: Sample, rng: np.random.Generator, instrument: Optional[InstrumentModel] = None,
                         integration_us: Optional[int] = None, coadd: int = 8, n_frames: int = 4,
                         frame_size: int = 256, um_per_px: float = 0.8,
                         fibres: Optional[FibreSet] = None, frame_height: Optional[int] = None,
                         decorate: Optional[FrameDecorator] = None) -> Measurement:
    """What the station sees for one measurement of `sample` (deterministic for the rng's seed).

    Frames are `frame_size` wide and `frame_height` (default: `frame_size`) high; `decorate` draws
    on each (e.g. the sample's printed label, as the virtual microscope does). `fibres` is the set
    composition vectors are expressed in (default: the station's five); the physics looks fibres up
    in the full loaded set.
    """
    instrument = instrument or InstrumentModel()
    integration_us = int(integration_us or instrument.default_integration_us)
    if coadd < 1:
        raise ValueError(f"coadd must be >= 1, got {coadd}")
    fibre_set = resolve_fibres(fibres)
    physics = load_fibres(fibre_set.path)
    nu = sample.nuisance
    axis = instrument.true_axis(nu)

    def mean_of(scan) -> np.ndarray:  # co-adding: the mean of `coadd` clipped scans
        return np.mean([scan().astype(float) for _ in range(coadd)], axis=0)

    dark = mean_of(lambda: dark_counts(instrument, integration_us, rng, nu))
    white = mean_of(lambda: white_counts(instrument, integration_us, rng, nu))
    raw = mean_of(lambda: raw_counts(instrument, reflectance(sample, axis, rng, physics), integration_us, rng, nu))
    frames, counts, drawn = [], [], []
    for _ in range(n_frames):
        frame, truth = render_frame(sample, rng, frame_size, frame_height or frame_size, um_per_px, physics,
                                    decorate=decorate)
        frames.append(frame)
        counts.append(truth.counts)
        drawn.append(truth.fibres)
    truth = MeasurementTruth(list(fibre_set), composition_vector(sample, fibre_set),
                             blend_label(sample, fibre_set), counts, sample, drawn)
    return Measurement(instrument.wavelengths_nm, integration_us, coadd, raw, dark, white,
                       reflectance_from_counts(raw, dark, white), frames, um_per_px, truth, float(nu.temperature_c))
