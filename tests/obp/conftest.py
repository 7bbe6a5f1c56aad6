"""A running `isic-station emulate spectrometer` process for the driver tests."""

import select
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List

import pytest


class EmulatorProcess:
    """The emulator as a child process; `port` is the first line it printed."""

    def __init__(self, args: List[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "isic_station.cli", "emulate", "spectrometer", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready, _, _ = select.select([self.process.stdout], [], [], 30)
        if not ready:
            self.stop()
            pytest.fail("the emulator printed no port within 30 s")
        self.port = self.process.stdout.readline().strip()
        if not self.port:
            pytest.fail(f"the emulator exited: {self.process.communicate(timeout=10)[1]}")

    def stop(self) -> int:
        """SIGTERM, then the exit code (it must stop within 10 s)."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            raise


@pytest.fixture
def start_emulator(tmp_path: Path) -> Iterator:
    started: List[EmulatorProcess] = []

    def start(*args: str) -> EmulatorProcess:
        emulator = EmulatorProcess(list(args))
        started.append(emulator)
        return emulator

    yield start
    for emulator in started:
        emulator.stop()
