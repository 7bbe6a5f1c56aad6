"""The pyACL backend, run against the FAKE acl module in both run modes.

The fake runs the same ONNX graphs, so the pyACL backend must give ONNX Runtime's numbers; it also
records every misuse the real runtime would punish (order, sizes, copy kinds, context, leaks),
and each test ends by checking that none happened and nothing was left alive.
"""

import json
import shutil
import sys
import threading

import numpy as np
import pytest

from fakes.fake_acl import (
    ACL_DEVICE,
    ACL_HOST,
    ACL_MEMCPY_DEVICE_TO_DEVICE,
    ACL_MEMCPY_DEVICE_TO_HOST,
    ACL_MEMCPY_HOST_TO_DEVICE,
    FakeAcl,
)
from isic_common.errors import EX_UNAVAILABLE, BackendUnavailable, ConfigError, ModelError
from isic_station.inference import create_backend
from isic_station.inference.acl_backend import AclBackend, AclError, finalize_pyacl
from isic_station.inference.onnxruntime_backend import OnnxRuntimeBackend
from isic_station.manifest import load_manifest

BRING_UP = ["acl.init", "acl.rt.set_device", "acl.rt.create_context", "acl.rt.create_stream", "acl.rt.get_run_mode"]
MODEL_TEARDOWN = ["acl.destroy_data_buffer", "acl.mdl.destroy_dataset", "acl.mdl.unload", "acl.mdl.destroy_desc",
                  "acl.rt.free"]
# acl.finalize is not part of a backend's teardown: it runs once, at process exit (finalize_pyacl).
DEVICE_TEARDOWN = ["acl.rt.destroy_stream", "acl.rt.destroy_context", "acl.rt.reset_device"]


def install(monkeypatch, **kwargs) -> FakeAcl:
    fake = FakeAcl(**kwargs)
    monkeypatch.setitem(sys.modules, "acl", fake)
    return fake


@pytest.fixture(params=[ACL_DEVICE, ACL_HOST], ids=["ACL_DEVICE", "ACL_HOST"])
def fake_acl(request, monkeypatch):
    """The FAKE acl in one run mode; after the test (and the process-exit finalize) nothing may be misused
    or left alive."""
    fake = install(monkeypatch, run_mode=request.param)
    yield fake
    finalize_pyacl()
    assert fake.violations == []
    assert fake.leaks() == []


def _bimodal_inputs(seed: int):
    rng = np.random.default_rng(seed)
    return {"spectrum": rng.normal(size=(4, 32)).astype(np.float32),
            "image": rng.normal(size=(4, 1, 16, 16)).astype(np.float32)}


def _collapse(calls):
    """The call sequence with runs of the same call merged (order, not counts)."""
    return [c for i, c in enumerate(calls) if i == 0 or calls[i - 1] != c]


def _both_backends(manifest):
    reference = OnnxRuntimeBackend(manifest)
    reference.load()
    npu = AclBackend(manifest)
    npu.load()
    return reference, npu


def test_acl_and_onnxruntime_give_the_same_outputs_for_both_graphs(tiny_manifest, fake_acl):
    reference, npu = _both_backends(tiny_manifest)
    try:
        for seed in range(3):
            cases = [("bimodal", _bimodal_inputs(seed)),
                     ("signal_only", {"spectrum": _bimodal_inputs(seed)["spectrum"][:1]})]
            for graph, inputs in cases:
                expected, got = reference.run(graph, inputs), npu.run(graph, inputs)
                for name in ("composition", "blend_logits"):
                    assert got[name].dtype == np.float32
                    np.testing.assert_allclose(got[name], expected[name], atol=1e-5, err_msg=f"{graph}/{name}")
    finally:
        npu.close()
        reference.close()


