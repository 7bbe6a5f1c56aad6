"""`isic-station doctor`'s room check against the emulated spectrometer, with and without its sensor."""

from fakes.tiny_isicnet import tiny_station_config, write_tiny_model
from isic_drivers.lab.stage import SampleStage
from isic_station.config import load_config
from isic_station.tools.doctor import check_room


def _room_check(tmp_path, name, emulator, temperature):
    model = write_tiny_model(tmp_path / name, om=False, temperature=temperature)
    config = tmp_path / f"{name}.toml"
    config.write_text(tiny_station_config(model, name, str(tmp_path / "state"), emulator.port), encoding="utf-8")
    return check_room(load_config(config))


def test_a_model_taking_the_room_fails_the_room_check_on_a_spectrometer_without_a_sensor(start_emulator, tmp_path):
    stage = SampleStage(tmp_path / "stage.json")
    emulator = start_emulator("--stage", str(stage.path), "--no-temperature")
    taking = _room_check(tmp_path, "taking", emulator, temperature=True)
    assert not taking.ok and "no temperature sensor" in taking.detail and "takes the room as an input" in taking.detail
    assert "no_room_reading" in taking.detail
    assert "22 degC" in taking.detail and "a spectrometer with one" in taking.fix
    blind = _room_check(tmp_path, "blind", emulator, temperature=False)
    assert blind.ok and "the room is not checked" in blind.detail
    with_sensor = _room_check(tmp_path, "sensed", start_emulator("--stage", str(stage.path)), temperature=True)
    assert with_sensor.ok and "by the spectrometer's sensor" in with_sensor.detail
