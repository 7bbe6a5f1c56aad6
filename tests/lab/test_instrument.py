"""The instrument model: counts from reflectance, saturation at the ADC maximum, references."""

import numpy as np

from isic_drivers.lab import (
    InstrumentModel,
    Nuisance,
    Sample,
    dark_counts,
    raw_counts,
    simulate_measurement,
    white_counts,
)
from isic_drivers.lab.instrument import saturating_integration_us
from isic_drivers.lab.spectra import reflectance
from isic_drivers.reflectance import reflectance_from_counts


def test_counts_clip_at_the_adc_maximum() -> None:
    inst = InstrumentModel()
    rng = np.random.default_rng(0)
    t_sat = saturating_integration_us(inst)
    below = white_counts(inst, int(0.8 * t_sat), rng)
    assert below.dtype == np.uint16 and below.max() < inst.adc_max
    over = white_counts(inst, 3 * t_sat, rng)
    assert over.dtype == np.uint16
    assert over.max() == inst.adc_max
    assert (over == inst.adc_max).sum() > inst.n_pixels // 2  # a plateau, not a single hot pixel
    # the raw counts of a bright sample clip the same way
    assert raw_counts(inst, np.full(inst.n_pixels, 0.95), 3 * t_sat, rng).max() == inst.adc_max


def test_counts_grow_with_integration_time_and_lamp() -> None:
    inst = InstrumentModel()
    rng = np.random.default_rng(1)
    dark = dark_counts(inst, 4000, rng).astype(float)
    short = white_counts(inst, 2000, rng).astype(float) - dark
    long = white_counts(inst, 4000, rng).astype(float) - dark
    assert 1.8 < np.median(long / short) < 2.2
    weak = white_counts(inst, 4000, rng, Nuisance(lamp_intensity=0.5)).astype(float) - dark
    assert 0.45 < np.median(weak / long) < 0.55


def test_dark_counts_rise_with_dark_current_and_time() -> None:
    inst = InstrumentModel()
    rng = np.random.default_rng(2)
    cool = np.mean([dark_counts(inst, 100_000, rng).mean() for _ in range(4)])
    warm = np.mean([dark_counts(inst, 100_000, rng, Nuisance(dark_current_factor=3.0)).mean() for _ in range(4)])
    assert warm - cool > 300  # 2 counts/ms x 100 ms x (3 - 1)
    assert abs(dark_counts(inst, 1000, rng).mean() - inst.dark_level) < 20


def test_station_reflectance_recovers_the_sample() -> None:
    """With references, R = (S - D)/(W - D) gives back the true reflectance within noise."""
    sample = Sample({"cotton": 0.7, "polyester": 0.3})
    m = simulate_measurement(sample, np.random.default_rng(3), coadd=32, n_frames=0)
    truth = reflectance(sample, m.wavelengths_nm) / InstrumentModel().white_tile_reflectance
    inner = (m.wavelengths_nm > 950) & (m.wavelengths_nm < 1650)
    np.testing.assert_allclose(m.reflectance[inner], truth[inner], atol=0.01)


def test_stray_light_compresses_bands() -> None:
    inst = InstrumentModel()
    sample = Sample({"polyester": 1.0})
    axis = inst.wavelengths_nm

    def measured(stray: float) -> np.ndarray:
        nu = Nuisance(stray_light=stray, detector_noise=0.0)
        rng = np.random.default_rng(4)
        d = np.mean([dark_counts(inst, 8000, rng, nu) for _ in range(16)], axis=0)
        w = np.mean([white_counts(inst, 8000, rng, nu) for _ in range(16)], axis=0)
        s = np.mean([raw_counts(inst, reflectance(sample, axis), 8000, rng, nu) for _ in range(16)], axis=0)
        return reflectance_from_counts(s, d, w)

    clean, stray = measured(0.0), measured(0.05)
    band = np.argmin(np.abs(axis - 1660))
    assert stray[band] > clean[band] + 0.01  # the band is shallower
    assert np.ptp(stray[20:-20]) < np.ptp(clean[20:-20])


def test_wavelength_axis_is_the_polynomial() -> None:
    inst = InstrumentModel()
    axis = inst.wavelengths_nm
    assert axis.shape == (256,) and abs(axis[0] - 900) < 1e-9 and abs(axis[-1] - 1700) < 0.1
    assert np.all(np.diff(axis) > 0)
    shifted = inst.true_axis(Nuisance(wavelength_shift_nm=1.5))
    np.testing.assert_allclose(shifted - axis, 1.5)
    ext = InstrumentModel.extended()
    assert ext.wavelengths_nm[-1] > 2450 and ext.response(np.array([2300.0]))[0] > 0.3