@pytest.mark.parametrize("bytes_bridge", [True, False], ids=["bytes_to_ptr", "numpy_to_ptr"])
def test_float16_outputs_are_converted_to_float32(tiny_manifest, monkeypatch, bytes_bridge):
    fake = install(monkeypatch, output_dtype="float16", bytes_bridge=bytes_bridge)
    reference, npu = _both_backends(tiny_manifest)
    inputs = _bimodal_inputs(1)
    expected, got = reference.run("bimodal", inputs), npu.run("bimodal", inputs)
    npu.close()
    finalize_pyacl()
    for name in ("composition", "blend_logits"):
        assert got[name].dtype == np.float32
        np.testing.assert_allclose(got[name], expected[name], rtol=2e-3, atol=2e-3)
    assert fake.violations == [] and fake.leaks() == []


def test_numpy_to_ptr_is_used_when_bytes_to_ptr_is_missing(tiny_manifest, monkeypatch):
    fake = install(monkeypatch, bytes_bridge=False)
    assert "bytes_to_ptr" not in dir(fake.util)
    reference, npu = _both_backends(tiny_manifest)
    inputs = _bimodal_inputs(2)
    np.testing.assert_allclose(npu.run("bimodal", inputs)["composition"],
                               reference.run("bimodal", inputs)["composition"], atol=1e-5)
    npu.close()
    finalize_pyacl()
    assert fake.violations == [] and fake.leaks() == []


def test_bring_up_and_teardown_follow_the_documented_order(tiny_manifest, fake_acl):
    npu = AclBackend(tiny_manifest)
    npu.load()
    assert fake_acl.calls[: len(BRING_UP)] == BRING_UP
    npu.run("signal_only", {"spectrum": np.zeros((1, 32), np.float32)})
    mark = len(fake_acl.calls)
    npu.close()
    teardown = _collapse(fake_acl.calls[mark:])
    assert teardown == ["acl.rt.set_context"] + MODEL_TEARDOWN * 2 + DEVICE_TEARDOWN


def test_buffers_are_allocated_once_at_load_and_reused(tiny_manifest, fake_acl):
    npu = AclBackend(tiny_manifest)
    npu.load()
    mallocs = fake_acl.calls.count("acl.rt.malloc")
    assert mallocs == 7  # bimodal: 2 inputs + 2 outputs; signal-only: 1 input + 2 outputs
    for seed in range(5):
        npu.run("bimodal", _bimodal_inputs(seed))
    assert fake_acl.calls.count("acl.rt.malloc") == mallocs
    assert fake_acl.calls.count("acl.create_data_buffer") == mallocs
    npu.close()


def test_runs_from_other_threads_at_once_are_serialised_in_the_context(tiny_manifest, fake_acl):
    reference, npu = _both_backends(tiny_manifest)
    results, errors = {}, []

    def worker(seed: int) -> None:
        try:
            for _ in range(10):
                results[seed] = npu.run("bimodal", _bimodal_inputs(seed))["composition"]
        except Exception as exc:  # reported below; a thread cannot fail the test itself
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    npu.close()
    assert errors == []
    for seed in range(4):
        np.testing.assert_allclose(results[seed], reference.run("bimodal", _bimodal_inputs(seed))["composition"],
                                   atol=1e-5)


@pytest.mark.parametrize(
    "call",
    ["acl.init", "acl.rt.set_device", "acl.rt.create_context", "acl.rt.create_stream", "acl.rt.get_run_mode",
     "acl.mdl.load_from_file", "acl.mdl.get_desc", "acl.rt.malloc", "acl.mdl.add_dataset_buffer"],
)
def test_a_failure_during_load_names_call_and_code_and_releases_everything(tiny_manifest, fake_acl, call):
    fake_acl.fail_next(call, 500002)
    npu = AclBackend(tiny_manifest)
    with pytest.raises(AclError, match=rf"pyACL {call} failed with ACL error 500002 \(graph engine failure") as caught:
        npu.load()
    assert (caught.value.call, caught.value.code, caught.value.exit_code) == (call, 500002, EX_UNAVAILABLE)
    npu.close()  # nothing left to release: a no-op


