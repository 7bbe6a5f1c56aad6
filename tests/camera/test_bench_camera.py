"""`isic-station bench camera`: its JSON contract and its one-line error without a manifest."""

import json
import subprocess
import sys

from fakes.tiny_isicnet import write_tiny_model
from isic_station.cli import main


def test_bench_camera_json_reports_both_sources(tmp_path, capsys):
    manifest = write_tiny_model(tmp_path / "model")
    assert main(["bench", "camera", "--frames", "4", "--width", "320", "--height", "240", "--json",
                 "--manifest", str(manifest)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["frames"] == 4 and report["width"] == 320
    assert set(report["sources"]) == {"virtual", "video_mjpg"}
    assert report["sample_label"]["frames"] == 4 and report["sample_label"]["ids_read"] >= 1
    for figures in report["sources"].values():
        assert figures["fps"] > 0
        assert figures["frames_passed"] == 4 and figures["measurements"] == 1
        assert set(figures) == {"fps", "capture_ms", "gate_ms", "input_ms", "frames_passed", "measurements"}


def test_bench_camera_without_a_manifest_file_is_one_line_and_exit_78(tmp_path):
    run = subprocess.run([sys.executable, "-m", "isic_station.cli", "bench", "camera", "--frames", "2",
                          "--manifest", str(tmp_path / "missing.json")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 78
    assert run.stderr.strip().count("\n") == 0 and "missing.json" in run.stderr
