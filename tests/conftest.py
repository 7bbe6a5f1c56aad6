"""Fixtures shared by every suite: real MQTT brokers.

`mqtt_broker` is the machine's Mosquitto (127.0.0.1:1883). Tests that stop or restart a broker
use `private_broker`, which starts their own `mosquitto` on a free port and can stop and restart it
on that same port.
"""

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator, Optional, Tuple

import pytest


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Return once host:port accepts TCP connections; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"nothing answered on {host}:{port} within {timeout} s")


class PrivateBroker:
    """A Mosquitto process of the test's own on a fixed free port: start, stop, restart."""

    def __init__(self, workdir: Path) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.config = workdir / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n", encoding="utf-8"
        )
        self.log = workdir / "mosquitto.log"
        self.process: Optional[subprocess.Popen] = None

    @property
    def address(self) -> Tuple[str, int]:
        return self.host, self.port

    def start(self) -> None:
        """Start the broker (again) on the same port and wait until it accepts connections."""
        if self.process is not None and self.process.poll() is None:
            return
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(["mosquitto", "-c", str(self.config)], stdout=log, stderr=log)
        wait_for_port(self.host, self.port)

    def stop(self) -> None:
        """Stop the broker and wait for the process to end."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture(scope="session")
def mqtt_broker() -> Tuple[str, int]:
    """The machine's Mosquitto on 127.0.0.1:1883 (installed and started by `make test`)."""
    wait_for_port("127.0.0.1", 1883, timeout=5.0)
    return "127.0.0.1", 1883


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    """A started Mosquitto of this test's own, stopped at the end."""
    if shutil.which("mosquitto") is None:
        pytest.fail("mosquitto is not installed: run `make test`, which installs it")
    broker = PrivateBroker(tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
