"""End to end: emulated spectrometer on a pseudo-terminal + virtual microscope -> `isic-station run` -> MQTT.

Everything is real except the model, which is the tiny stand-in (tests/fakes/tiny_isicnet.py) so
the tests do not depend on training: the station is the `isic-station run` process as systemd runs
it, the spectrometer is `isic-station emulate spectrometer` on a pty, the broker is the machine's
Mosquitto on 127.0.0.1:1883, and a separate MQTT client checks every payload against the schemas.
"""

import json
import os
import queue
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from fakes.tiny_isicnet import write_tiny_model
from isic_station.schemas import validation_errors
from isic_station.tools.demo import DemoBench, ResultWatcher, free_port, station_command

WAIT_S = 30.0

Message = Tuple[str, bytes, float]


class Watch:
    """Every message the subscriber received so far, and bounded waits for more."""

    def __init__(self, watcher: ResultWatcher) -> None:
        self.watcher = watcher
        self.seen: List[Message] = []

    def wait_for(self, match: Callable[[str, Any], bool], timeout_s: float = WAIT_S,
                 since: int = 0) -> Tuple[str, Any]:
        """The first message from index `since` on (old or new) whose (topic, decoded payload) satisfies `match`."""
        for topic, raw, _ in self.seen[since:]:
            doc = decode(raw)
            if match(topic, doc):
                return topic, doc
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                item = self.watcher.messages.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(item)
            doc = decode(item[1])
            if match(item[0], doc):
                return item[0], doc
        pytest.fail(f"no matching message within {timeout_s} s; seen topics {sorted({t for t, _, _ in self.seen})}")

    def command(self, bench: DemoBench, name: str, payload: Any) -> Dict[str, Any]:
        """Publish a command (a dict, or raw bytes for malformed ones) and return its response."""
        self.drain()
        since = len(self.seen)
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.watcher.client.publish(f"{bench.topic_base}/cmd/{name}", raw, qos=1)
        transaction = payload.get("transaction") if isinstance(payload, dict) else None
        _, doc = self.wait_for(lambda t, d: t == f"{bench.topic_base}/cmd/{name}/response"
                               and isinstance(d, dict) and d.get("transaction") == transaction, since=since)
        return doc

    def drain(self) -> None:
        """Move what has arrived into `seen` without waiting."""
        while True:
            try:
                self.seen.append(self.watcher.messages.get_nowait())
            except queue.Empty:
                return


def decode(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw


SCHEMA_OF = {"result": "result", "state": "result", "health": "health", "status": "status", "alarm": "alarm",
             "lot": "lot"}


def schema_for(base: str, topic: str) -> Optional[str]:
    """The schema a topic's payload must follow (None for topics without one)."""
    if topic.endswith("/response"):
        return "command_response"
    if topic.startswith(base + "/") and "/cmd/" not in topic:
        return SCHEMA_OF[topic[len(base) + 1:]]
    return None


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory, mqtt_broker: Tuple[str, int]) -> Iterator[DemoBench]:
    workdir = tmp_path_factory.mktemp("e2e")
    model = write_tiny_model(workdir / "model", om=False)
    station_id = f"e2e-{uuid.uuid4().hex[:8]}"
    with DemoBench(workdir, station_id=station_id, mode="triggered", model=model) as b:
        b.calibrate()
        yield b


@pytest.fixture(scope="module")
def watch(bench: DemoBench) -> Iterator[Watch]:
    from isic_station.messaging.ha_discovery import node_id

    watcher = ResultWatcher(bench.broker.host, bench.broker.port,
                            [f"{bench.topic_base}/#", f"homeassistant/+/{node_id(bench.station_id)}/+/config"])
    w = Watch(watcher)
    bench.start_station()
    wait_until_serving(w, bench)
    yield w
    watcher.close()


