"""The Station in this process, given its parts: a FakeSpectrometer (tests/fakes), no camera, the tiny
ONNX model on ONNX Runtime, a real outbox and the real MQTT link to the machine's Mosquitto.

Black-box: the tests only talk MQTT to it, as a plant would - commands in, responses, results and
alarms out - and check what arrives against the payload schemas.
"""

import json
import uuid
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from fakes.fake_spectrometer import FakeSpectrometer
from fakes.tiny_isicnet import tiny_station_config, write_tiny_model
from isic_station.config import load_config
from isic_station.daemon.sd_notify import ServiceNotifier
from isic_station.daemon.station import Station
from isic_station.daemon.wiring import build_parts
from isic_station.schemas import validation_errors
from messaging.mqtt_helpers import Recorder, publish_once


class Plant:
    """The station seen from the broker: send a command, wait for its response; what was published."""

    def __init__(self, broker, base: str) -> None:
        self.broker, self.base = broker, base
        self.recorder = Recorder(*broker, [f"{base}/#"])
        self.recorder.wait_subscribed()
        self._sent = 0

    def command(self, name: str, payload: dict, timeout: float = 20.0) -> dict:
        self._sent += 1
        transaction = f"t{self._sent}"
        publish_once(*self.broker, f"{self.base}/cmd/{name}", json.dumps({**payload, "transaction": transaction})
                     .encode())
        topic = f"{self.base}/cmd/{name}/response"
        self.recorder.wait_for(lambda msgs: any(m[0] == topic and json.loads(m[1])["transaction"] == transaction
                                                for m in msgs), timeout, f"the {name} response")
        answer = next(a for a in self.recorder.payloads(topic) if a["transaction"] == transaction)
        assert validation_errors(answer, "command_response") == []
        return answer

    def published(self, kind: str) -> list:
        return self.recorder.payloads(f"{self.base}/{kind}")


@contextmanager
def station_on_tiny_model(tmp_path: Path, mqtt_broker, temperature: bool = False):
    """The station running the tiny model (`temperature`: one that takes the room as an input)."""
    manifest = write_tiny_model(tmp_path / "model", om=False, temperature=temperature)
    doc = json.loads(manifest.read_text(encoding="utf-8"))
    manifest.write_text(json.dumps(dict(doc, conditions={"temperature_c": [15.0, 35.0]})), encoding="utf-8")
    station_id = f"inproc-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "station.toml"
    path.write_text(tiny_station_config(manifest, station_id, f"{tmp_path}/state", "fake:spectrometer",
                                        spectrometer="coadd = 2\ntemperature_offset_c = 1.5",
                                        mqtt=f'host = "{mqtt_broker[0]}"\nport = {mqtt_broker[1]}\ndiscovery = false'),
                    encoding="utf-8")
    config = load_config(path)
    spectrometer = FakeSpectrometer(seed=3)
    parts = replace(build_parts(config), spectrometer=spectrometer)
    assert parts.camera is None, "camera.source is empty: signal-only"
    station = Station(config, parts, notifier=ServiceNotifier(None))
    plant = Plant(mqtt_broker, config.topic_base)
    station.start()
    assert station.link is not None and station.link.wait_connected(10.0)
    try:
        yield station, spectrometer, plant
    finally:
        station.stop(flush_timeout_s=2.0)
        plant.recorder.close()


@pytest.fixture
def running(tmp_path: Path, mqtt_broker):
    with station_on_tiny_model(tmp_path, mqtt_broker) as parts:
        yield parts


def calibrate(plant: Plant, spectrometer: FakeSpectrometer) -> None:
    for scene in ("dark", "white"):
        spectrometer.scene = scene
        answer = plant.command("calibrate", {"reference": scene})
        assert answer["status"] == "ok", answer
        assert answer["data"]["reference"] == scene and answer["data"]["serial"] == spectrometer.instrument.serial
    spectrometer.scene = "sample"


def test_a_measure_command_is_answered_and_its_result_published(running) -> None:
    station, spectrometer, plant = running
    calibrate(plant, spectrometer)
    answer = plant.command("measure", {"sample_id": "S-42"})
    assert answer["status"] == "ok" and answer["error"] is None, answer
    data = answer["data"]
    assert data["sample_id"] == "S-42" and data["sample_id_source"] == "command"
    plant.recorder.wait_count(f"{plant.base}/result", 1)
    result = plant.published("result")[0]
    assert validation_errors(result, "result") == []
    assert (result["sequence"], result["message_id"], result["sample_id"]) == \
           (data["sequence"], data["message_id"], "S-42")
    assert "signal_only" in result["flags"], "no camera: the signal-only graph answered"
    assert result["backend"] == "onnxruntime" and abs(sum(result["composition"].values()) - 1.0) < 1e-6
    assert spectrometer.spectra_read >= 2 * 16 + 2, "two references and one co-added measurement were read"


def test_the_status_command_reports_the_measurement(running) -> None:
    station, spectrometer, plant = running
    calibrate(plant, spectrometer)
    assert plant.command("measure", {})["status"] == "ok"
    status = plant.command("status", {})
    assert status["status"] == "ok"
    data = status["data"]
    assert data["station"] == station.config.station.id and data["mode"] == "triggered"
    assert data["pipeline"]["results"] == 1 and data["backend"] == "onnxruntime"
    assert data["devices"]["spectrometer"]["state"] == "ok" and data["devices"]["camera"]["state"] == "absent"
    assert data["calibration"]["dark_age_s"] is not None and data["calibration"]["white_age_s"] is not None


