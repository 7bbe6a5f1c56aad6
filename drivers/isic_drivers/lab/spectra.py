"""Diffuse NIR reflectance of a fabric sample on any wavelength axis.

Physics, in the order it is applied:
1. Each fibre's absorption K(lambda) is a sum of pseudo-Voigt bands (overtone orders already
   weighted in `fibres.json`) over a small continuum; its scattering S(lambda) falls slowly with
   wavelength. Water (from regain x room humidity, band centres shifted by temperature), a finish
   and dyes (carbon-black-like broad absorption, organic dye tails) add to K.
2. Mixing follows Kubelka-Munk (Duncan's rule): K and S of the blend are mass-fraction weighted
   sums, and reflectance comes from K/S, so a blend's absorbance is NOT the weighted sum of its
   fibres' absorbances.
3. Finite thickness: a thin fabric over a dark backing reflects less (Kubelka-Munk for a layer).
4. Scatter from weave and surface acts on absorbance: A = a + b*A0 + c*x + d*x^2.

Written here rather than taken from a chemometrics package: the board must run it with numpy
only, and the one synthesis package with these band tables (nirs4all) is AGPL.
"""

import math
from typing import Optional, Sequence, Tuple

import numpy as np

from isic_drivers.lab.fibres import Band, FibreSet, load_fibres
from isic_drivers.lab.sample import Sample

_FOUR_LN2 = 4.0 * math.log(2.0)


def band_profile(wavelengths_nm: np.ndarray, bands: Tuple[Band, ...], lorentz_fraction: float,
                 shift_nm: float = 0.0) -> np.ndarray:
    """Sum of pseudo-Voigt bands (peak height = strength) on the axis; `shift_nm` moves every centre."""
    if not bands:
        return np.zeros_like(wavelengths_nm, dtype=float)
    centre = np.array([b.centre_nm for b in bands])[:, None] + shift_nm
    fwhm = np.array([b.fwhm_nm for b in bands])[:, None]
    strength = np.array([b.strength for b in bands])[:, None]
    x2 = ((wavelengths_nm[None, :] - centre) / fwhm) ** 2
    shape = (1.0 - lorentz_fraction) * np.exp(-_FOUR_LN2 * x2) + lorentz_fraction / (1.0 + 4.0 * x2)
    return (strength * shape).sum(axis=0)


def moisture_content(sample: Sample, fibres: FibreSet) -> float:
    """Water mass per fabric mass: each fibre's regain scaled by a GAB sorption isotherm at the room humidity."""
    gab = fibres.physics["moisture_isotherm_gab"]
    c, k = gab["c"], gab["k"]

    def isotherm(h: float) -> float:
        return c * k * h / ((1.0 - k * h) * (1.0 - k * h + c * k * h))

    h = min(max(sample.nuisance.humidity, 0.0), 0.99)
    factor = isotherm(h) / isotherm(gab["reference_humidity"])
    return factor * sum(frac * fibres[name].moisture_regain for name, frac in sample.composition.items())


