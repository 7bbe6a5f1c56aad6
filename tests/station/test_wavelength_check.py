"""Wavelength check on the emulated instrument: a shifted axis is found, stored and corrected.

Real parts: `isic-station emulate spectrometer --set wavelength_shift_nm=...` on a pty, the station's
own `isic-station calibrate` CLI (dark, white, wavelength) and its OBP driver; the lab's wavelength
reference tile under the probe.
"""

import json
import subprocess
from typing import Tuple

import numpy as np
import pytest

from isic_drivers.lab.wavelength_standard import CERTIFIED_BANDS_NM, wavelength_standard_reflectance
from isic_station.acquisition.wavelength_check import DRIFT_LIMIT_NM, WavelengthCheckFailed, WavelengthStore, fit_offset
from isic_station.tools.demo import DemoBench, station_command


def calibrate(bench: DemoBench, kind: str) -> subprocess.CompletedProcess:
    return subprocess.run(station_command() + ["calibrate", kind, "--config", str(bench.config_path)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("shift_nm", [3.0, -2.5])
def test_a_shifted_axis_is_found_stored_and_corrected(tmp_path, mqtt_broker: Tuple[str, int], shift_nm):
    with DemoBench(tmp_path, mode="triggered", camera=False, broker=mqtt_broker,
                   emulator_args=["--set", f"wavelength_shift_nm={shift_nm}"]) as bench:
        bench.calibrate()
        bench.stage.put_reference("wavelength")
        first = calibrate(bench, "wavelength")
        assert first.returncode == 0, first.stderr
        assert "WAVELENGTH DRIFT" in first.stdout  # the first check finds the axis off by more than the limit
        stored = json.loads((tmp_path / "state" / "calibration" / "wavelength.json").read_text())
        assert stored["offset_nm"] == pytest.approx(shift_nm, abs=0.2)
        assert len(stored["bands_nm"]) >= 5
        # a second check of the unchanged instrument finds no drift
        again = calibrate(bench, "wavelength")
        assert again.returncode == 0 and "WAVELENGTH DRIFT" not in again.stdout, again.stdout
        # the station's corrected axis is the one the pixels really see
        store = WavelengthStore(tmp_path / "state" / "calibration")
        reported = np.linspace(900.0, 1700.0, 256)
        assert np.allclose(store.corrected_axis(reported), reported + shift_nm, atol=0.2)
        # the wrong tile under the probe: a clear error, nothing stored
        bench.stage.put_reference("white")
        wrong = calibrate(bench, "wavelength")
        assert wrong.returncode != 0 and "bands" in wrong.stderr
        assert WavelengthStore(tmp_path / "state" / "calibration").offset_nm == store.offset_nm


def test_fit_and_drift_on_a_synthetic_tile(tmp_path):
    axis = np.linspace(900.0, 1700.0, 256)
    store = WavelengthStore(tmp_path)
    assert store.offset_nm == 0.0
    first = store.save(fit_offset(wavelength_standard_reflectance(axis + 0.2), axis, CERTIFIED_BANDS_NM))
    assert first["offset_nm"] == pytest.approx(0.2, abs=0.05) and first["flags"] == []
    moved = store.save(fit_offset(wavelength_standard_reflectance(axis + 2.0), axis, CERTIFIED_BANDS_NM))
    assert moved["drift_nm"] == pytest.approx(1.8, abs=0.1) and moved["flags"] == ["wavelength_drift"]
    assert abs(moved["drift_nm"]) > DRIFT_LIMIT_NM
    with pytest.raises(WavelengthCheckFailed, match="bands"):
        fit_offset(np.full(256, 0.9), axis, CERTIFIED_BANDS_NM)