def wait_until_serving(w: Watch, bench: DemoBench) -> None:
    """Online, and subscribed to its commands: the link subscribes before its first health document,
    and the broker handles one client's packets in order."""
    w.wait_for(lambda t, d: t == f"{bench.topic_base}/status" and d.get("state") == "online", timeout_s=60)
    w.wait_for(lambda t, d: t == f"{bench.topic_base}/health", timeout_s=60)


def put_named_sample(bench: DemoBench, sample_id: str, composition: Dict[str, float]) -> None:
    from isic_drivers.lab.sample import Nuisance, Sample

    bench.stage.put_sample(Sample(composition, Nuisance(), sample_id))


def test_measure_command_gives_a_valid_result_with_the_sample_id(bench: DemoBench, watch: Watch) -> None:
    bench.put_line(seed=4, dwell_s=60.0)
    answer = watch.command(bench, "measure", {"sample_id": "S-e2e-1", "transaction": 7})
    assert answer["status"] == "ok", answer
    assert answer["transaction"] == 7
    sequence = answer["data"]["sequence"]
    _, result = watch.wait_for(lambda t, d: t.endswith("/result") and d.get("sequence") == sequence)
    assert validation_errors(result, "result") == []
    assert result["sample_id"] == "S-e2e-1" and result["station"] == bench.station_id
    assert abs(sum(result["composition"].values()) - 1.0) < 1e-3
    assert result["timings_ms"]["total"] >= result["timings_ms"]["acquire"] > 0
    _, state = watch.wait_for(lambda t, d: t.endswith("/state") and d.get("sequence") == sequence)
    assert state["message_id"] == result["message_id"]


def test_sample_id_from_the_label_under_the_microscope(bench: DemoBench, watch: Watch) -> None:
    put_named_sample(bench, "QR-7781", {"cotton": 0.6, "polyester": 0.4})
    answer = watch.command(bench, "measure", {"transaction": "qr"})
    assert answer["status"] == "ok", answer
    assert answer["data"]["sample_id"] == "QR-7781" and answer["data"]["sample_id_source"] == "label"


def test_bad_commands_get_clear_errors(bench: DemoBench, watch: Watch) -> None:
    answer = watch.command(bench, "measure", {"sample_id": 5, "transaction": "bad-type"})
    assert answer["status"] == "error" and "sample_id" in answer["error"] and answer["data"] is None
    answer = watch.command(bench, "calibrate", {"reference": "grey", "transaction": "bad-ref"})
    assert answer["status"] == "error" and "reference" in answer["error"] and "grey" in answer["error"]
    answer = watch.command(bench, "set_lot", b"{not json")
    assert answer["status"] == "error" and "JSON" in answer["error"]
    answer = watch.command(bench, "set_lot", {"lot_id": "L1", "composition": {"cotton": 0.6, "polyester": 0.3},
                                              "transaction": "sum"})
    assert answer["status"] == "error" and "sum" in answer["error"]


def test_out_of_spec_lot_raises_an_alarm(bench: DemoBench, watch: Watch) -> None:
    put_named_sample(bench, "LOT-S1", {"cotton": 0.7, "polyester": 0.3})
    first = watch.command(bench, "measure", {"sample_id": "probe", "transaction": "probe"})
    measured = first["data"]["composition"]
    # Declare 100 % of the fibre measured least: at least 66 pp off, far beyond the 5 pp tolerance.
    declared_fibre = min(measured, key=measured.get)
    lot_id = f"LOT-{uuid.uuid4().hex[:6]}"
    answer = watch.command(bench, "set_lot", {"lot_id": lot_id, "composition": {declared_fibre: 1.0},
                                              "transaction": "lot"})
    assert answer["status"] == "ok", answer
    answer = watch.command(bench, "measure", {"sample_id": "LOT-S1", "transaction": "lot-measure"})
    sequence = answer["data"]["sequence"]
    assert "out_of_spec" in answer["data"]["flags"]
    _, result = watch.wait_for(lambda t, d: t.endswith("/result") and d.get("sequence") == sequence)
    assert result["lot_id"] == lot_id and result["spec"]["in_spec"] is False
    assert declared_fibre in result["spec"]["out_of_spec_fibres"]
    _, alarm = watch.wait_for(lambda t, d: t.endswith("/alarm") and d.get("details", {}).get("sequence") == sequence)
    assert validation_errors(alarm, "alarm") == []
    assert alarm["kind"] == "out_of_spec" and lot_id in alarm["message"]
    # the running lot summary, retained on the lot topic (the tiny model has no calibration: point estimates)
    _, lot = watch.wait_for(lambda t, d: t.endswith("/lot") and isinstance(d, dict) and d.get("lot_id") == lot_id)
    assert validation_errors(lot, "lot") == []
    assert lot["n"] == 1 and lot["verdict"] == "fail" and lot["rule"] == "point_estimate"
    assert result["spec"]["verdict"] == "fail" and result["interval_95"] is None


