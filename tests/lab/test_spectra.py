"""Spectrum physics of the virtual lab: bands where the band table puts them, moisture, mixing, distances."""

import numpy as np
import pytest

from isic_drivers.lab import InstrumentModel, Nuisance, Sample, absorbance, simulate_measurement
from isic_drivers.lab.sample import PRESETS, draw_nuisance, with_nuisance
from isic_drivers.lab.spectra import (
    absorption_scatter,
    km_layer_reflectance,
    pure_fibre_distances,
    reflectance,
)

FINE = np.arange(900.0, 2501.0, 1.0)


def _at(a: np.ndarray, nm: float) -> float:
    return float(a[int(nm - FINE[0])])


def _band_depth(a: np.ndarray, centre: float, half_span: float = 30.0) -> float:
    """Absorbance at `centre` above the straight line between centre +- half_span."""
    return _at(a, centre) - 0.5 * (_at(a, centre - half_span) + _at(a, centre + half_span))


def _local_maxima(a: np.ndarray, lo: float, hi: float) -> list:
    i = np.arange(int(lo - FINE[0]), int(hi - FINE[0]))
    return [float(FINE[j]) for j in i if a[j] > a[j - 1] and a[j] > a[j + 1]]


def test_pet_shows_its_1660_band_and_cellulose_does_not() -> None:
    pet = absorbance(Sample({"polyester": 1.0}), FINE)
    peaks = _local_maxima(pet, 1620, 1700)
    assert peaks and abs(peaks[0] - 1660) <= 5, peaks
    assert _band_depth(pet, 1660) > 0.05
    for fibre in ("cotton", "viscose"):
        a = absorbance(Sample({fibre: 1.0}), FINE)
        assert _local_maxima(a, 1620, 1700) == [], fibre
        assert _band_depth(a, 1660) < 0.2 * _band_depth(pet, 1660), fibre
    # linen's trace of lignin has a weak aromatic band there, far weaker than PET's
    linen = absorbance(Sample({"linen": 1.0}), FINE)
    assert _band_depth(linen, 1660) < 0.2 * _band_depth(pet, 1660)


def test_pet_band_is_seen_through_the_instrument() -> None:
    """Through counts, references and R = (S - D)/(W - D) on the InGaAs axis, the 1660 band survives."""
    clean = draw_nuisance(np.random.default_rng(0), "clean")
    m = simulate_measurement(Sample({"polyester": 1.0}, clean), np.random.default_rng(1), n_frames=0, coadd=16)
    a = -np.log10(m.reflectance)
    window = (m.wavelengths_nm > 1620) & (m.wavelengths_nm < 1690)
    peak_nm = m.wavelengths_nm[window][np.argmax(a[window])]
    assert abs(peak_nm - 1660) < 8
    cotton = simulate_measurement(Sample({"cotton": 1.0}, clean), np.random.default_rng(1), n_frames=0, coadd=16)
    ac = -np.log10(cotton.reflectance)
    # cellulose rises monotonically into the 1780 C-H band: its maximum in the window is at the edge
    assert cotton.wavelengths_nm[window][np.argmax(ac[window])] > 1680


@pytest.mark.parametrize("band_nm", [1450.0, 1940.0])
def test_moisture_raises_water_band_absorbance(band_nm: float) -> None:
    dry = absorbance(Sample({"cotton": 1.0}, Nuisance(humidity=0.3)), FINE)
    humid = absorbance(Sample({"cotton": 1.0}, Nuisance(humidity=0.9)), FINE)
    rise = _at(humid, band_nm) - _at(dry, band_nm)
    rise_off_band = _at(humid, 1300.0) - _at(dry, 1300.0)
    assert rise > 0.05
    assert rise > 3 * rise_off_band


def test_moisture_follows_regain() -> None:
    """At the same humidity, viscose (regain 12 %) holds 30x the water of polyester (0.4 %)."""
    def water_k(fibre: str) -> np.ndarray:
        wet = absorption_scatter(Sample({fibre: 1.0}, Nuisance(humidity=0.8)), FINE)[0]
        return wet - absorption_scatter(Sample({fibre: 1.0}, Nuisance(humidity=0.2)), FINE)[0]

    assert _at(water_k("viscose"), 1940) == pytest.approx(30 * _at(water_k("polyester"), 1940), rel=1e-6)

    def water_a(fibre: str) -> np.ndarray:
        wet = absorbance(Sample({fibre: 1.0}, Nuisance(humidity=0.8)), FINE)
        return wet - absorbance(Sample({fibre: 1.0}, Nuisance(humidity=0.2)), FINE)

    # in absorbance the ratio is smaller (a clear fibre shows a little water strongly) but still large
    assert _at(water_a("viscose"), 1940) > 4 * _at(water_a("polyester"), 1940)


def test_temperature_moves_the_water_band_to_shorter_wavelengths() -> None:
    wet = dict(humidity=0.95)
    cold = absorbance(Sample({"polyester": 0.3, "viscose": 0.7}, Nuisance(temperature_c=10.0, **wet)), FINE)
    hot = absorbance(Sample({"polyester": 0.3, "viscose": 0.7}, Nuisance(temperature_c=40.0, **wet)), FINE)
    window = (FINE > 1880) & (FINE < 2000)
    assert FINE[window][np.argmax(hot[window])] < FINE[window][np.argmax(cold[window])]


