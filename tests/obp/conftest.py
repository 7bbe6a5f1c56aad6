"""A running `isic-station emulate spectrometer` process for the driver tests."""

import select
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List

import pytest


class EmulatorProcess:
    """The emulator as a child process; `port` is the first line it printed."""

    def __init__(self, args: List[str], log_path: Path) -> None:
        # its log (stderr) to a file: a pipe nobody reads would fill with its INFO lines and stop it
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "isic_station.cli", "emulate", "spectrometer", *args],
                stdout=subprocess.PIPE, stderr=log, text=True)
        ready, _, _ = select.select([self.process.stdout], [], [], 30)
        if not ready:
            self.stop()
            pytest.fail("the emulator printed no port within 30 s")
        self.port = self.process.stdout.readline().strip()
        if not self.port:
            self.process.wait(timeout=10)
            pytest.fail(f"the emulator exited: {log_path.read_text(encoding='utf-8', errors='replace')}")

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
        emulator = EmulatorProcess(list(args), tmp_path / f"emulator-{len(started)}.log")
        started.append(emulator)
        return emulator

    yield start
    for emulator in started:
        emulator.stop()
