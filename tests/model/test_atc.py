"""`isic-model build-om`: the ATC flags for each SoC, the board limits, and a clear line without ATC.

ATC itself exists only on a CANN host. Where a run is needed, a FAKE `atc` (a shell script put
first on PATH) records its arguments and environment and writes the .om file ATC would write.
"""

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from isic_common.errors import ModelError
from isic_model.atc import AtcFailed, AtcUnavailable, atc_command, build_om
from isic_model.cli import main
from isic_model.export import export_model
from isic_model.net import ISiCNet, NetConfig
from isic_station.manifest import load_manifest

FAKE_ATC = """#!/bin/sh
# FAKE atc for tests: records argv and the board variables, writes the --output .om
# (with ATC_SUFFIX, e.g. _linux_aarch64, as releases that add the OS and architecture do).
echo "$@ TE=${TE_PARALLEL_COMPILER:-unset} CORES=${MAX_COMPILE_CORE_NUMBER:-unset}" >> "$ATC_LOG"
for a in "$@"; do case "$a" in --output=*) touch "${a#--output=}${ATC_SUFFIX:-}.om";; esac; done
"""


def _fake_atc_on_path(tmp_path, monkeypatch, suffix: str = "") -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "atc").write_text(FAKE_ATC)
    (bindir / "atc").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("ATC_LOG", str(tmp_path / "atc.log"))
    monkeypatch.setenv("ATC_SUFFIX", suffix)


def _copy_model(source: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for f in source.parent.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    return folder / "manifest.json"


@pytest.fixture(scope="module")
def manifest_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    net = ISiCNet(
        NetConfig(
            spectrum_points=24,
            n_fibres=2,
            n_classes=3,
            tile_px=16,
            dim=8,
            depth=1,
            heads=2,
            mlp_dim=8,
            signal_tokens=2,
            signal_hidden=8,
            head_hidden=8,
        )
    ).eval()
    spectrum = {
        "wavelengths_nm": np.linspace(950, 1650, 24).tolist(),
        "reflectance_clip": [0.01, 1.2],
        "scatter": "snv",
        "savgol": None,
        "mean": [0.0] * 24,
        "std": [1.0] * 24,
    }
    image = {"tile_px": 16, "um_per_px": 1.0, "channels": 1, "tiles_per_measurement": 3, "mean": 0.5, "std": 0.2}
    return export_model(net, folder, ["cotton", "nylon"], ["cotton", "nylon", "cotton/nylon"], spectrum, image, {})


def test_command_has_the_flags_ascend_needs(manifest_path):
    graph = load_manifest(manifest_path).graphs["bimodal"]
    cmd = atc_command(graph, "Ascend310B4", manifest_path.parent)
    assert "--framework=5" in cmd and "--soc_version=Ascend310B4" in cmd and "--input_format=ND" in cmd
    assert "--input_shape=spectrum:3,24;image:3,1,16,16" in cmd
    assert "--precision_mode=allow_fp32_to_fp16" in cmd
    assert "--output_type=FP32" in cmd  # the outputs stay float32 whatever happens inside
    assert f"--output={manifest_path.parent / 'isicnet_Ascend310B4'}" in cmd


def test_without_atc_the_cli_says_so_in_one_line(manifest_path, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["build-om", "--manifest", str(manifest_path)]) == AtcUnavailable.exit_code == 69
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "ATC is not installed" in err


def test_unknown_soc_is_refused(manifest_path):
    assert main(["build-om", "--manifest", str(manifest_path), "--soc-version", "Ascend910", "--dry-run"]) == 78


@pytest.mark.parametrize("on_board", ["yes", "no"])
def test_fake_atc_gets_every_graph_and_soc_and_board_limits(manifest_path, tmp_path, monkeypatch, on_board):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "atc"
    fake.write_text(FAKE_ATC)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("ATC_LOG", str(tmp_path / "atc.log"))
    monkeypatch.delenv("TE_PARALLEL_COMPILER", raising=False)
    out = tmp_path / "om"
    rc = main(
        [
            "build-om",
            "--manifest",
            str(manifest_path),
            "--out-dir",
            str(out),
            "--on-board",
            on_board,
            "--soc-version",
            "Ascend310",
            "--soc-version",
            "Ascend310B1",
        ]
    )
    assert rc == 0
    lines = (tmp_path / "atc.log").read_text().splitlines()
    assert len(lines) == 8   # bimodal, signal-only, tile encoder and fusion, for each SoC
    expected = "TE=1 CORES=1" if on_board == "yes" else "TE=unset CORES=unset"
    assert all(line.endswith(expected) for line in lines)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{graph}_{soc}.om" for graph in ("isicnet", "isicnet_signal", "isicnet_tile_encoder", "isicnet_fusion")
        for soc in ("Ascend310", "Ascend310B1"))


