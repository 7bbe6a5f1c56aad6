"""The station's commands as a technician runs them: one clear line and exit code 78 for a bad config."""

import subprocess
import sys
from pathlib import Path

import pytest

STATION_CLI = [sys.executable, "-m", "isic_station.cli"]


@pytest.mark.parametrize("command", [["run"], ["doctor"], ["calibrate", "dark"]])
def test_bad_config_exits_78_naming_the_key(tmp_path: Path, command: list) -> None:
    path = tmp_path / "station.toml"
    path.write_text('[station]\nid = "s1"\n[spectrometer]\nbaud = 12345\n', encoding="utf-8")
    proc = subprocess.run(STATION_CLI + command + ["--config", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 78, proc.stderr
    assert "spectrometer.baud" in proc.stderr and "12345" in proc.stderr and "115200" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_missing_config_file_exits_78(tmp_path: Path) -> None:
    proc = subprocess.run(STATION_CLI + ["run", "--config", str(tmp_path / "nope.toml")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 78 and "nope.toml" in proc.stderr and "does not exist" in proc.stderr
