"""`isic-station bench mqtt` runs end to end against the real broker (figures are printed, not judged)."""

import json
import subprocess
import sys

from isic_station.tools.bench.mqtt import measure
from isic_station.tools.demo import free_port


def test_measure_delivers_everything_and_reports_percentiles(mqtt_broker, tmp_path):
    figures = measure(*mqtt_broker, count=10, rate=200.0, state_dir=str(tmp_path))
    assert figures["delivered"] == 10 and figures["left_in_outbox"] == 0
    for key in ("store_ms", "delivered_ms"):
        assert 0 < figures[key]["p50"] <= figures[key]["p99"] <= figures[key]["max"]
    assert list(tmp_path.iterdir()) == [], "the bench's outbox is removed afterwards"


def test_command_prints_one_json_object(mqtt_broker):
    host, port = mqtt_broker
    out = subprocess.run([sys.executable, "-m", "isic_station.cli", "bench", "mqtt", "--count", "5", "--rate", "100",
                          "--host", host, "--port", str(port), "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["delivered"] == 5


def test_no_broker_is_one_clear_error(tmp_path):
    port = free_port()
    out = subprocess.run([sys.executable, "-m", "isic_station.cli", "bench", "mqtt", "--port", str(port)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1].startswith("isic-station: error: no MQTT broker answered")
