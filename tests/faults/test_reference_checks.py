"""References are checked before they are kept, on the real daemon with the emulated spectrometer: a dark
over fabric, a white on the dark tile or on fabric, and a retained `calibrate` are refused with a reason and
the stored references stay; a malformed references file at start is moved aside with a device_fault alarm.
"""

import json
import time
from pathlib import Path

import pytest

from isic_common.errors import DeviceError
from isic_station.tools.demo import ResultWatcher
from messaging.mqtt_helpers import publish_once

from .conftest import recorder_for, results, wait_until

pytestmark = pytest.mark.timeout(150)


def wait_serving(watcher: ResultWatcher, bench) -> None:
    """Until the started station answers commands (its first `status`)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            if watcher.request(bench.topic_base, "status", {}, timeout_s=2.0)["status"] == "ok":
                return
        except DeviceError:
            assert time.monotonic() < deadline, bench.log_tail()


def references_file(bench) -> Path:
    return bench.workdir / "state" / "calibration" / "references.json"


def test_bad_references_are_refused_and_the_stored_ones_stay(make_bench, private_broker) -> None:
    bench = make_bench(private_broker, kind="refs", mode="triggered")
    before = references_file(bench).read_bytes()
    watcher = ResultWatcher(*private_broker.address, [f"{bench.topic_base}/cmd/+/response"])
    try:
        bench.start_station()
        wait_serving(watcher, bench)
        assert watcher.request(bench.topic_base, "measure", {})["status"] == "ok"  # fabric on the line
        dark = watcher.request(bench.topic_base, "calibrate", {"reference": "dark"})
        assert dark["status"] == "error" and "dark reference refused: it saw light" in dark["error"], dark
        white = watcher.request(bench.topic_base, "calibrate", {"reference": "white"})
        assert white["status"] == "error" and "spectral shape" in white["error"], white
        bench.stage.put_reference("dark")
        white = watcher.request(bench.topic_base, "calibrate", {"reference": "white"})
        assert white["status"] == "error" and "too little light" in white["error"], white
        # the original probe: `calibrate dark` published with retain while fabric is under the probe
        bench.put_line(seed=4, dwell_s=2.0)
        topic = f"{bench.topic_base}/cmd/calibrate"
        publish_once(*private_broker.address, topic, b'{"reference": "dark", "transaction": "r"}', retain=True)
        publish_once(*private_broker.address, topic, b"", retain=True)
        assert references_file(bench).read_bytes() == before, "nothing refused was stored"
        bench.stage.put_reference("white")
        white = watcher.request(bench.topic_base, "calibrate", {"reference": "white"})
        assert white["status"] == "ok", white  # the real tile still calibrates
    finally:
        watcher.close()


@pytest.mark.parametrize("damage", ["not-json", "white-cut-to-100-pixels"])
def test_a_malformed_references_file_is_moved_aside_with_a_device_fault_alarm(make_bench, private_broker,
                                                                              damage: str) -> None:
    bench = make_bench(private_broker, kind="badref", interval_s=0.3)
    path = references_file(bench)
    if damage == "not-json":
        path.write_text('{"references": {"dark": ', encoding="utf-8")
    else:
        doc = json.loads(path.read_text(encoding="utf-8"))
        doc["references"]["white"]["counts"] = doc["references"]["white"]["counts"][:100]
        path.write_text(json.dumps(doc), encoding="utf-8")
    rec = recorder_for(private_broker, bench, topics=("result", "alarm"))
    try:
        bench.start_station()
        wait_until(lambda: any(a["kind"] == "device_fault" and a["details"]["device"] == "calibration"
                               for a in rec.payloads(f"{bench.topic_base}/alarm") if a), 30,
                   "a device_fault alarm naming the calibration", bench)
        assert [p.name.startswith("references.json.bad-") for p in path.parent.iterdir()] == [True]
        bench.wait_alive(1.0)
        assert "calibrate dark, then white" in bench.log_tail()
        assert bench.stop_station() == 0
        bench.calibrate()  # the technician does what the alarm says; results flow again
        bench.put_line(seed=4, dwell_s=2.0)
        bench.start_station()
        wait_until(lambda: len(results(rec, bench)) >= 2, 60, "results after calibrating again", bench)
    finally:
        rec.close()
