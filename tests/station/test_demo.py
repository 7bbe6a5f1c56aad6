"""`isic-station demo` ends by itself with --count and shows results that arrived over MQTT."""

import re
import subprocess
import sys
from pathlib import Path

from fakes.tiny_isicnet import write_tiny_model


def test_demo_shows_results_and_stats(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "model", om=False)
    proc = subprocess.run([sys.executable, "-m", "isic_station.cli", "demo", "--count", "4", "--interval", "0.5",
                           "--model", str(model), "--stats", "--keep", str(tmp_path / "demo")],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("#")]
    assert len(lines) >= 4, proc.stdout
    assert re.match(r"#1\s+\S+\s+.*%.*conf [01]\.\d\d\s+flags .*ttr\s+\d+ ms", lines[0]), lines[0]
    assert "station stopped with exit code 0" in proc.stdout
    assert re.search(r"time-to-result .* p50 [\d.]+ ms, p99 [\d.]+ ms", proc.stdout), proc.stdout
    assert re.search(r"RSS \d+ MiB, CPU [\d.]+ %", proc.stdout), proc.stdout


def test_demo_starts_its_own_broker_when_none_answers(tmp_path: Path, monkeypatch) -> None:
    """A fresh machine: nothing on the usual broker address, so the demo starts a `mosquitto` on a free port."""
    from isic_station.tools import demo

    monkeypatch.setattr(demo, "LOCAL_BROKER", ("127.0.0.1", demo.free_port()))
    broker = demo.Broker(tmp_path).start()
    try:
        assert broker.started_here and broker.port != demo.LOCAL_BROKER[1]
        watcher = demo.ResultWatcher(broker.host, broker.port, ["probe/#"])  # subscribes: a real MQTT broker
        watcher.client.publish("probe/x", b"1", qos=1)
        topic, payload, _ = watcher.messages.get(timeout=10)
        assert (topic, payload) == ("probe/x", b"1")
        watcher.close()
    finally:
        broker.stop()
    assert broker.process is None and not demo.port_answers(broker.host, broker.port)
