"""`isic-station bench pipeline --json` prints one object with exactly the contracted keys, with figures
that are internally consistent (a short window on the tiny model; the figures themselves are reported
by running the command, not asserted here)."""

import json
import subprocess
from pathlib import Path

from fakes.tiny_isicnet import write_tiny_model
from isic_station.demo import station_command


def test_bench_pipeline_json_has_exactly_the_contract_keys(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "model", om=False)
    proc = subprocess.run(station_command() + ["bench", "pipeline", "--seconds", "3", "--model", str(model),
                                               "--json"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    figures = json.loads(lines[0])
    assert set(figures) == {"acquisition_ms", "overhead_ms", "processed_fraction", "cpu_ms_per_result", "rss_mb"}
    for key in ("acquisition_ms", "overhead_ms"):
        assert set(figures[key]) == {"p50", "p99"}
        assert 0 <= figures[key]["p50"] <= figures[key]["p99"]
    assert figures["acquisition_ms"]["p50"] > 0
    assert 0 < figures["processed_fraction"] <= 1
    assert figures["cpu_ms_per_result"] > 0 and 20 < figures["rss_mb"] < 4096


def test_bench_pipeline_without_a_model_says_how_to_give_one(tmp_path: Path) -> None:
    proc = subprocess.run(station_command() + ["bench", "pipeline", "--model", str(tmp_path / "none.json")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 78 and "Traceback" not in proc.stderr
    assert "none.json" in proc.stderr.strip().splitlines()[-1]