def test_execute_failure_is_an_acl_error_and_the_backend_stays_usable(tiny_manifest, fake_acl):
    npu = AclBackend(tiny_manifest)
    npu.load()
    fake_acl.fail_next("acl.mdl.execute", 500002)
    with pytest.raises(AclError, match="acl.mdl.execute failed with ACL error 500002"):
        npu.run("bimodal", _bimodal_inputs(0))
    assert npu.run("bimodal", _bimodal_inputs(0))["composition"].shape == (4, 3)
    npu.close()


def test_close_is_idempotent_and_run_after_close_is_refused(tiny_manifest, fake_acl):
    npu = AclBackend(tiny_manifest)
    npu.load()
    npu.close()
    calls = len(fake_acl.calls)
    npu.close()
    assert len(fake_acl.calls) == calls
    with pytest.raises(RuntimeError, match="not loaded"):
        npu.run("signal_only", {"spectrum": np.zeros((1, 32), np.float32)})


def test_a_failing_teardown_step_is_raised_after_the_rest_is_released(tiny_manifest, monkeypatch):
    fake = install(monkeypatch)
    npu = AclBackend(tiny_manifest)
    npu.load()
    fake.fail_next("acl.mdl.unload", 100000)
    with pytest.raises(AclError, match=r"acl.mdl.unload failed with ACL error 100000 \(invalid parameter\)"):
        npu.close()
    # Everything else went: only the model whose unload failed is left (and what it pins).
    assert [leak for leak in fake.leaks() if "model id" in leak] == [
        f"model id 1 ({tiny_manifest.graphs['bimodal'].om_path}) not unloaded"]
    assert "acl.rt.reset_device" in fake.calls


def test_missing_om_is_a_model_error_before_any_acl_call(tiny_manifest, fake_acl):
    tiny_manifest.graphs["signal_only"].om_path.unlink()
    with pytest.raises(ModelError, match=r"graph 'signal_only' has no compiled .om .*isicnet_signal.om"):
        AclBackend(tiny_manifest).load()
    assert fake_acl.calls == []


def test_om_from_another_model_is_a_model_error(tiny_manifest_path, fake_acl):
    folder = tiny_manifest_path.parent
    shutil.copy(folder / "isicnet.onnx", folder / "isicnet_signal.onnx")  # the fake runs the .onnx beside the .om
    with pytest.raises(ModelError, match=r"isicnet_signal.om has 2 inputs, the manifest declares 1"):
        AclBackend(load_manifest(tiny_manifest_path)).load()


def test_auto_picks_acl_when_it_imports_and_the_om_files_exist(tiny_manifest, fake_acl):
    backend = create_backend("auto", tiny_manifest, {"device_id": 0})
    assert isinstance(backend, AclBackend)
    backend.close()


def test_auto_uses_onnxruntime_when_an_om_is_missing(tiny_manifest, fake_acl):
    tiny_manifest.graphs["bimodal"].om_path.unlink()
    backend = create_backend("auto", tiny_manifest)
    assert isinstance(backend, OnnxRuntimeBackend)
    assert fake_acl.calls == []


def test_auto_falls_back_to_onnxruntime_when_the_npu_does_not_start(tiny_manifest, fake_acl):
    fake_acl.fail_next("acl.rt.set_device", 507033)
    backend = create_backend("auto", tiny_manifest)
    assert isinstance(backend, OnnxRuntimeBackend)


def test_acl_asked_for_explicitly_does_not_fall_back(tiny_manifest, fake_acl):
    fake_acl.fail_next("acl.rt.set_device", 507033)
    with pytest.raises(AclError, match="acl.rt.set_device failed with ACL error 507033"):
        create_backend("acl", tiny_manifest)


def test_om_compiled_for_other_shapes_is_a_model_error(tiny_manifest_path, fake_acl):
    doc = json.loads(tiny_manifest_path.read_text())
    doc["graphs"]["bimodal"]["inputs"][1]["shape"] = [4, 1, 32, 32]
    tiny_manifest_path.write_text(json.dumps(doc))
    message = r"isicnet.om input 'image' holds 4096 bytes, but the manifest's shape \[4, 1, 32, 32\] "
    message += "as float32 needs 16384"
    with pytest.raises(ModelError, match=message):
        AclBackend(load_manifest(tiny_manifest_path)).load()


