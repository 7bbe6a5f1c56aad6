"""The shared spectrum preprocessing: schema order, scipy-equal Savitzky-Golay, board-safe code."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import savgol_filter

from isic_common.errors import ModelError
from isic_station.preprocess import spectrum as spectrum_module
from isic_station.preprocess.spectrum import preprocess_spectra, preprocess_spectrum, savgol_matrix

GRID = np.linspace(1000.0, 1600.0, 61)
AXIS = np.linspace(950.0, 1650.0, 301)


def _params(**changes):
    params = {
        "wavelengths_nm": GRID.tolist(),
        "reflectance_clip": [0.01, 1.2],
        "scatter": "snv",
        "savgol": {"window": 9, "polyorder": 2, "deriv": 1},
        "mean": [0.0] * GRID.size,
        "std": [1.0] * GRID.size,
    }
    params.update(changes)
    return params


def _reflectance(rng, n=1):
    base = 0.5 + 0.3 * np.sin(AXIS[None, :] / 80.0 + rng.uniform(0, 3, size=(n, 1)))
    return base + rng.normal(0, 0.01, size=(n, AXIS.size))


@pytest.mark.parametrize("window,polyorder,deriv", [(5, 2, 0), (9, 2, 1), (11, 3, 2), (7, 4, 0), (3, 1, 1)])
def test_savgol_matrix_equals_scipy_interp_mode(window, polyorder, deriv):
    x = np.random.default_rng(1).normal(size=(4, 50))
    ours = x @ savgol_matrix(50, window, polyorder, deriv).T
    expected = savgol_filter(x, window, polyorder, deriv=deriv, mode="interp", axis=1)
    np.testing.assert_allclose(ours, expected, atol=1e-10)


def test_steps_run_in_the_schema_order():
    rng = np.random.default_rng(2)
    refl = _reflectance(rng)[0]
    refl[10] = 1.5  # above the clip
    mean, std = rng.normal(size=GRID.size), rng.uniform(0.5, 2.0, size=GRID.size)
    params = _params(mean=mean.tolist(), std=std.tolist())
    x = np.clip(np.interp(GRID, AXIS, refl), 0.01, 1.2)
    x = -np.log10(x)
    x = (x - x.mean()) / x.std()
    x = savgol_filter(x, 9, 2, deriv=1, mode="interp")
    expected = (x - mean) / std
    got = preprocess_spectrum(refl, AXIS, params)
    assert got.dtype == np.float32 and got.shape == (GRID.size,)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_optional_steps_off_is_plain_absorbance():
    refl = _reflectance(np.random.default_rng(3))[0]
    got = preprocess_spectrum(refl, AXIS, _params(scatter="none", savgol=None))
    np.testing.assert_allclose(got, -np.log10(np.interp(GRID, AXIS, refl)), rtol=1e-5)


def test_batch_form_equals_one_by_one_and_descending_axis_is_accepted():
    refl = _reflectance(np.random.default_rng(4), n=5)
    batch = preprocess_spectra(refl, AXIS, _params())
    for row, spectrum in zip(refl, batch):
        np.testing.assert_array_equal(preprocess_spectrum(row, AXIS, _params()), spectrum)
    np.testing.assert_allclose(preprocess_spectra(refl[:, ::-1], AXIS[::-1], _params()), batch, atol=1e-6)


def test_model_grid_outside_the_instrument_axis_is_a_model_error():
    with pytest.raises(ModelError, match="not inside the instrument's axis"):
        preprocess_spectrum(np.full(101, 0.5), np.linspace(1100, 1500, 101), _params())


def test_axis_length_mismatch_and_bad_window_are_model_errors():
    with pytest.raises(ModelError, match="301 points"):
        preprocess_spectrum(np.full(300, 0.5), AXIS, _params())
    with pytest.raises(ModelError, match="odd"):
        preprocess_spectrum(np.full(301, 0.5), AXIS, _params(savgol={"window": 8, "polyorder": 2, "deriv": 0}))


def test_board_code_runs_on_python_3_8():
    vermin = Path(sys.executable).with_name("vermin")
    done = subprocess.run(
        [str(vermin), "--no-tips", "--violations", "--eval-annotations", "-t=3.8-", spectrum_module.__file__],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
