"""The real daemon speaking sd_notify: `isic-station run` with a NOTIFY_SOCKET of the test's own.

The station is the `isic-station run --config FILE` process exactly as the unit starts it, on the
bench of `isic-station demo` (the emulated OBP spectrometer in its own process on a pseudo-terminal,
the virtual microscope, the machine's Mosquitto on 127.0.0.1:1883). Only the model is the tiny
stand-in (tests/fakes/tiny_isicnet.py), so the test does not depend on training. The test plays
systemd: it binds the datagram socket, sets NOTIFY_SOCKET and WATCHDOG_USEC, and reads what arrives.
"""

import os
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Iterator, List

import pytest

from fakes.tiny_isicnet import write_tiny_model
from isic_common.errors import EX_CONFIG
from isic_station.tools.demo import DemoBench, station_command

# systemd's WatchdogSec=2 as the daemon sees it: a ping is due every second.
WATCHDOG_USEC = 2_000_000
STARTUP_S = 60.0


@pytest.fixture
def bench(tmp_path: Path, mqtt_broker) -> Iterator[DemoBench]:
    """Emulated spectrometer + virtual microscope, calibrated, with a production line under the probe."""
    model = write_tiny_model(tmp_path / "model", om=False)
    with DemoBench(tmp_path / "bench", station_id=f"sd-{uuid.uuid4().hex[:8]}", mode="continuous",
                   interval_s=0.5, model=model, camera=True) as b:
        b.calibrate()
        b.put_line(seed=5, dwell_s=1.0)
        yield b


def start_daemon(bench: DemoBench, notify_socket: str, config: Path) -> subprocess.Popen:
    """`isic-station run --config FILE` as systemd starts it: NOTIFY_SOCKET and WATCHDOG_USEC set."""
    env = dict(os.environ, NOTIFY_SOCKET=notify_socket, WATCHDOG_USEC=str(WATCHDOG_USEC))
    env.pop("WATCHDOG_PID", None)
    with open(bench.station_log, "ab") as log:
        bench.station = subprocess.Popen(station_command() + ["run", "--config", str(config)],
                                         stdout=log, stderr=log, env=env)
    return bench.station


def log_tail(bench: DemoBench) -> str:
    return bench.station_log.read_text(encoding="utf-8", errors="replace")[-3000:]


def pings(messages: List[dict]) -> int:
    return sum(1 for m in messages if m.get("WATCHDOG") == "1")


def test_ready_status_watchdog_and_stopping_arrive(bench, path_notify_receiver):
    station = start_daemon(bench, path_notify_receiver.notify_socket, bench.config_path)
    ready = path_notify_receiver.wait_for(lambda m: m.get("READY") == "1", STARTUP_S, "READY=1")
    before_ready = path_notify_receiver.messages[:-1]
    assert any(m.get("STATUS", "").startswith("Starting: ") for m in before_ready), before_ready
    # The READY line tells a technician what runs: mode, model, backend (and DEGRADED parts, none here).
    assert "continuous" in ready["STATUS"] and "onnxruntime" in ready["STATUS"], ready
    assert "DEGRADED" not in ready["STATUS"], log_tail(bench)

    # Measurements progress, so a ping arrives every half interval (1 s).
    assert pings(path_notify_receiver.collect(4.0)) >= 2, log_tail(bench)

    station.send_signal(signal.SIGTERM)
    stopping = path_notify_receiver.wait_for(lambda m: m.get("STOPPING") == "1", 15.0, "STOPPING=1")
    assert "flushing the outbox" in stopping.get("STATUS", "")
    assert station.wait(30) == 0, log_tail(bench)


def test_pings_stop_when_the_spectrometer_stops_answering(bench, path_notify_receiver):
    start_daemon(bench, path_notify_receiver.notify_socket, bench.config_path)
    path_notify_receiver.wait_for(lambda m: m.get("READY") == "1", STARTUP_S, "READY=1")
    assert pings(path_notify_receiver.collect(3.0)) >= 1
    os.kill(bench.emulator.pid, signal.SIGSTOP)
    try:
        stalled = path_notify_receiver.wait_for(lambda m: m.get("STATUS", "").startswith("Pipeline stalled"),
                                                15.0, "STATUS=Pipeline stalled")
        assert "watchdog pings stopped" in stalled["STATUS"]
        # Three ping periods without a ping: systemd's WatchdogSec= would now expire and restart the station.
        assert pings(path_notify_receiver.collect(3.0)) == 0
    finally:
        os.kill(bench.emulator.pid, signal.SIGCONT)


def test_configuration_error_exits_78_without_ready(bench, path_notify_receiver, tmp_path):
    config = tmp_path / "broken.toml"
    config.write_text(bench.config_path.read_text(encoding="utf-8").replace(
        'kind = "continuous"', 'kind = "sometimes"'), encoding="utf-8")
    station = start_daemon(bench, path_notify_receiver.notify_socket, config)
    assert station.wait(STARTUP_S) == EX_CONFIG  # RestartPreventExitStatus=78: systemd does not restart it
    assert not [m for m in path_notify_receiver.collect(0.2) if m.get("READY") == "1"]
    assert "mode.kind" in log_tail(bench)
