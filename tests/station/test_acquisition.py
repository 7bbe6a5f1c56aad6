"""Spectrum flags, generated sample ids, and the config's quality thresholds against the gate's own defaults."""

from dataclasses import fields, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from isic_drivers.obp.spectrometer import WIRE_FULL_SCALE_COUNTS
from isic_station.acquisition.acquirer import generated_sample_id, spectrum_flags
from isic_station.acquisition.quality_gate import GateThresholds
from isic_station.config import load_config
from isic_station.daemon.wiring import quality_thresholds
from isic_station.schemas import load_schema


def test_saturation_and_low_signal_flags() -> None:
    dark = np.full(8, 1500.0)
    clean = dark + np.linspace(5000, 30000, 8)
    full = WIRE_FULL_SCALE_COUNTS
    assert spectrum_flags(clean, dark, white_peak=40000.0, min_signal_fraction=0.05, full_scale=full) == set()
    clipped = clean.copy()
    clipped[3] = full
    assert spectrum_flags(clipped, dark, 40000.0, 0.05, full) == {"saturation"}
    weak = dark + 1000.0  # 1000 counts above dark < 5 % of a 40000-count white
    assert spectrum_flags(weak, dark, 40000.0, 0.05, full) == {"low_signal"}
    # without references: judged against full scale
    assert spectrum_flags(np.full(8, 2000.0), None, None, 0.05, full) == {"low_signal"}


def test_full_scale_is_the_instruments_own() -> None:
    """A 14-bit instrument clips at 16383: the same counts saturate it and not a 16-bit one."""
    dark = np.full(8, 500.0)
    counts = dark + np.linspace(2000, 16300, 8)
    assert "saturation" in spectrum_flags(counts, dark, 15000.0, 0.05, full_scale=16383.0)
    assert "saturation" not in spectrum_flags(counts, dark, 15000.0, 0.05, full_scale=WIRE_FULL_SCALE_COUNTS)


def test_generated_sample_id_names_station_and_utc_time() -> None:
    moment = datetime(2026, 11, 21, 19, 30, 5, 123456, tzinfo=timezone.utc)
    assert generated_sample_id("line3", moment) == "line3-20261121T193005123Z"


def test_quality_thresholds_default_to_the_gates_own(tmp_path: Path) -> None:
    """Keys left out of [quality] keep GateThresholds' defaults; keys set override them."""
    path = tmp_path / "s.toml"
    path.write_text('[station]\nid = "s"\n', encoding="utf-8")
    assert quality_thresholds(load_config(path)) == GateThresholds()
    path.write_text('[station]\nid = "s"\n[quality]\nmin_focus = 12.5\n', encoding="utf-8")
    assert quality_thresholds(load_config(path)) == replace(GateThresholds(), min_focus=12.5)
    gate_keys = {f.name for f in fields(GateThresholds)}
    schema = load_schema("config")["properties"]["quality"]["properties"]
    assert {"min_focus", "max_clipped_high", "max_clipped_low", "min_coverage"} <= gate_keys & set(schema)