def test_must_keep_origin_dtype_is_refused_for_the_fp16_only_ascend310(manifest_path):
    graph = load_manifest(manifest_path).graphs["bimodal"]
    with pytest.raises(ModelError, match="must_keep_origin_dtype cannot build for Ascend310: its MatMul"):
        atc_command(graph, "Ascend310", manifest_path.parent, "must_keep_origin_dtype")
    assert main(["build-om", "--manifest", str(manifest_path), "--precision-mode", "must_keep_origin_dtype",
                 "--dry-run"]) == 78


def test_record_finds_the_os_and_arch_suffix_atc_may_add(manifest_path, tmp_path, monkeypatch):
    _fake_atc_on_path(tmp_path, monkeypatch, suffix="_linux_aarch64")
    copy = _copy_model(manifest_path, tmp_path / "m")
    build_om(load_manifest(copy), ["Ascend310"], copy.parent, "allow_fp32_to_fp16", False, record=True)
    assert load_manifest(copy).graphs["bimodal"].om_path == copy.parent / "isicnet_Ascend310_linux_aarch64.om"


def test_record_without_the_om_atc_should_have_written_fails(manifest_path, tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "atc").write_text("#!/bin/sh\nexit 0\n")  # succeeds and writes nothing
    (bindir / "atc").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    copy = _copy_model(manifest_path, tmp_path / "m")
    before = copy.read_bytes()
    expected = r"found none; expected isicnet_Ascend310.om or isicnet_Ascend310_<os>_<arch>.om"
    with pytest.raises(AtcFailed, match=expected):
        build_om(load_manifest(copy), ["Ascend310"], copy.parent, "allow_fp32_to_fp16", False, record=True)
    assert copy.read_bytes() == before


def test_record_refuses_the_installed_package_manifest(manifest_path, tmp_path, monkeypatch):
    _fake_atc_on_path(tmp_path, monkeypatch)
    installed = _copy_model(manifest_path, tmp_path / "venv/lib/python3.9/site-packages/isic_model/shipped")
    assert main(["build-om", "--manifest", str(installed), "--record"]) == 78
    assert not (tmp_path / "atc.log").exists()  # refused before ATC ran


def test_record_from_a_checkout_writes_the_checkouts_manifest(manifest_path, tmp_path, monkeypatch):
    _fake_atc_on_path(tmp_path, monkeypatch)
    checkout = tmp_path / "checkout"
    manifest = _copy_model(manifest_path, checkout / "models_om/isic_model/shipped")
    (checkout / "systemd").mkdir()
    monkeypatch.chdir(checkout / "systemd")  # any folder of the checkout
    assert main(["build-om", "--record"]) == 0
    assert load_manifest(manifest).graphs["signal_only"].om_path == manifest.parent / "isicnet_signal_Ascend310.om"


def test_record_writes_om_names_the_station_reads(manifest_path, tmp_path, monkeypatch):
    _fake_atc_on_path(tmp_path, monkeypatch)
    copy = tmp_path / "m"
    _copy_model(manifest_path, copy)
    build_om(load_manifest(copy / "manifest.json"), ["Ascend310"], copy, "allow_fp32_to_fp16", False, record=True)
    manifest = load_manifest(copy / "manifest.json")
    assert manifest.graphs["bimodal"].om_path == copy / "isicnet_Ascend310.om"
    assert (
        json.loads((copy / "manifest.json").read_text())["graphs"]["signal_only"]["om"] == "isicnet_signal_Ascend310.om"
    )
