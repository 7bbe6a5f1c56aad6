"""The station with the shipped, calibrated model: intervals, the decision rule, the lot topic, unknown fibres.

Real parts as in test_e2e (the `isic-station run` process, the emulated spectrometer on a pty, the
virtual microscope, Mosquitto), but with the shipped ISiC-Net and its uncertainty calibration instead
of the tiny stand-in, so the calibrated path is what publishes.
"""

import uuid
from typing import Iterator, Tuple

import pytest

from isic_station.schemas import validation_errors
from isic_station.tools.demo import DemoBench, ResultWatcher

from .test_e2e import Watch, put_named_sample, wait_until_serving


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory, mqtt_broker: Tuple[str, int]) -> Iterator[DemoBench]:
    with DemoBench(tmp_path_factory.mktemp("calibrated"), station_id=f"cal-{uuid.uuid4().hex[:8]}",
                   mode="triggered", broker=mqtt_broker) as b:
        b.calibrate()
        yield b


@pytest.fixture(scope="module")
def watch(bench: DemoBench) -> Iterator[Watch]:
    watcher = ResultWatcher(bench.broker.host, bench.broker.port, [f"{bench.topic_base}/#"])
    w = Watch(watcher)
    bench.start_station()
    wait_until_serving(w, bench)
    yield w
    watcher.close()


def measure(bench: DemoBench, watch: Watch, sample_id: str) -> dict:
    answer = watch.command(bench, "measure", {"sample_id": sample_id, "transaction": sample_id})
    assert answer["status"] == "ok", answer
    sequence = answer["data"]["sequence"]
    _, result = watch.wait_for(lambda t, d: t.endswith("/result") and d.get("sequence") == sequence)
    assert validation_errors(result, "result") == []
    return result


def test_a_lot_result_carries_intervals_a_verdict_and_the_lot_summary(bench: DemoBench, watch: Watch) -> None:
    lot_id = f"LOT-{uuid.uuid4().hex[:6]}"
    answer = watch.command(bench, "set_lot", {"lot_id": lot_id, "composition": {"cotton": 0.6, "polyester": 0.4},
                                              "transaction": "lot"})
    assert answer["status"] == "ok", answer
    put_named_sample(bench, "CP-1", {"cotton": 0.6, "polyester": 0.4})
    result = measure(bench, watch, "CP-1")
    for fibre, (low, high) in result["interval_95"].items():
        assert low <= result["composition"][fibre] <= high
    assert result["uncertainty"]["cotton"] > 0.005  # calibrated, not the tile spread
    spec = result["spec"]
    assert spec["rule"] == "interval_95" and spec["verdict"] in ("pass", "undetermined", "fail")
    assert ("refer_to_lab" in result["flags"]) == spec["refer_to_lab"]
    assert "uncalibrated_settings" not in result["flags"], "the bench measures as the calibration data were taken"
    _, lot = watch.wait_for(lambda t, d: t.endswith("/lot") and isinstance(d, dict) and d.get("lot_id") == lot_id)
    assert validation_errors(lot, "lot") == []
    assert lot["n"] == 1 and lot["rule"] == "interval_95" and lot["interval_95"]["cotton"] == result["interval_95"][
        "cotton"]


def test_a_wool_cotton_sample_is_flagged_and_referred_to_the_lab(bench: DemoBench, watch: Watch) -> None:
    put_named_sample(bench, "WOOL-1", {"wool": 0.5, "cotton": 0.5})
    result = measure(bench, watch, "WOOL-1")
    assert "unknown_fibre" in result["flags"] and "refer_to_lab" in result["flags"]
    _, alarm = watch.wait_for(lambda t, d: t.endswith("/alarm") and d.get("kind") == "refer_to_lab"
                              and d.get("details", {}).get("sequence") == result["sequence"])
    assert validation_errors(alarm, "alarm") == [] and "does not know" in alarm["message"]


def test_zz_the_lot_summary_survives_a_station_restart(bench: DemoBench, watch: Watch) -> None:
    lot_id = f"LOT-{uuid.uuid4().hex[:6]}"
    answer = watch.command(bench, "set_lot", {"lot_id": lot_id, "composition": {"cotton": 0.6, "polyester": 0.4},
                                              "transaction": "restart-lot"})
    assert answer["status"] == "ok", answer
    put_named_sample(bench, "CP-R1", {"cotton": 0.6, "polyester": 0.4})
    first = measure(bench, watch, "CP-R1")
    _, before = watch.wait_for(lambda t, d: t.endswith("/lot") and isinstance(d, dict) and d.get("lot_id") == lot_id)
    assert before["n"] == 1
    assert bench.stop_station() == 0
    watch.drain()
    mark = len(watch.seen)
    bench.start_station()
    # the new process online and subscribed (as wait_until_serving, on messages since the restart)
    watch.wait_for(lambda t, d: t == f"{bench.topic_base}/status" and d.get("state") == "online", 60, mark)
    watch.wait_for(lambda t, d: t == f"{bench.topic_base}/health", 60, mark)
    put_named_sample(bench, "CP-R2", {"cotton": 0.6, "polyester": 0.4})
    second = measure(bench, watch, "CP-R2")   # no set_lot after the restart: the station still knows the lot
    assert second["lot_id"] == lot_id and second["spec"]["lot_id"] == lot_id
    _, after = watch.wait_for(lambda t, d: t.endswith("/lot") and isinstance(d, dict) and d.get("lot_id") == lot_id
                              and d.get("n") == 2)
    assert validation_errors(after, "lot") == []
    assert after["since"] == before["since"]
    expected = (first["composition"]["cotton"] + second["composition"]["cotton"]) / 2
    assert after["mean"]["cotton"] == pytest.approx(expected, abs=1e-4)
    assert sum(after["results"].values()) == 2


def test_a_station_measuring_less_than_calibrated_refers_every_result(tmp_path, mqtt_broker) -> None:
    """Two frames where the calibration saw three: the intervals would be too narrow, so the result is flagged
    uncalibrated_settings and referred to the lab, and the alarm names the setting and the fix."""
    with DemoBench(tmp_path, station_id=f"few-{uuid.uuid4().hex[:8]}", mode="triggered", broker=mqtt_broker,
                   settings={"camera": {"frames_per_measurement": 2}}) as few:
        few.calibrate()
        watcher = ResultWatcher(few.broker.host, few.broker.port, [f"{few.topic_base}/#"])
        try:
            w = Watch(watcher)
            few.start_station()
            wait_until_serving(w, few)
            put_named_sample(few, "CP-F1", {"cotton": 0.6, "polyester": 0.4})
            result = measure(few, w, "CP-F1")
            assert {"uncalibrated_settings", "refer_to_lab"} <= set(result["flags"])
            _, alarm = w.wait_for(lambda t, d: t.endswith("/alarm") and d.get("kind") == "refer_to_lab"
                                  and d.get("details", {}).get("sequence") == result["sequence"])
            assert validation_errors(alarm, "alarm") == []
            assert "n_frames 3 -> 2" in alarm["message"] and "calibrate-uncertainty --config" in alarm["message"]
        finally:
            watcher.close()
    assert "uncertainty calibration was fitted on richer measurements" in few.station_log.read_text(encoding="utf-8")
