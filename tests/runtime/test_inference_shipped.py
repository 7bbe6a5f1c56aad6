"""The shipped ISiC-Net gives the same outputs through ONNX Runtime and through the pyACL backend (FAKE acl).

Runs once the model helper has committed `models_om/isic_model/shipped/`; the .om files, which only
a CANN host can build, are stood in for by placeholders that the fake maps to the .onnx beside them.
"""

import json
import shutil
import sys

import numpy as np
import pytest

from fakes.fake_acl import ACL_DEVICE, ACL_HOST, FakeAcl
from fakes.tiny_isicnet import OM_PLACEHOLDER
from isic_drivers.lab import draw_sample, simulate_measurement
from isic_model import SHIPPED_DIR, SHIPPED_MANIFEST
from isic_station.inference.acl_backend import AclBackend, finalize_pyacl
from isic_station.inference.onnxruntime_backend import OnnxRuntimeBackend
from isic_station.inference.predictor import Predictor
from isic_station.manifest import load_manifest

pytestmark = pytest.mark.skipif(not SHIPPED_MANIFEST.is_file(), reason="no shipped model committed yet")


@pytest.fixture
def shipped_with_om(tmp_path):
    """A copy of the shipped model with a placeholder .om beside each .onnx, named in the manifest."""
    folder = tmp_path / "shipped"
    shutil.copytree(SHIPPED_DIR, folder)
    doc = json.loads((folder / "manifest.json").read_text())
    for graph in doc["graphs"].values():
        graph["om"] = graph["onnx"].rsplit(".", 1)[0] + ".om"
        (folder / graph["om"]).write_bytes(OM_PLACEHOLDER)
    (folder / "manifest.json").write_text(json.dumps(doc))
    return load_manifest(folder / "manifest.json")


@pytest.mark.parametrize(
    "run_mode, output_dtype, tolerance",
    [(ACL_DEVICE, "float32", 1e-5), (ACL_HOST, "float32", 1e-5), (ACL_DEVICE, "float16", 5e-3)],
    ids=["ACL_DEVICE", "ACL_HOST", "ACL_DEVICE-fp16-outputs"],
)
def test_shipped_model_gives_the_same_outputs_on_both_backends(shipped_with_om, monkeypatch, run_mode,
                                                                 output_dtype, tolerance):
    fake = FakeAcl(run_mode=run_mode, output_dtype=output_dtype)
    monkeypatch.setitem(sys.modules, "acl", fake)
    manifest = shipped_with_om
    reference, npu = OnnxRuntimeBackend(manifest), AclBackend(manifest)
    reference.load()
    npu.load()
    rng = np.random.default_rng(6)
    try:
        for _ in range(2):
            m = simulate_measurement(draw_sample(rng), rng)
            for frames in (m.frames, None):
                on_cpu = Predictor(manifest, reference).predict(m.reflectance, m.wavelengths_nm, frames, m.um_per_px)
                on_npu = Predictor(manifest, npu).predict(m.reflectance, m.wavelengths_nm, frames, m.um_per_px)
                assert on_npu.signal_only == on_cpu.signal_only == (frames is None)
                np.testing.assert_allclose(list(on_npu.composition.values()), list(on_cpu.composition.values()),
                                           atol=tolerance)
                np.testing.assert_allclose(list(on_npu.blend_probabilities.values()),
                                           list(on_cpu.blend_probabilities.values()), atol=tolerance)
                np.testing.assert_allclose(list(on_npu.uncertainty.values()), list(on_cpu.uncertainty.values()),
                                           atol=tolerance)
                if output_dtype == "float32":  # fp16 rounding may flip a near tie
                    assert on_npu.blend == on_cpu.blend
    finally:
        npu.close()
        reference.close()
    finalize_pyacl()  # what the process does at exit
    assert fake.violations == [] and fake.leaks() == []
