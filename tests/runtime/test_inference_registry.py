"""Backend selection by kind: `auto` falls back to ONNX Runtime, a missing runtime is reported clearly."""

import pytest

from isic_common.errors import EX_UNAVAILABLE, BackendUnavailable, ConfigError
from isic_station.inference import create_backend, resolve_kind
from isic_station.inference.onnxruntime_backend import OnnxRuntimeBackend


def test_auto_without_acl_runs_on_onnxruntime(tiny_manifest, no_acl):
    assert resolve_kind("auto", tiny_manifest) == "onnxruntime"
    backend = create_backend("auto", tiny_manifest, {"threads": 1})
    try:
        assert isinstance(backend, OnnxRuntimeBackend)
        assert backend.name == "onnxruntime"
    finally:
        backend.close()


def test_acl_without_pyacl_is_backend_unavailable_naming_the_alternatives(tiny_manifest, no_acl):
    message = r"pyACL \(the 'acl' module of CANN\) cannot be imported.*'onnxruntime'"
    with pytest.raises(BackendUnavailable, match=message) as caught:
        create_backend("acl", tiny_manifest)
    assert caught.value.exit_code == EX_UNAVAILABLE


def test_unknown_kind_is_a_config_error_listing_the_kinds(tiny_manifest):
    message = r"inference backend 'tensorrt' is unknown: expected one of \['auto', 'acl', 'onnxruntime'\]"
    with pytest.raises(ConfigError, match=message):
        create_backend("tensorrt", tiny_manifest)


def test_unknown_option_is_a_config_error(tiny_manifest):
    with pytest.raises(ConfigError, match=r"unknown inference option\(s\) \['thread'\]"):
        create_backend("onnxruntime", tiny_manifest, {"thread": 2})