def test_calibrate_status_and_reload_commands(bench: DemoBench, watch: Watch) -> None:
    bench.stage.put_reference("white")
    answer = watch.command(bench, "calibrate", {"reference": "white", "transaction": "white"})
    assert answer["status"] == "ok", answer
    assert answer["data"]["reference"] == "white" and answer["data"]["peak_counts"] > 1000
    bench.stage.put_reference("wavelength")  # the emulator's axis is not shifted here
    answer = watch.command(bench, "calibrate", {"reference": "wavelength", "transaction": "wl"})
    assert answer["status"] == "ok", answer
    assert abs(answer["data"]["offset_nm"]) < 0.3 and len(answer["data"]["bands_nm"]) >= 5
    status = watch.command(bench, "status", {"transaction": "st"})
    assert status["status"] == "ok"
    data = status["data"]
    assert data["mode"] == "triggered" and data["model"]["name"] and data["pipeline"]["results"] >= 1
    assert data["calibration"]["white_age_s"] < 60
    assert data["devices"]["spectrometer"]["state"] == "ok"
    assert data["time_to_result_ms"]["n"] >= 1 and data["time_to_result_ms"]["p50"] > 0
    answer = watch.command(bench, "reload_model", {"transaction": "reload"})
    assert answer["status"] == "ok" and answer["data"]["fibres"], answer


def test_home_assistant_discovery(bench: DemoBench, watch: Watch) -> None:
    def discovery(t: str, d: Any) -> bool:
        return t.startswith("homeassistant/") and isinstance(d, dict) and d.get("state_topic", "").endswith("/state")

    _, config = watch.wait_for(discovery)
    assert config["state_topic"] == f"{bench.topic_base}/state"
    assert config["unique_id"] and config["device"]["identifiers"]
    watch.drain()
    before = len(watch.seen)
    watch.watcher.client.publish("homeassistant/status", "online", qos=1)
    _, again = watch.wait_for(discovery, since=before)
    assert again["state_topic"] == config["state_topic"]


def test_health_arrives(bench: DemoBench, watch: Watch) -> None:
    _, health = watch.wait_for(lambda t, d: t.endswith("/health") and d["results"]["total"] >= 1, timeout_s=20)
    assert health["devices"]["spectrometer"]["state"] == "ok"
    assert health["calibration"]["dark_age_s"] is not None


def test_silent_spectrometer_fails_the_measure_command_and_raises_a_device_alarm(bench: DemoBench,
                                                                                   watch: Watch) -> None:
    bench.put_line(seed=6, dwell_s=60.0)
    os.kill(bench.emulator.pid, signal.SIGSTOP)
    try:
        answer = watch.command(bench, "measure", {"sample_id": "while-silent", "transaction": "silent"})
        assert answer["status"] == "error" and "spectrometer" in answer["error"], answer
        _, alarm = watch.wait_for(lambda t, d: t.endswith("/alarm") and d.get("kind") == "device_fault")
        assert validation_errors(alarm, "alarm") == []
        assert alarm["details"]["device"] == "spectrometer" and alarm["severity"] == "critical"
    finally:
        os.kill(bench.emulator.pid, signal.SIGCONT)
    answer = watch.command(bench, "measure", {"sample_id": "after", "transaction": "after"})
    assert answer["status"] == "ok", answer


