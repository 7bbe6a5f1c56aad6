"""The manifest loader accepts a well-formed manifest and names every problem of a bad one."""

import copy
import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from isic_common.errors import EX_CONFIG, ModelError
from isic_station.manifest import load_manifest, verify_graph_file


def _tensor(name, shape):
    return {"name": name, "shape": shape, "dtype": "float32"}


def _manifest_doc(onnx_sha: str) -> dict:
    grid = [900.0 + 100.0 * i for i in range(9)]
    graph = {
        "onnx": "m.onnx",
        "sha256": onnx_sha,
        "inputs": [_tensor("spectrum", [2, 9]), _tensor("image", [2, 1, 16, 16])],
        "outputs": [_tensor("composition", [2, 2]), _tensor("blend_logits", [2, 3])],
    }
    return {
        "manifest_version": 1,
        "model": {"name": "isicnet", "version": "0.0.1"},
        "fibres": ["cotton", "polyester"],
        "blend_classes": ["cotton", "polyester", "cotton/polyester"],
        "spectrum": {
            "wavelengths_nm": grid,
            "reflectance_clip": [1e-4, 1.5],
            "scatter": "snv",
            "savgol": {"window": 5, "polyorder": 2, "deriv": 1},
            "mean": [0.0] * 9,
            "std": [1.0] * 9,
        },
        "image": {"tile_px": 16, "um_per_px": 1.0, "channels": 1, "tiles_per_measurement": 2, "mean": 0.5, "std": 0.25},
        "graphs": {"bimodal": graph, "signal_only": dict(graph, inputs=[_tensor("spectrum", [1, 9])])},
    }


@pytest.fixture
def model_dir(tmp_path: Path):
    payload = b"not really onnx, but the checksum is what is checked here"
    (tmp_path / "m.onnx").write_bytes(payload)
    return tmp_path, hashlib.sha256(payload).hexdigest()


def _write(folder: Path, doc: dict) -> Path:
    path = folder / "manifest.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def test_valid_manifest_loads_with_graph_paths_beside_it(model_dir):
    folder, sha = model_dir
    manifest = load_manifest(_write(folder, _manifest_doc(sha)))
    assert manifest.fibres == ("cotton", "polyester")
    assert manifest.graphs["bimodal"].onnx_path == folder / "m.onnx"
    assert manifest.graphs["signal_only"].inputs[0].shape == (1, 9)
    assert manifest.graphs["bimodal"].output("blend_logits").shape == (2, 3)
    verify_graph_file(manifest.graphs["bimodal"])


def test_missing_manifest_is_a_model_error_naming_the_path(tmp_path):
    with pytest.raises(ModelError, match="not found") as info:
        load_manifest(tmp_path / "absent.json")
    assert str(tmp_path) in str(info.value)
    assert info.value.exit_code == EX_CONFIG


def test_corrupt_json_is_reported(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelError, match="cannot be read"):
        load_manifest(path)


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d["spectrum"].pop("mean"), "'mean' is a required property"),
        (lambda d: d["image"].update(channels=2), "image.channels"),
        (lambda d: d["spectrum"].update(std=[1.0] * 3), "spectrum.std has 3 values"),
        (lambda d: d["blend_classes"].append("cotton/wool"), "wool"),
        (lambda d: d["graphs"]["bimodal"].update(sha256="abc"), "sha256"),
        (lambda d: d["image"].update(max_tiles=0), "image.max_tiles"),
    ],
)
def test_invalid_manifest_names_the_problem(model_dir, mutate, expected):
    folder, sha = model_dir
    doc = copy.deepcopy(_manifest_doc(sha))
    mutate(doc)
    with pytest.raises(ModelError) as info:
        load_manifest(_write(folder, doc))
    assert expected in str(info.value)


def test_replaced_model_file_fails_the_checksum(model_dir):
    folder, sha = model_dir
    manifest = load_manifest(_write(folder, _manifest_doc(sha)))
    (folder / "m.onnx").write_bytes(b"tampered")
    with pytest.raises(ModelError, match="corrupt or replaced"):
        verify_graph_file(manifest.graphs["bimodal"])
    (folder / "m.onnx").unlink()
    with pytest.raises(ModelError, match="model file missing"):
        verify_graph_file(manifest.graphs["bimodal"])


def test_a_room_is_checked_against_the_trained_and_the_calibrated_range(model_dir):
    folder, sha = model_dir
    doc = dict(_manifest_doc(sha), conditions={"temperature_c": [5.0, 45.0], "humidity": [0.2, 0.9]})
    manifest = load_manifest(_write(folder, doc))
    assert manifest.condition_problem(None) is None and manifest.condition_problem(44.0) is None
    assert manifest.condition_problem(4.5) == ("room temperature 4.5 degC is outside the 5-45 degC the model was "
                                               "trained in")
    manifest = load_manifest(_write(folder, dict(doc, conditions={})))
    assert manifest.condition_problem(-30.0) is None  # no recorded range: no check
    # a calibration fitted on a narrower mixture (only its data matters here): its range decides too
    calibrated = dict(copy.deepcopy(doc), uncertainty={"data": {"conditions": {"temperature_c": [18.0, 35.0]}}})
    manifest = dataclasses.replace(load_manifest(_write(folder, doc)), raw=calibrated)
    assert manifest.condition_problem(25.0) is None
    assert manifest.condition_problem(10.0) == ("room temperature 10.0 degC is outside the 18-35 degC the model "
                                                "was calibrated in")
    assert "trained in and the 18-35 degC the model was calibrated in" in manifest.condition_problem(2.0)
