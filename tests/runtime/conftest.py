"""Fixtures of the inference runtime's tests: the tiny stand-in model and a machine without pyACL."""

import sys
from pathlib import Path

import pytest

from fakes.tiny_isicnet import write_tiny_model
from isic_station.manifest import Manifest, load_manifest


@pytest.fixture
def tiny_manifest_path(tmp_path: Path) -> Path:
    """The tiny model's manifest.json, with both .onnx graphs and placeholder .om files beside it."""
    return write_tiny_model(tmp_path / "model")


@pytest.fixture
def tiny_manifest(tiny_manifest_path: Path) -> Manifest:
    return load_manifest(tiny_manifest_path)


@pytest.fixture
def no_acl(monkeypatch: pytest.MonkeyPatch) -> None:
    """`import acl` fails here even on a machine where CANN is installed."""
    monkeypatch.setitem(sys.modules, "acl", None)