def test_zz_every_payload_follows_its_schema_and_sigterm_stops_cleanly(bench: DemoBench, watch: Watch) -> None:
    """Runs last (module order): stop the station, then check every message seen during the module."""
    assert bench.stop_station() == 0
    watch.wait_for(lambda t, d: t == f"{bench.topic_base}/status" and d.get("state") == "offline")
    checked = 0
    for topic, raw, _ in watch.seen:
        name = schema_for(bench.topic_base, topic)
        if name is None:
            continue
        assert validation_errors(json.loads(raw), name) == [], (topic, raw[:200])
        checked += 1
    assert checked >= 10
    log = bench.station_log.read_text(encoding="utf-8")
    assert "SIGTERM received" in log and "Traceback" not in log


def test_zzz_doctor_passes_on_the_bench(bench: DemoBench) -> None:
    """With the station stopped (it holds the port), every doctor check passes on the bench."""
    proc = subprocess.run(station_command() + ["doctor", "--config", str(bench.config_path)], capture_output=True,
                          text=True, timeout=120)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("spectrometer", "camera", "model", "scale", "settings", "room", "backend", "broker", "state"):
        assert any(line.startswith("OK") and name in line for line in lines), (name, proc.stdout)
    assert "sha256 ok" in proc.stdout and "9 of 9 checks passed" in proc.stdout
    assert "degC by the spectrometer's sensor" in proc.stdout  # the emulated instrument reports its room


def test_doctor_says_what_is_wrong(tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text(f"""[station]
id = "broken"
state_dir = "state"
[spectrometer]
port = "{tmp_path / 'no-such-tty'}"
[camera]
source = ""
[model]
manifest = "{tmp_path / 'missing' / 'manifest.json'}"
[mqtt]
port = {free_port()}
""", encoding="utf-8")
    proc = subprocess.run(station_command() + ["doctor", "--config", str(config)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 69, proc.stdout + proc.stderr
    out = proc.stdout
    for name in ("spectrometer", "model", "settings", "room", "backend", "broker", "state"):
        assert f"FAIL {name}" in out, (name, out)
    assert "no-such-tty" in out and "dialout" in out and "manifest" in out and "-> " in out
    assert "OK   camera" in out and "signal-only" in out
    assert not (tmp_path / "state").exists(), "doctor creates nothing"


def test_an_uncalibrated_station_asks_for_calibration_and_calibrates_over_mqtt(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "model", om=False)
    with DemoBench(tmp_path / "bench", station_id=f"cal-{uuid.uuid4().hex[:6]}", mode="triggered",
                   model=model) as fresh:
        watcher = ResultWatcher(fresh.broker.host, fresh.broker.port, [f"{fresh.topic_base}/#"])
        w = Watch(watcher)
        try:
            fresh.start_station()
            wait_until_serving(w, fresh)
            fresh.put_line(seed=1, dwell_s=60.0)
            answer = w.command(fresh, "measure", {"transaction": "uncalibrated"})
            assert answer["status"] == "error" and "calibrate dark, then white" in answer["error"], answer
            for kind in ("dark", "white"):
                fresh.stage.put_reference(kind)
                answer = w.command(fresh, "calibrate", {"reference": kind, "transaction": kind})
                assert answer["status"] == "ok" and answer["data"]["reference"] == kind, answer
            fresh.put_line(seed=1, dwell_s=60.0)
            answer = w.command(fresh, "measure", {"transaction": "calibrated"})
            assert answer["status"] == "ok" and "missing_reference" not in answer["data"]["flags"], answer
            assert fresh.stop_station() == 0
        finally:
            watcher.close()
