"""The camera scale against the model's accepted range: the manifest says it, doctor fails naming the key."""

from pathlib import Path

import pytest

from isic_model import SHIPPED_MANIFEST
from isic_station.config import load_config
from isic_station.daemon.wiring import build_parts
from isic_station.manifest import load_manifest
from isic_station.preprocess.image import scale_problem
from isic_station.tools.doctor import check_scale


def config_with_scale(tmp_path: Path, um_per_px: float, spectrometer: str = "", camera: str = "",
                      source: str = "virtual:"):
    """A station config with this camera scale (and more [spectrometer] / [camera] lines)."""
    path = tmp_path / "station.toml"
    path.write_text(f"""[station]
id = "scale-1"
state_dir = "state"
[spectrometer]
port = "/dev/null"
{spectrometer}
[camera]
source = "{source}"
um_per_px = {um_per_px}
{camera}
""", encoding="utf-8")
    return load_config(path)


def test_the_shipped_manifest_states_the_geometry_and_the_range_it_accepts():
    image = load_manifest(SHIPPED_MANIFEST).image
    low, high = image["camera_um_per_px_range"]
    assert low <= image["um_per_px"] <= high or high == image["um_per_px"]
    assert image["tile_px"] == 64


@pytest.mark.parametrize("um_per_px", [0.5, 3.0])
def test_doctor_fails_a_camera_scale_outside_the_range_naming_the_key(tmp_path, um_per_px):
    result = check_scale(config_with_scale(tmp_path, um_per_px))
    assert not result.ok
    assert "camera.um_per_px" in result.detail and f"{um_per_px:g}" in result.detail
    assert "stage micrometer" in result.fix


def test_doctor_passes_a_scale_in_the_range(tmp_path):
    result = check_scale(config_with_scale(tmp_path, 1.6))
    assert result.ok and "resampled to the model's 2.4" in result.detail


def test_a_manifest_without_a_range_accepts_any_scale():
    assert scale_problem(9.0, {"um_per_px": 2.4}) is None
    assert "camera.um_per_px = 9" in scale_problem(9.0, {"um_per_px": 2.4, "camera_um_per_px_range": [1, 2.4]})


def test_the_station_warns_when_it_loads_the_model_naming_the_key(tmp_path, caplog):
    loader = build_parts(config_with_scale(tmp_path, 3.0)).model  # what the station loads at start and on reload
    with caplog.at_level("WARNING", logger="isic_station.daemon.wiring"):
        loader.load().backend.close()
    assert any("camera.um_per_px = 3" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
