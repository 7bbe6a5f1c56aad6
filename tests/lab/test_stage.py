"""The sample stage shared by the spectrometer emulator and the virtual microscope."""

import json

import numpy as np
import pytest

from isic_drivers.lab import LabConfigError, ReferenceTile, SampleStage, draw_sample


def test_stage_file_round_trip(tmp_path) -> None:
    path = tmp_path / "stage.json"
    writer, reader = SampleStage(path), SampleStage(path)  # as two processes would hold it
    assert reader.current() == ReferenceTile("dark")  # nothing under the probe yet
    sample = draw_sample(np.random.default_rng(41), sample_id="LOT1-0001")
    writer.put_sample(sample)
    assert reader.current() == sample
    writer.put_reference("white")
    assert reader.current() == ReferenceTile("white")
    other = draw_sample(np.random.default_rng(42))
    writer.put_sample(other)
    writer.put_sample(sample)  # two quick writes: the reader must still see the latest
    assert reader.current() == sample
    assert json.loads(path.read_text())["kind"] == "sample"
    assert [p.name for p in tmp_path.iterdir()] == ["stage.json"]  # no temporary files left


def test_stage_rejects_bad_content(tmp_path) -> None:
    path = tmp_path / "stage.json"
    path.write_text('{"kind": "grey"}')
    with pytest.raises(LabConfigError, match="'grey'"):
        SampleStage(path).current()
    path.write_text("{not json")
    with pytest.raises(LabConfigError, match=str(path)):
        SampleStage(path).current()
    with pytest.raises(ValueError, match="kind"):
        SampleStage(path).put_reference("grey")


def test_production_line_changes_sample_every_dwell(tmp_path) -> None:
    now = [1000.0]
    line = SampleStage.production_line(seed=5, dwell_s=2.0, start_time=1000.0, clock=lambda: now[0])
    first = line.current()
    now[0] = 1001.9
    assert line.current() == first
    now[0] = 1002.0
    second = line.current()
    assert second != first and second.sample_id == "L5-000001"
    # another process with the same line through a file sees the same samples
    path = tmp_path / "stage.json"
    SampleStage(path, clock=lambda: 1000.0).put_line(seed=5, dwell_s=2.0)
    shared = SampleStage(path, clock=lambda: now[0])
    assert shared.current() == second
