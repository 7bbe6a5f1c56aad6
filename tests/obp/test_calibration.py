"""Calibration store: reflectance/absorbance arithmetic, flags, atomic persistence.

`ScriptedSpectrometer` is a fake (fixed counts per call) so the flag logic is checked alone; the
real driver and emulator calibrate in test_driver_emulator.py.
"""

import json

import numpy as np
import pytest

from isic_common.errors import StateDirError
from isic_station.acquisition.calibration import CalibrationStore

DARK = np.full(8, 1000.0)
WHITE = np.linspace(11000.0, 21000.0, 8)


class ScriptedSpectrometer:
    """A fake spectrometer: `coadd` returns the next scripted spectrum."""

    def __init__(self, *spectra, serial="SN-1", integration_us=8000, full_scale_counts=65535.0):
        self.spectra = list(spectra)
        self.serial = serial
        self.integration_us = integration_us
        self.full_scale_counts = full_scale_counts  # a 16-bit detector, as ObpSpectrometer's default

    def coadd(self, scans):
        return self.spectra.pop(0)

    def serial_number(self):
        return self.serial

    def integration_time_us(self):
        return self.integration_us


def calibrated(tmp_path, **kwargs):
    store = CalibrationStore(tmp_path, **kwargs)
    device = ScriptedSpectrometer(DARK, WHITE)
    store.capture(device, "dark")
    store.capture(device, "white")
    return store


def test_reflectance_and_absorbance(tmp_path):
    store = calibrated(tmp_path)
    raw = DARK + 0.25 * (WHITE - DARK)
    reflectance, flags = store.reflectance(raw, serial="SN-1", integration_us=8000)
    np.testing.assert_allclose(reflectance, 0.25)
    assert flags == ()
    absorbance, _ = store.absorbance(raw)
    np.testing.assert_allclose(absorbance, -np.log10(0.25))
    assert store.white_peak == pytest.approx(20000.0)


def test_missing_references(tmp_path):
    store = CalibrationStore(tmp_path)
    reflectance, flags = store.reflectance(WHITE)
    assert np.isnan(reflectance).all() and flags == ("missing_reference",)
    store.capture(ScriptedSpectrometer(DARK), "dark")
    assert store.reflectance(WHITE)[1] == ("missing_reference",)


def test_stale_other_serial_other_integration(tmp_path):
    store = calibrated(tmp_path, max_age_s=60)
    captured = store.references["white"].captured_at
    assert store.flags(now=captured + 30) == ()
    assert store.flags(now=captured + 3600) == ("stale_reference",)
    assert store.flags(serial="SN-2") == ("missing_reference",)
    assert store.flags(integration_us=4000) == ("stale_reference",)


def test_white_drift_from_a_white_check(tmp_path):
    store = calibrated(tmp_path, drift_threshold=0.05)
    aged = DARK + 0.9 * (WHITE - DARK)
    assert store.check_white(ScriptedSpectrometer(aged)) == pytest.approx(0.9)
    assert "white_drift" in store.reflectance(WHITE)[1]
    assert store.check_white(ScriptedSpectrometer(DARK + 0.98 * (WHITE - DARK))) == pytest.approx(0.98)
    assert "white_drift" not in store.flags()
    store.check_white(ScriptedSpectrometer(aged))
    store.capture(ScriptedSpectrometer(aged), "white")  # a new white is the new baseline
    assert store.flags() == ()


def test_references_survive_a_restart_and_file_is_whole(tmp_path):
    store = calibrated(tmp_path)
    store.check_white(ScriptedSpectrometer(WHITE))
    again = CalibrationStore(tmp_path)
    assert again.references == store.references and again.white_check == store.white_check
    document = json.loads((tmp_path / "references.json").read_text())
    assert document["references"]["dark"]["serial"] == "SN-1"
    assert document["references"]["white"]["integration_us"] == 8000
    assert [p.name for p in tmp_path.iterdir()] == ["references.json"]  # no temporary left behind


def test_corrupt_file_is_moved_aside_and_unwritable_dir_is_a_state_dir_error(tmp_path):
    (tmp_path / "references.json").write_text("{not json")
    store = CalibrationStore(tmp_path)
    assert store.references == {} and "moved aside" in store.problem
    assert [p.name.startswith("references.json.bad-") for p in tmp_path.iterdir()] == [True]
    blocker = tmp_path / "file"
    blocker.write_text("")
    store = CalibrationStore(blocker / "calibration")
    with pytest.raises(StateDirError, match="cannot write"):
        store.capture(ScriptedSpectrometer(DARK), "dark")


def test_the_reference_checks_use_the_instruments_own_full_scale(tmp_path):
    """The same white saturates a 14-bit instrument (full scale 16383) and not a 16-bit one."""
    white = np.linspace(9000.0, 16200.0, 8)
    sixteen_bit = CalibrationStore(tmp_path / "a")
    sixteen_bit.capture(ScriptedSpectrometer(DARK), "dark")
    sixteen_bit.capture(ScriptedSpectrometer(white), "white")
    fourteen_bit = CalibrationStore(tmp_path / "b")
    fourteen_bit.capture(ScriptedSpectrometer(DARK, full_scale_counts=16383.0), "dark")
    with pytest.raises(Exception, match="saturates the detector"):
        fourteen_bit.capture(ScriptedSpectrometer(white, full_scale_counts=16383.0), "white")
    assert "white" in sixteen_bit.references and "white" not in fourteen_bit.references
