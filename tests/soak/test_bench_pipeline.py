"""`isic-station bench pipeline --json` prints one object with exactly the contracted keys, with figures
that are internally consistent (a short window on the tiny model; the figures themselves are reported
by running the command, not asserted here)."""

import json
import subprocess
from pathlib import Path

import pytest

from fakes.tiny_isicnet import write_tiny_model
from isic_station.tools.demo import station_command


def test_bench_pipeline_json_has_exactly_the_contract_keys(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "model", om=False)
    proc = subprocess.run(station_command() + ["bench", "pipeline", "--seconds", "3", "--model", str(model),
                                               "--json"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    figures = json.loads(lines[0])
    assert set(figures) == {"acquisition_ms", "physical_limit_ms", "overhead_ms", "processed_fraction",
                            "cpu_ms_per_result", "rss_mb", "results_per_minute"}
    for key in ("acquisition_ms", "overhead_ms"):
        assert set(figures[key]) == {"p50", "p99"}
        assert 0 <= figures[key]["p50"] <= figures[key]["p99"]
    assert figures["acquisition_ms"]["p50"] > 0
    # the demo's settings: 3 frames at 15 fps (200 ms) outlast 4 x 8 ms + one 640-byte exchange at 115200 baud
    assert figures["physical_limit_ms"] == 200.0
    assert figures["acquisition_ms"]["p50"] >= 0.95 * figures["physical_limit_ms"]  # the devices' clocks hold
    assert figures["results_per_minute"] > 0
    assert 0 < figures["processed_fraction"] <= 1
    assert figures["cpu_ms_per_result"] > 0 and 20 < figures["rss_mb"] < 4096


def test_bench_pipeline_without_a_model_says_how_to_give_one(tmp_path: Path) -> None:
    proc = subprocess.run(station_command() + ["bench", "pipeline", "--model", str(tmp_path / "none.json")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 78 and "Traceback" not in proc.stderr
    assert "none.json" in proc.stderr.strip().splitlines()[-1]


def test_bench_pipeline_at_given_settings(tmp_path: Path) -> None:
    """`--settings` sets scans, integration, frames and fps; the physical limit follows them."""
    model = write_tiny_model(tmp_path / "model", om=False)
    settings = tmp_path / "settings.toml"
    settings.write_text("[spectrometer]\ncoadd = 8\nintegration_us = 10000\nport = \"/dev/not-used\"\n"
                        "[camera]\nfps = 20\nframes_per_measurement = 2\n[mqtt]\nport = 1\n", encoding="utf-8")
    proc = subprocess.run(station_command() + ["bench", "pipeline", "--seconds", "2", "--model", str(model),
                                               "--settings", str(settings), "--json"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)
    # spectrometer: 8 x 10 ms + one 640-byte exchange at 115200 baud (55.6 ms) > camera: 2 frames at 20 fps
    assert figures["physical_limit_ms"] == round(8 * 10.0 + 640 * 10 / 115200 * 1000, 2)
    assert figures["acquisition_ms"]["p50"] >= 0.95 * figures["physical_limit_ms"]


def test_physical_limit_is_the_slower_device() -> None:
    from isic_station.tools.bench.pipeline import physical_limit_ms

    exchange_ms = (64 + 576) * 10 / 115200 * 1000  # request and 256-pixel spectrum, 8N1
    # production: 16 scans of 8 ms averaged on the instrument (one exchange) vs 16 frames at 15 fps
    assert physical_limit_ms(16, 8000, 115200, 256, True, 16, 15.0) == pytest.approx(16 / 15 * 1000)
    assert physical_limit_ms(16, 8000, 115200, 256, True, 2, 15.0) == pytest.approx(16 * 8 + exchange_ms)
    # co-added on the host: one exchange per scan
    assert physical_limit_ms(16, 8000, 115200, 256, False, 2, 15.0) == pytest.approx(16 * 8 + 16 * exchange_ms)


def test_bench_pipeline_settings_without_measurement_keys_is_a_config_error(tmp_path: Path) -> None:
    settings = tmp_path / "settings.toml"
    settings.write_text("[mqtt]\nport = 1\n", encoding="utf-8")
    proc = subprocess.run(station_command() + ["bench", "pipeline", "--settings", str(settings)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 78 and "Traceback" not in proc.stderr
    assert "settings.toml" in proc.stderr and "coadd" in proc.stderr
