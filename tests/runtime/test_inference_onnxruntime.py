"""The ONNX Runtime backend: right numbers, thread option, and clear errors for bad model files."""

import hashlib
import json
import sys

import numpy as np
import pytest

from fakes.tiny_isicnet import model_weights
from isic_common.errors import EX_CONFIG, BackendUnavailable, ConfigError, ModelError
from isic_station.inference.onnxruntime_backend import OnnxRuntimeBackend
from isic_station.manifest import load_manifest


def _inputs(rng: np.random.Generator):
    return {
        "spectrum": rng.normal(size=(4, 32)).astype(np.float32),
        "image": rng.normal(size=(4, 1, 16, 16)).astype(np.float32),
    }


def _reference(inputs):
    """The tiny model's arithmetic in numpy: the backend must compute exactly this."""
    w = model_weights(7)
    pixels = inputs["image"].reshape(len(inputs["image"]), -1).astype(np.float64)
    logits = inputs["spectrum"] @ w["w_spec_comp"] + pixels @ w["w_img_comp"] + w["b_comp"]
    composition = np.exp(logits - logits.max(1, keepdims=True))
    composition /= composition.sum(1, keepdims=True)
    blend = inputs["spectrum"] @ w["w_spec_blend"] + pixels @ w["w_img_blend"]
    return composition, blend


def test_bimodal_outputs_match_the_models_arithmetic(tiny_manifest):
    inputs = _inputs(np.random.default_rng(1))
    with OnnxRuntimeBackend(tiny_manifest, {"threads": 2}) as backend:
        backend.load()
        out = backend.run("bimodal", inputs)
    composition, blend = _reference(inputs)
    assert out["composition"].dtype == np.float32 and out["composition"].shape == (4, 3)
    np.testing.assert_allclose(out["composition"], composition, atol=1e-5)
    np.testing.assert_allclose(out["blend_logits"], blend, atol=1e-4)


def test_signal_only_graph_takes_one_spectrum_row(tiny_manifest):
    with OnnxRuntimeBackend(tiny_manifest) as backend:
        backend.load()
        out = backend.run("signal_only", {"spectrum": np.zeros((1, 32), np.float32)})
    assert out["composition"].shape == (1, 3)
    assert out["blend_logits"].shape == (1, 3)
    np.testing.assert_allclose(out["composition"].sum(), 1.0, atol=1e-6)


def test_wrong_input_shape_names_the_graph_input_and_shapes(tiny_manifest):
    with OnnxRuntimeBackend(tiny_manifest) as backend:
        backend.load()
        wrong = r"'signal_only' input 'spectrum' must have shape \[1, 32\], got \[2, 32\]"
        with pytest.raises(ValueError, match=wrong):
            backend.run("signal_only", {"spectrum": np.zeros((2, 32), np.float32)})


@pytest.mark.parametrize("threads", [0, -1, "2", 1.5, True])
def test_threads_option_must_be_a_positive_whole_number(tiny_manifest, threads):
    with pytest.raises(ConfigError, match="'threads'"):
        OnnxRuntimeBackend(tiny_manifest, {"threads": threads})


def test_corrupt_model_file_is_a_model_error_before_loading(tiny_manifest_path):
    manifest = load_manifest(tiny_manifest_path)
    onnx_path = manifest.graphs["bimodal"].onnx_path
    data = bytearray(onnx_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="isicnet.onnx is corrupt or replaced") as caught:
        OnnxRuntimeBackend(manifest).load()
    assert caught.value.exit_code == EX_CONFIG


def test_missing_model_file_is_a_model_error(tiny_manifest_path):
    manifest = load_manifest(tiny_manifest_path)
    manifest.graphs["signal_only"].onnx_path.unlink()
    with pytest.raises(ModelError, match=r"model file missing: .*isicnet_signal.onnx \(graph 'signal_only'\)"):
        OnnxRuntimeBackend(manifest).load()


def test_unloadable_file_with_matching_checksum_is_a_model_error(tiny_manifest_path):
    """A file that is not ONNX at all (and whose checksum the manifest was made to match)."""
    folder = tiny_manifest_path.parent
    (folder / "isicnet.onnx").write_bytes(b"this is not an onnx graph")
    doc = json.loads(tiny_manifest_path.read_text())
    doc["graphs"]["bimodal"]["sha256"] = hashlib.sha256(b"this is not an onnx graph").hexdigest()
    tiny_manifest_path.write_text(json.dumps(doc))
    with pytest.raises(ModelError, match=r"ONNX Runtime cannot load .*isicnet.onnx \(graph 'bimodal'\)"):
        OnnxRuntimeBackend(load_manifest(tiny_manifest_path)).load()


def test_manifest_names_that_the_graph_lacks_are_a_model_error(tiny_manifest_path):
    doc = json.loads(tiny_manifest_path.read_text())
    doc["graphs"]["signal_only"]["inputs"][0]["name"] = "spectra"
    tiny_manifest_path.write_text(json.dumps(doc))
    with pytest.raises(ModelError, match=r"has inputs \['spectrum'\].*declares inputs \['spectra'\]"):
        OnnxRuntimeBackend(load_manifest(tiny_manifest_path)).load()


def test_missing_onnxruntime_is_backend_unavailable_saying_what_to_install(tiny_manifest, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackendUnavailable, match=r"ONNX Runtime is not installed.*isic-station\[runtime\]"):
        OnnxRuntimeBackend(tiny_manifest).load()


def test_manifest_shapes_that_the_graph_does_not_take_are_a_model_error(tiny_manifest_path):
    doc = json.loads(tiny_manifest_path.read_text())
    doc["graphs"]["bimodal"]["inputs"][1]["shape"] = [4, 1, 32, 32]
    tiny_manifest_path.write_text(json.dumps(doc))
    message = r"input 'image' has shape \[4, 1, 16, 16\], but the manifest declares \[4, 1, 32, 32\]"
    with pytest.raises(ModelError, match=message):
        OnnxRuntimeBackend(load_manifest(tiny_manifest_path)).load()
