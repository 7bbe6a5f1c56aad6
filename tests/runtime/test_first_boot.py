"""First boot on a board: the shipped Atlas config starts on the CPU when the NPU cannot run, and says why.

The shipped manifest names no .om (ATC runs on the board or a CANN host), so `backend = "auto"` in
config/atlas-200dk.toml must reach ONNX Runtime instead of exiting; the reason is on the backend
(the station's STATUS= line) and in a WARNING log line. The NPU side uses the FAKE acl module.
"""

import logging
import sys
from pathlib import Path

import pytest

from fakes.fake_acl import FakeAcl
from isic_common.errors import BackendUnavailable
from isic_station.config import load_config
from isic_station.daemon.station import status_line
from isic_station.daemon.wiring import manifest_path
from isic_station.inference import create_backend
from isic_station.inference.acl_backend import AclBackend, finalize_pyacl
from isic_station.inference.onnxruntime_backend import OnnxRuntimeBackend
from isic_station.manifest import load_manifest

REPO = Path(__file__).resolve().parents[2]
ATLAS = REPO / "config" / "atlas-200dk.toml"


def _options(config):
    return {"threads": config.model.threads, "device_id": config.model.device_id}


def test_the_shipped_atlas_config_asks_for_auto():
    assert load_config(ATLAS).model.backend == "auto"


def test_shipped_config_and_model_start_on_onnxruntime_without_pyacl(no_acl, caplog):
    config = load_config(ATLAS)
    manifest = load_manifest(manifest_path(config))
    with caplog.at_level(logging.WARNING, logger="isic_station.inference.registry"):
        backend = create_backend(config.model.backend, manifest, _options(config))
    try:
        assert isinstance(backend, OnnxRuntimeBackend)
        assert "no compiled .om recorded for graph(s) bimodal, signal_only" in backend.fallback_reason
        assert "running on ONNX Runtime (CPU), not the NPU: no compiled .om" in caplog.text
        line = status_line(config, manifest, backend, faults={}, outbox=None)
        assert line.endswith(f"on onnxruntime (not the NPU: {backend.fallback_reason})")
    finally:
        backend.close()


def test_om_present_but_pyacl_missing_says_so(tiny_manifest, no_acl):
    backend = create_backend("auto", tiny_manifest)
    try:
        assert backend.fallback_reason.startswith("pyACL (CANN's acl module) does not import")
    finally:
        backend.close()


def test_npu_failing_to_start_names_the_acl_call_and_code(tiny_manifest, monkeypatch, caplog):
    fake = FakeAcl()
    monkeypatch.setitem(sys.modules, "acl", fake)
    fake.fail_next("acl.rt.set_device", 507033)
    with caplog.at_level(logging.WARNING):
        backend = create_backend("auto", tiny_manifest)
    try:
        assert isinstance(backend, OnnxRuntimeBackend)
        assert backend.fallback_reason == "the NPU did not start: pyACL acl.rt.set_device failed with ACL error 507033"
        assert "acl.rt.set_device failed with ACL error 507033" in caplog.text
    finally:
        backend.close()
    finalize_pyacl()
    assert fake.violations == [] and fake.leaks() == []


def test_npu_that_starts_reports_no_fallback(tiny_manifest, monkeypatch):
    fake = FakeAcl()
    monkeypatch.setitem(sys.modules, "acl", fake)
    backend = create_backend("auto", tiny_manifest)
    assert isinstance(backend, AclBackend) and backend.fallback_reason is None
    backend.close()
    finalize_pyacl()
    assert fake.leaks() == []


@pytest.mark.parametrize("kind", ["acl", "onnxruntime"])
def test_explicit_kinds_never_carry_a_fallback_reason(tiny_manifest, monkeypatch, kind):
    fake = FakeAcl()
    monkeypatch.setitem(sys.modules, "acl", fake)
    backend = create_backend(kind, tiny_manifest)
    assert backend.fallback_reason is None
    backend.close()
    finalize_pyacl()


def test_without_npu_and_without_onnxruntime_both_reasons_are_named(tiny_manifest, no_acl, monkeypatch):
    """A board installed with --no-cpu-fallback and no NPU: the error says why neither runs."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackendUnavailable, match=r"not the NPU \(pyACL .* does not import.*\), and no CPU fallback: "):
        create_backend("auto", tiny_manifest)
