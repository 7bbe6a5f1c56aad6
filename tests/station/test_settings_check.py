"""The measuring settings against the data the shipped model's uncertainty calibration was fitted on:
doctor fails naming the setting when the station measures less, and the loaded predictor carries why."""

from pathlib import Path

from isic_station.daemon.wiring import build_parts
from isic_station.tools.doctor import check_settings

from .test_scale_check import config_with_scale


def station_config(tmp_path: Path, coadd: int, frames: int, source: str = "virtual:"):
    return config_with_scale(tmp_path, 1.0, spectrometer=f"coadd = {coadd}",
                             camera=f"width = 640\nheight = 480\nframes_per_measurement = {frames}", source=source)


def test_doctor_fails_a_station_measuring_less_than_the_calibration(tmp_path):
    result = check_settings(station_config(tmp_path, coadd=2, frames=3))
    assert not result.ok
    assert "coadd 4 -> 2" in result.detail and "uncalibrated_settings" in result.fix


def test_doctor_passes_richer_settings_and_says_so(tmp_path):
    result = check_settings(station_config(tmp_path, coadd=16, frames=16))
    assert result.ok and "coadd 4 -> 16" in result.detail and "at least as much" in result.detail


def test_the_loaded_predictor_names_the_shortfall_and_a_signal_only_station_has_none(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="isic_station.daemon.wiring"):
        predictor = build_parts(station_config(tmp_path, coadd=4, frames=1)).model.load()
    predictor.backend.close()
    assert "n_frames 3 -> 1" in predictor.settings_problem
    assert any("n_frames 3 -> 1" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    predictor = build_parts(station_config(tmp_path, coadd=4, frames=1, source=""), camera=False).model.load()
    predictor.backend.close()
    assert predictor.settings_problem is None, "without a camera the frames do not matter"
