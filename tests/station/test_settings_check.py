"""The measuring settings against the data the shipped model's uncertainty calibration was fitted on:
doctor fails naming the setting when the station measures less, and the loaded predictor carries why."""

from pathlib import Path

from isic_station.config import load_config
from isic_station.daemon.wiring import build_parts
from isic_station.tools.doctor import check_settings


def station_config(tmp_path: Path, coadd: int, frames: int, source: str = "virtual:"):
    path = tmp_path / "station.toml"
    path.write_text(f"""[station]
id = "settings-1"
state_dir = "state"
[spectrometer]
port = "/dev/null"
coadd = {coadd}
[camera]
source = "{source}"
width = 640
height = 480
um_per_px = 1.0
frames_per_measurement = {frames}
""", encoding="utf-8")
    return load_config(path)


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
