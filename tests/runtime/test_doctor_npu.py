"""`isic-station doctor --npu`: each graph on the NPU (FAKE acl here) against ONNX Runtime, one line per graph."""

import sys
from pathlib import Path

import pytest

from fakes.fake_acl import FakeAcl
from isic_station.cli import main
from isic_station.inference.acl_backend import finalize_pyacl


def _config(tmp_path: Path, manifest: Path) -> Path:
    path = tmp_path / "station.toml"
    path.write_text(f'[station]\nid = "s1"\n[model]\nmanifest = "{manifest}"\nbackend = "auto"\n', encoding="utf-8")
    return path


def _doctor_npu(capsys, config: Path):
    code = main(["doctor", "--npu", "--config", str(config)])
    return code, capsys.readouterr().out.splitlines()


def test_without_pyacl_it_says_no_npu_is_present(tmp_path, tiny_manifest_path, no_acl, capsys):
    code, lines = _doctor_npu(capsys, _config(tmp_path, tiny_manifest_path))
    assert code == 69
    assert lines[0].startswith("FAIL npu")
    assert "no NPU present here: pyACL (CANN's acl module) does not import" in lines[0]
    assert lines[-1] == "0 of 1 checks passed; failed: npu"


@pytest.mark.parametrize("output_dtype", ["float32", "float16"])
def test_both_graphs_agree_within_fp16_tolerance(tmp_path, tiny_manifest_path, monkeypatch, capsys, output_dtype):
    fake = FakeAcl(output_dtype=output_dtype)
    monkeypatch.setitem(sys.modules, "acl", fake)
    code, lines = _doctor_npu(capsys, _config(tmp_path, tiny_manifest_path))
    assert code == 0, lines
    assert [line.split()[:2] for line in lines[:2]] == [["OK", "npu/bimodal"], ["OK", "npu/signal_only"]]
    assert "over blend_logits, composition (allowed 0.02 + 2% of |CPU|)" in lines[0]
    assert lines[-1] == "2 of 2 checks passed"
    finalize_pyacl()
    assert fake.violations == [] and fake.leaks() == []


def test_an_npu_that_computes_wrongly_fails_its_graph(tmp_path, tiny_manifest_path, monkeypatch, capsys):
    fake = FakeAcl()
    monkeypatch.setitem(sys.modules, "acl", fake)
    real_load = fake.mdl.load_from_file

    def load_and_skew(path):
        model_id, ret = real_load(path)
        if path.endswith("isicnet.om"):  # the bimodal graph comes back off by 0.5
            session = fake._models[model_id].session
            skewed = type("Skewed", (), {"run": staticmethod(lambda names, feeds: [v + 0.5 for v in
                                                                                    session.run(names, feeds)])})
            fake._models[model_id].session = skewed()
        return model_id, ret

    fake.mdl.load_from_file = load_and_skew
    code, lines = _doctor_npu(capsys, _config(tmp_path, tiny_manifest_path))
    assert code == 69
    assert lines[0].startswith("FAIL npu/bimodal") and "max |NPU - CPU| 0.5000" in lines[0]
    assert any(line.startswith("OK   npu/signal_only") for line in lines)
    finalize_pyacl()


def test_missing_om_is_named(tmp_path, tiny_manifest, tiny_manifest_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "acl", FakeAcl())
    tiny_manifest.graphs["bimodal"].om_path.unlink()
    code, lines = _doctor_npu(capsys, _config(tmp_path, tiny_manifest_path))
    assert code == 69 and f"no compiled .om recorded in {tiny_manifest_path}" in lines[0]
