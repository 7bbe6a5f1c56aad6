"""The plant service's systemd units, offline with the real systemd-analyze: `verify` prints nothing
and `security` scores an exposure of at most 2.0 (on a copy whose ExecStart is this venv's isic-plant)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = sorted((Path(__file__).resolve().parents[2] / "plant" / "systemd").glob("*.service"))
INSTALLED_EXEC = "/opt/isic-plant/venv/bin/isic-plant"


def _stand_in(tmp_path: Path, unit: Path) -> Path:
    text = unit.read_text(encoding="utf-8")
    assert text.count(INSTALLED_EXEC) == 1
    copy = tmp_path / unit.name
    copy.write_text(text.replace(INSTALLED_EXEC, str(Path(sys.executable).with_name("isic-plant"))), encoding="utf-8")
    return copy


def test_there_is_a_collector_and_a_web_unit():
    assert [u.name for u in UNITS] == ["isic-plant-collector.service", "isic-plant-web.service"]
    assert " collect --config " in UNITS[0].read_text() and " serve --config " in UNITS[1].read_text()


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_verifies_silently_and_is_hardened(systemd_analyze, tmp_path, unit):
    copy = _stand_in(tmp_path, unit)
    verify = subprocess.run([systemd_analyze, "verify", "--man=no", str(copy)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert verify.returncode == 0 and not (verify.stdout + verify.stderr).strip(), verify.stdout + verify.stderr
    security = subprocess.run([systemd_analyze, "security", "--offline=true", "--threshold=20", str(copy)],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)
    score = float(re.search(r"Overall exposure level for [\w.@-]+: (\d+\.\d+)", security.stdout).group(1))
    assert security.returncode == 0 and score <= 2.0, security.stdout
    assert "RestartPreventExitStatus=78" in unit.read_text()