def test_loading_twice_is_refused_without_touching_the_npu(tiny_manifest, fake_acl):
    npu = AclBackend(tiny_manifest)
    npu.load()
    calls = len(fake_acl.calls)
    with pytest.raises(RuntimeError, match="already loaded"):
        npu.load()
    assert len(fake_acl.calls) == calls
    npu.close()


def test_a_reload_holds_two_backends_and_pyacl_is_initialised_once(tiny_manifest, fake_acl):
    """The daemon loads the new model before closing the old one: both share one acl.init."""
    old = AclBackend(tiny_manifest)
    old.load()
    new = AclBackend(tiny_manifest)
    new.load()
    old.close()
    assert new.run("bimodal", _bimodal_inputs(0))["composition"].shape == (4, 3)
    new.close()
    assert "acl.finalize" not in fake_acl.calls
    finalize_pyacl()
    assert (fake_acl.calls.count("acl.init"), fake_acl.calls.count("acl.finalize")) == (1, 1)


def test_load_after_the_last_close_does_not_init_again(tiny_manifest, fake_acl):
    """CANN 5.x allows one acl.init per process (the fake's default): close-then-load must still work."""
    for _ in range(2):
        npu = AclBackend(tiny_manifest)
        npu.load()
        assert npu.run("signal_only", {"spectrum": np.zeros((1, 32), np.float32)})["composition"].shape == (1, 3)
        npu.close()
    assert fake_acl.calls.count("acl.init") == 1


def test_load_after_finalize_is_refused_with_a_clear_reason(tiny_manifest, fake_acl):
    npu = AclBackend(tiny_manifest)
    npu.load()
    npu.close()
    finalize_pyacl()
    with pytest.raises(BackendUnavailable, match="already finalised in this process.*restart the station"):
        AclBackend(tiny_manifest).load()
    assert fake_acl.calls.count("acl.init") == 1


def test_a_data_buffer_of_0_is_a_failure(tiny_manifest, fake_acl, monkeypatch):
    """pyACL returns 0 (not None) when aclCreateDataBuffer fails."""
    monkeypatch.setattr(fake_acl, "create_data_buffer", lambda ptr, size: 0)
    with pytest.raises(BackendUnavailable, match="acl.create_data_buffer gave no buffer"):
        AclBackend(tiny_manifest).load()


def test_copies_pass_the_samples_kinds_for_the_run_mode(tiny_manifest, fake_acl):
    npu = AclBackend(tiny_manifest)
    npu.load()
    npu.run("signal_only", {"spectrum": np.zeros((1, 32), np.float32)})  # 1 input, 2 outputs
    npu.close()
    if fake_acl.run_mode == ACL_HOST:
        assert fake_acl.memcpy_kinds == [ACL_MEMCPY_HOST_TO_DEVICE] + [ACL_MEMCPY_DEVICE_TO_HOST] * 2
    else:
        assert fake_acl.memcpy_kinds == [ACL_MEMCPY_DEVICE_TO_DEVICE] * 3


def test_a_damaged_om_names_the_code_and_what_it_means(tiny_manifest, fake_acl):
    tiny_manifest.graphs["bimodal"].om_path.write_bytes(b"")
    with pytest.raises(AclError, match=r"load_from_file failed with ACL error 145006 \(invalid model data size: "
                                       r"the .om is damaged or truncated"):
        AclBackend(tiny_manifest).load()


@pytest.mark.parametrize("device_id", [-1, "0", True])
def test_device_id_option_must_be_a_whole_number(tiny_manifest, device_id):
    with pytest.raises(ConfigError, match="inference option 'device_id' must be a whole number >= 0"):
        AclBackend(tiny_manifest, {"device_id": device_id})
