"""Fixtures shared by every suite: real MQTT brokers.

`mqtt_broker` is the machine's Mosquitto (127.0.0.1:1883). Tests that stop or restart a broker
use `private_broker`, which starts their own `mosquitto` on a free port and can stop and restart it
on that same port: the demo's `isic_station.tools.demo.MosquittoProcess`, so tests and demo share one harness.
"""

import shutil
import time
from pathlib import Path
from typing import Iterator, Tuple

import pytest

from isic_station.tools.demo import MosquittoProcess, port_answers


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Return once host:port accepts TCP connections; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not port_answers(host, port):
        if time.monotonic() > deadline:
            pytest.fail(f"nothing answered on {host}:{port} within {timeout} s")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def mqtt_broker() -> Tuple[str, int]:
    """The machine's Mosquitto on 127.0.0.1:1883 (installed and started by `make test`)."""
    wait_for_port("127.0.0.1", 1883, timeout=5.0)
    return "127.0.0.1", 1883


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[MosquittoProcess]:
    """A started Mosquitto of this test's own, stopped at the end."""
    if shutil.which("mosquitto") is None:
        pytest.fail("mosquitto is not installed: run `make test`, which installs it")
    broker = MosquittoProcess(tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def systemd_analyze() -> str:
    """The real systemd-analyze, for the offline unit checks of the station's and the plant's units."""
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (`make system-deps` installs the systemd package)")
    return path
