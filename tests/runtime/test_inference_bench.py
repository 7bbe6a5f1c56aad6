"""`isic-station bench model`: runs on a manifest and prints the contracted JSON object (no timing asserted)."""

import json
import sys

import pytest

from fakes.fake_acl import FakeAcl
from fakes.tiny_isicnet import write_tiny_model
from isic_station.cli import main
from isic_station.inference.acl_backend import finalize_pyacl
from isic_station.manifest import load_manifest
from isic_station.tools.bench.model import TIMINGS, lab_settings


def _bench_json(capsys, *extra):
    code = main(["bench", "model", "--repeats", "3", "--json", *extra])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    return json.loads(lines[0])


@pytest.mark.parametrize("counter", [False, True], ids=["v4-layout", "with-counter"])
def test_json_is_one_object_with_the_contracted_keys(tmp_path, capsys, no_acl, counter):
    manifest = write_tiny_model(tmp_path / "model", counter=counter)
    result = _bench_json(capsys, "--manifest", str(manifest), "--backend", "auto", "--threads", "1")
    assert set(result) == {"backend", "settings", *TIMINGS}
    assert {"after_last_frame_ms", "total_ms"} <= set(TIMINGS)   # the contract
    assert result["backend"] == "onnxruntime"
    for key in TIMINGS:
        assert set(result[key]) == {"p50", "p99"}
        assert 0 < result[key]["p50"] <= result[key]["p99"]
    # all the work of a measurement is the part after its last frame plus the part while frames arrived
    assert result["total_ms"]["p50"] >= result["after_last_frame_ms"]["p50"]
    assert result["settings"]["counter"] is counter


def test_bench_runs_on_the_acl_backend(tiny_manifest_path, capsys, monkeypatch):
    fake = FakeAcl()
    monkeypatch.setitem(sys.modules, "acl", fake)
    result = _bench_json(capsys, "--manifest", str(tiny_manifest_path), "--backend", "acl")
    assert result["backend"] == "acl"
    finalize_pyacl()  # what the process does at exit
    assert fake.violations == [] and fake.leaks() == []


def test_text_output_names_backend_and_each_figure(tiny_manifest_path, capsys):
    assert main(["bench", "model", "--repeats", "2", "--backend", "onnxruntime",
                 "--manifest", str(tiny_manifest_path)]) == 0
    out = capsys.readouterr().out
    assert "on onnxruntime" in out
    for key in TIMINGS:
        assert key in out


def test_missing_manifest_is_one_clear_line(tmp_path, capsys):
    assert main(["bench", "model", "--manifest", str(tmp_path / "nope.json")]) == 78
    assert "model manifest not found" in capsys.readouterr().err


def test_repeats_must_be_positive(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["bench", "model", "--repeats", "0"])
    assert caught.value.code == 2
    assert "expected a whole number >= 1" in capsys.readouterr().err


def test_measurements_follow_the_station_settings_training_recorded(tiny_manifest_path):
    doc = json.loads(tiny_manifest_path.read_text())
    doc["training"] = {"station": {"coadd": 16, "n_frames": 2, "frame_px": 128, "frame_height": 96,
                                   "camera_um_per_px": 1.6, "integration_us": None}}
    tiny_manifest_path.write_text(json.dumps(doc))
    settings = lab_settings(load_manifest(tiny_manifest_path))
    assert settings == {"coadd": 16, "n_frames": 2, "frame_size": 128, "frame_height": 96, "um_per_px": 1.6}


def test_settings_file_measures_as_it_says(tiny_manifest_path, tmp_path, capsys):
    """`--settings` (as `bench pipeline` takes it): its [camera] and [spectrometer] keys over the manifest's."""
    doc = json.loads(tiny_manifest_path.read_text())
    doc["training"] = {"station": {"coadd": 16, "n_frames": 2, "frame_px": 128, "frame_height": 96,
                                   "camera_um_per_px": 1.6}}
    tiny_manifest_path.write_text(json.dumps(doc))
    settings = tmp_path / "settings.toml"
    settings.write_text("[camera]\nframes_per_measurement = 3\nwidth = 160\nheight = 120\n[spectrometer]\ncoadd = 4\n")
    result = _bench_json(capsys, "--manifest", str(tiny_manifest_path), "--backend", "onnxruntime",
                         "--settings", str(settings))
    assert result["settings"] == {"frames": 3, "frame_px": [160, 120], "camera_um_per_px": 1.6, "coadd": 4,
                                  "counter": False}