def absorption_scatter(sample: Sample, wavelengths_nm: np.ndarray,
                       fibres: Optional[FibreSet] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Kubelka-Munk K and S of the sample (mass-fraction mixing of its fibres plus water, finish, dye)."""
    fibres = fibres if fibres is not None else load_fibres()
    phys = fibres.physics
    eta, ks = phys["lorentz_fraction"], phys["ks_per_strength"]
    wl = np.asarray(wavelengths_nm, dtype=float)
    nu = sample.nuisance
    k = np.zeros_like(wl)
    s = np.zeros_like(wl)
    uptake = 0.0
    for name, frac in sample.composition.items():
        fibre = fibres[name]
        k += frac * (fibre.base_k + ks * band_profile(wl, fibre.bands, eta))
        s0, power = fibre.scatter
        s += frac * s0 * (wl / 1000.0) ** (-power)
        uptake += frac * fibre.dye_uptake
    water = fibres.absorbers["water"]
    shift = water.params["shift_nm_per_k"] * (nu.temperature_c - water.params["reference_c"])
    k += moisture_content(sample, fibres) * water.absorptivity * ks * band_profile(wl, water.bands, eta, shift)
    finish = fibres.absorbers["finish"]
    k += nu.finish * finish.absorptivity * ks * band_profile(wl, finish.bands, eta)
    dye = fibres.dye
    carbon = dye["carbon_k"] * (wl / 1000.0) ** (-dye["carbon_exponent"])
    organic = dye["organic_k"] * np.exp(-np.clip(wl - dye["organic_tail_start_nm"], 0.0, None)
                                        / dye["organic_tail_decay_nm"])
    k += nu.dye_darkness * uptake * (nu.dye_carbon * carbon + (1.0 - nu.dye_carbon) * organic)
    return k, s


def km_layer_reflectance(k_over_s: np.ndarray, scatter_thickness: np.ndarray,
                         backing_reflectance: float) -> np.ndarray:
    """Kubelka-Munk reflectance of a layer of optical thickness S*X over a backing (R_inf when thick)."""
    a = 1.0 + k_over_s
    b = np.sqrt(a * a - 1.0)
    coth = 1.0 / np.tanh(np.minimum(b * scatter_thickness, 50.0))
    bc = b * coth
    return (1.0 - backing_reflectance * (a - bc)) / (a - backing_reflectance + bc)


def reflectance(sample: Sample, wavelengths_nm: np.ndarray, rng: Optional[np.random.Generator] = None,
                fibres: Optional[FibreSet] = None) -> np.ndarray:
    """Diffuse reflectance (0..1) of the sample on the given axis.

    `rng` draws the spot-to-spot variation of the scatter path length (`nuisance.spot_jitter`);
    without it the result is the sample's mean reflectance.
    """
    fibres = fibres if fibres is not None else load_fibres()
    wl = np.asarray(wavelengths_nm, dtype=float)
    nu = sample.nuisance
    k, s = absorption_scatter(sample, wl, fibres)
    k_over_s = np.maximum(k / s, 1e-6)
    sx = s * nu.thickness_mm * fibres.physics["scatter_per_mm"]
    r0 = km_layer_reflectance(k_over_s, sx, nu.backing_reflectance)
    a0 = -np.log10(np.clip(r0, 1e-6, 1.0))
    path = nu.scatter_b
    if rng is not None and nu.spot_jitter > 0:
        path *= 1.0 + nu.spot_jitter * rng.standard_normal()
    x = (wl - fibres.physics["scatter_axis_centre_nm"]) / fibres.physics["scatter_axis_scale_nm"]
    a = nu.scatter_a + path * a0 + nu.scatter_c * x + nu.scatter_d * x * x
    return np.clip(10.0 ** (-a), 1e-5, 1.0)


def absorbance(sample: Sample, wavelengths_nm: np.ndarray, rng: Optional[np.random.Generator] = None,
               fibres: Optional[FibreSet] = None) -> np.ndarray:
    """log10(1/R) of `reflectance()`: what chemometrics works on."""
    return -np.log10(reflectance(sample, wavelengths_nm, rng, fibres))


def pure_fibre_distances(names: Sequence[str], wavelengths_nm: np.ndarray,
                         fibres: Optional[FibreSet] = None) -> np.ndarray:
    """RMS difference of SNV absorbance between pure fibres in the nominal state (rows/cols = names).

    SNV removes the offset and scale scatter leaves, so what remains is the band structure that a
    chemometric model can use to tell two fibres apart.
    """
    spectra = []
    for name in names:
        a = absorbance(Sample({name: 1.0}), wavelengths_nm, None, fibres)
        spectra.append((a - a.mean()) / a.std())
    stacked = np.array(spectra)
    return np.sqrt(np.mean((stacked[:, None, :] - stacked[None, :, :]) ** 2, axis=2))
