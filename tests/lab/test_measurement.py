"""Whole measurements: determinism for a seed and what the station receives."""

import numpy as np
import pytest

from isic_drivers.lab import ReferenceTile, draw_sample, scan_counts, simulate_measurement
from isic_drivers.lab.instrument import InstrumentModel


def _measure(seed: int):
    rng = np.random.default_rng(seed)
    sample = draw_sample(rng, "default")
    return simulate_measurement(sample, rng, n_frames=2, frame_size=128)


def test_same_seed_gives_the_same_data() -> None:
    a, b = _measure(31), _measure(31)
    assert a.truth.sample == b.truth.sample
    for field in ("raw_counts", "dark_counts", "white_counts", "reflectance", "wavelengths_nm"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert all(np.array_equal(x, y) for x, y in zip(a.frames, b.frames))
    assert a.truth.frame_counts == b.truth.frame_counts
    c = _measure(32)
    assert not np.array_equal(a.raw_counts, c.raw_counts)
    assert not np.array_equal(a.frames[0], c.frames[0])


def test_measurement_carries_what_the_station_and_the_trainer_need() -> None:
    m = _measure(33)
    assert m.raw_counts.shape == m.dark_counts.shape == m.white_counts.shape == (256,)
    assert m.raw_counts.dtype == np.float64 and m.coadd == 8
    assert len(m.frames) == 2 and m.frames[0].shape == (128, 128, 3) and m.frames[0].dtype == np.uint8
    assert m.truth.fibre_names == ["cotton", "linen", "viscose", "polyester", "nylon"]
    assert m.truth.composition.sum() == pytest.approx(1.0, abs=1e-6)
    assert m.truth.blend.count("/") == sum(v > 0 for v in m.truth.composition) - 1
    assert len(m.truth.frame_counts) == 2
    # co-adding: the mean of 8 scans is smoother than one scan
    single = simulate_measurement(m.truth.sample, np.random.default_rng(1), coadd=1, n_frames=0)
    assert np.std(np.diff(single.reflectance, 2)) > np.std(np.diff(m.reflectance, 2))


def test_scan_counts_of_reference_tiles() -> None:
    inst = InstrumentModel()
    rng = np.random.default_rng(34)
    white = scan_counts(inst, ReferenceTile("white"), 8000, rng)
    dark = scan_counts(inst, ReferenceTile("dark"), 8000, rng)
    sample = scan_counts(inst, draw_sample(rng), 8000, rng)
    assert white.dtype == dark.dtype == sample.dtype == np.uint16
    assert np.all(dark < sample) and np.median(sample) < np.median(white)


def test_low_snr_preset_gives_noisier_spectra() -> None:
    def noise(preset: str) -> float:
        rng = np.random.default_rng(35)
        values = []
        for _ in range(8):
            m = simulate_measurement(draw_sample(rng, preset), rng, n_frames=0)
            a = -np.log10(np.clip(m.reflectance, 1e-4, None))
            values.append(np.std(np.diff(a, 2)))
        return float(np.median(values))

    assert noise("low_snr") > 5 * noise("default")