def test_kubelka_munk_mixing_is_not_linear_in_absorbance() -> None:
    cotton = absorbance(Sample({"cotton": 1.0}), FINE)
    pet = absorbance(Sample({"polyester": 1.0}), FINE)
    blend = absorbance(Sample({"cotton": 0.5, "polyester": 0.5}), FINE)
    linear = 0.5 * (cotton + pet)
    assert np.max(np.abs(blend - linear)) > 0.02
    # and it is Kubelka-Munk: the blend's K/S is the fraction-weighted K over the weighted S
    k, s = absorption_scatter(Sample({"cotton": 0.5, "polyester": 0.5}), FINE)
    k1, s1 = absorption_scatter(Sample({"cotton": 1.0}), FINE)
    k2, s2 = absorption_scatter(Sample({"polyester": 1.0}), FINE)
    water_free = Nuisance(humidity=0.0)
    kw, sw = absorption_scatter(Sample({"cotton": 0.5, "polyester": 0.5}, water_free), FINE)
    k1w, _ = absorption_scatter(Sample({"cotton": 1.0}, water_free), FINE)
    k2w, _ = absorption_scatter(Sample({"polyester": 1.0}, water_free), FINE)
    np.testing.assert_allclose(kw, 0.5 * (k1w + k2w), rtol=1e-9)
    np.testing.assert_allclose(s, 0.5 * (s1 + s2), rtol=1e-9)
    assert k.shape == k1.shape == k2.shape


def test_km_layer_is_r_infinity_when_thick_and_darker_when_thin_over_black() -> None:
    ks = np.array([0.01, 0.1, 1.0])
    r_inf = 1 + ks - np.sqrt(ks ** 2 + 2 * ks)
    np.testing.assert_allclose(km_layer_reflectance(ks, np.full(3, 1e4), 0.05), r_inf, rtol=1e-9)
    thin = km_layer_reflectance(ks, np.full(3, 1.0), 0.0)
    assert np.all(thin < r_inf) and np.all(thin[:2] < r_inf[:2] - 0.1)
    # a non-absorbing layer over black reflects SX / (1 + SX)
    assert km_layer_reflectance(np.array([1e-10]), np.array([1.0]), 0.0)[0] == pytest.approx(0.5, abs=1e-3)


def test_cotton_linen_distance_far_smaller_than_cotton_pet() -> None:
    names = ["cotton", "linen", "viscose", "polyester", "nylon"]
    for lo, hi in ((900, 1700), (900, 2500)):
        d = pure_fibre_distances(names, np.arange(lo, hi + 1.0, 2.0))
        assert np.allclose(d, d.T) and np.allclose(np.diag(d), 0)
        cotton_linen, cotton_pet = d[0, 1], d[0, 3]
        assert cotton_linen < 0.2 * cotton_pet, (lo, hi, d)
        # the three cellulose fibres are each other's nearest neighbours
        for i in range(3):
            others = [j for j in range(5) if j != i]
            nearest = min(others, key=lambda j: d[i, j])
            assert nearest in (0, 1, 2)


def test_dark_dye_lowers_reflectance_across_the_nir() -> None:
    undyed = reflectance(Sample({"cotton": 1.0}), FINE)
    black = reflectance(Sample({"cotton": 1.0}, Nuisance(dye_darkness=1.0, dye_carbon=1.0)), FINE)
    assert np.all(black < undyed)
    assert _at(black, 2400) < 0.8 * _at(undyed, 2400)


def test_reflectance_on_any_axis_matches_the_fine_grid() -> None:
    sample = Sample({"nylon": 0.6, "viscose": 0.4}, Nuisance(scatter_b=1.1, scatter_c=0.02))
    coarse = np.array([950.0, 1234.5, 1660.0, 2222.2])
    fine = reflectance(sample, FINE)
    np.testing.assert_allclose(reflectance(sample, coarse), np.interp(coarse, FINE, fine), atol=2e-3)
    ingaas = InstrumentModel().wavelengths_nm
    r = reflectance(sample, ingaas)
    assert r.shape == ingaas.shape and np.all((r > 0) & (r <= 1))


def test_scatter_terms_act_on_absorbance() -> None:
    base = Sample({"cotton": 1.0})
    a0 = absorbance(base, FINE)
    a = absorbance(with_nuisance(base, scatter_a=0.05, scatter_b=1.2), FINE)
    np.testing.assert_allclose(a, 0.05 + 1.2 * a0, atol=1e-9)


def test_presets_shift_the_nuisance_they_name() -> None:
    rng = np.random.default_rng(0)
    humid = [draw_nuisance(rng, "humid").humidity for _ in range(200)]
    default = [draw_nuisance(rng, "default").humidity for _ in range(200)]
    assert min(humid) > max(default) - 0.01
    low = [draw_nuisance(rng, "low_snr").detector_noise for _ in range(50)]
    assert min(low) > 2.5
    assert {"default", "humid", "dark_dyes", "low_snr"} <= set(PRESETS)