def test_a_measure_without_references_is_refused_naming_the_cause(running) -> None:
    station, spectrometer, plant = running
    answer = plant.command("measure", {})
    assert answer["status"] == "error" and "calibrate dark, then white" in answer["error"], answer
    assert plant.published("result") == []


def test_a_spectrometer_fault_raises_the_alarm_once_and_clears_on_recovery(running) -> None:
    station, spectrometer, plant = running
    calibrate(plant, spectrometer)
    spectrometer.fail("no reply from the instrument within 2.0 s")
    for _ in range(2):
        answer = plant.command("measure", {})
        assert answer["status"] == "error" and "no reply from the instrument" in answer["error"], answer
    alarms = plant.recorder.wait_count(f"{plant.base}/alarm", 1)
    assert validation_errors(alarms[0], "alarm") == []
    assert (alarms[0]["kind"], alarms[0]["severity"], alarms[0]["details"]["device"]) == \
           ("device_fault", "critical", "spectrometer")
    assert "no reply from the instrument" in alarms[0]["message"]
    assert "DEGRADED: spectrometer" in station.status_line()
    spectrometer.recover()
    assert plant.command("measure", {})["status"] == "ok"
    assert len(plant.published("alarm")) == 1, "one alarm per fault, not one per failed measurement"
    assert "DEGRADED" not in station.status_line()


def test_a_room_outside_the_trained_range_is_referred_to_the_lab(running) -> None:
    """The sensor's room temperature (less the configured offset) goes into every result; outside the
    manifest's trained range the result says so and a refer_to_lab alarm names the temperature."""
    station, spectrometer, plant = running
    calibrate(plant, spectrometer)
    assert plant.command("measure", {"sample_id": "warm-enough"})["status"] == "ok"
    spectrometer.room_c = 9.0
    assert plant.command("measure", {"sample_id": "cold-room"})["status"] == "ok"
    spectrometer.room_c = None
    assert plant.command("measure", {"sample_id": "no-sensor"})["status"] == "ok"
    results = {r["sample_id"]: r for r in plant.recorder.wait_count(f"{plant.base}/result", 3)}
    assert all(validation_errors(r, "result") == [] for r in results.values())
    assert results["warm-enough"]["temperature_c"] == pytest.approx(20.5)
    assert "outside_trained_range" not in results["warm-enough"]["flags"]
    cold = results["cold-room"]
    assert cold["temperature_c"] == pytest.approx(7.5)
    assert {"outside_trained_range", "refer_to_lab"} <= set(cold["flags"])
    assert results["no-sensor"]["temperature_c"] is None
    assert "outside_trained_range" not in results["no-sensor"]["flags"]
    alarms = [a for a in plant.recorder.wait_count(f"{plant.base}/alarm", 1) if a["kind"] == "refer_to_lab"]
    assert [a["details"]["sample_id"] for a in alarms] == ["cold-room"]
    assert "room temperature 7.5 degC is outside the 15-35 degC the model was trained in" in alarms[0]["message"]


def test_a_model_trained_with_the_room_gets_the_sensor_s_reading_less_the_offset(tmp_path, mqtt_broker) -> None:
    """The tiny model's `temperature` input outweighs its spectrum (tests/fakes/tiny_isicnet.py): a warm room
    answers cotton, a cold one polyester - so the reading (less the configured 1.5 degC offset, scaled as the
    manifest says) is what reached the graph; without a sensor the station still answers (the zero row the
    Predictor feeds then is tests/model/test_net_export.py's) but flags each such result no_room_reading and
    refers it (alarm naming why), and one device_fault warning says the model goes without its input, raised
    again only after a reading came back."""
    with station_on_tiny_model(tmp_path, mqtt_broker, temperature=True) as (station, spectrometer, plant):
        calibrate(plant, spectrometer)
        rooms = (("warm", 33.5), ("cold", 11.5), ("unread", None), ("still-unread", None), ("read", 25.0),
                 ("unread-again", None))
        for sample, room in rooms:
            spectrometer.room_c = room
            assert plant.command("measure", {"sample_id": sample})["status"] == "ok"
        results = {r["sample_id"]: r for r in plant.recorder.wait_count(f"{plant.base}/result", len(rooms))}
        alarms = [a for a in plant.published("alarm") if a["kind"] == "device_fault"]
        referred = [a for a in plant.published("alarm") if a["kind"] == "refer_to_lab"]
    assert results["warm"]["temperature_c"] == pytest.approx(32.0)
    assert results["warm"]["composition"]["cotton"] > 0.99
    assert results["cold"]["composition"]["polyester"] > 0.99
    assert results["unread"]["temperature_c"] is None
    assert len(alarms) == 2 and all(validation_errors(a, "alarm") == [] for a in alarms)
    assert (alarms[0]["kind"], alarms[0]["severity"], alarms[0]["details"]["device"]) == \
           ("device_fault", "warning", "spectrometer")
    assert "takes the room as an input" in alarms[0]["message"] and "22 degC" in alarms[0]["message"]
    unread = {sample for sample, room in rooms if room is None}
    for sample, result in results.items():
        assert validation_errors(result, "result") == []
        assert ({"no_room_reading", "refer_to_lab"} <= set(result["flags"])) == (sample in unread), sample
    assert sorted(a["details"]["sample_id"] for a in referred if "no room temperature reading" in a["message"]) \
           == sorted(unread)
