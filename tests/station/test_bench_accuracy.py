"""`isic-station bench accuracy`: the real station on the demo bench, scored against the line, no label tiles."""

import json
import signal
import subprocess
import time
from pathlib import Path

from isic_station.tools.bench.accuracy import apply_settings, label_tile_count, tile_origins
from isic_station.tools.bench.scoring import figures_line, pooled_figures, score_result
from isic_station.tools.demo import station_command


def test_a_short_line_is_scored_and_no_label_tile_reaches_the_model(tmp_path):
    proc = subprocess.run(station_command() + ["bench", "accuracy", "--count", "4", "--json", "--line-seed", "7401",
                                               "--keep", str(tmp_path / "bench")],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    for key in ("accuracy", "mae", "mae_per_blend", "n", "straddled", "accuracy_ci95", "mae_ci95",
                "coverage_95", "median_interval_width", "ece"):
        assert key in result, key
    assert result["n"] == 4 and result["straddled"] >= 0
    assert 0.0 <= result["accuracy"] <= 1.0 and 0.0 <= result["mae"] < 0.5
    # the shipped model carries an uncertainty calibration: the station's results have intervals and confidences
    assert 0.0 <= result["coverage_95"] <= 1.0 and 0.0 < result["median_interval_width"] < 1.0
    assert 0.0 <= result["ece"] <= 1.0
    # the station logged the tiles of every measurement it made, and none touched the printed label
    assert result["measurements_with_tiles"] >= 4
    assert result["label_tiles"] == 0
    assert result["settings"]["camera_um_per_px"] == 1.0
    assert len(result["per_seed"][0]["sample_indices"]) == 4
    # the emulated instrument ran in the default preset's typical state, references and samples alike
    assert result["settings"]["instrument"]["lamp_intensity"] == 0.95
    log = (tmp_path / "bench" / "spectrometer.log").read_text(encoding="utf-8")
    assert "state pinned for every scan:" in log and "lamp_intensity=0.95" in log


def test_label_tiles_are_found_in_the_station_log():
    log = ("DEBUG isic_station.inference.predictor: image tiles at 2.4 um/px from 1 um/px: 4 masked, label 900 px, "
           "ignored 0 px, origins 0:0:0 0:128:192 1:64:64\n")
    measurements = tile_origins(log)
    assert measurements == [(2.4, [(0, 0, 0), (0, 128, 192), (1, 64, 64)])]
    # a 174 px label in the bottom-right corner of a 640x480 frame: only the tile at (128, 192) model px touches it
    assert label_tile_count(measurements, (458, 298, 174), 64) == 1


def test_set_replaces_or_adds_config_keys():
    text = "[camera]\nsource = \"virtual:\"\nframes_per_measurement = 3\n\n[model]\nthreads = 1\n"
    out = apply_settings(text, ["camera.frames_per_measurement=4", "camera.um_per_px=1.6", "health.interval_s=9",
                                "model.backend=onnxruntime"])
    assert "frames_per_measurement = 4" in out and "frames_per_measurement = 3" not in out
    assert "um_per_px = 1.6" in out and "[health]\ninterval_s = 9" in out and 'backend = "onnxruntime"' in out


def test_set_takes_several_keys_at_once_or_repeated():
    import argparse

    from isic_station.tools.bench import accuracy

    parser = argparse.ArgumentParser()
    accuracy.register(parser.add_subparsers())
    args = parser.parse_args(["accuracy", "--set", "camera.um_per_px=1.6", "camera.width=800", "--set", "a.b=1"])
    assert args.settings == ["camera.um_per_px=1.6", "camera.width=800", "a.b=1"]
    assert args.line_seed == [accuracy.DEFAULT_LINE_SEED] and args.count == 60


def test_coverage_and_ece_count_the_fibres_present_and_the_published_confidence():
    truth = {"cotton": 0.6, "polyester": 0.4, "nylon": 0.0}
    composition = {"cotton": 0.58, "polyester": 0.42, "nylon": 0.0}
    inside = {"cotton": [0.5, 0.7], "polyester": [0.3, 0.5], "nylon": [0.0, 0.01]}
    missed = {"cotton": [0.61, 0.7], "polyester": [0.3, 0.5], "nylon": [0.5, 0.6]}   # nylon is absent: not counted
    scores = [score_result(composition, "cotton/polyester", truth, "cotton/polyester", 0.9, inside),
              score_result(composition, "cotton/linen", truth, "cotton/polyester", 0.7, missed)]
    figures = pooled_figures(scores)
    assert figures["coverage_95"] == 0.75       # 3 of the 4 present-fibre intervals hold the truth
    assert figures["median_interval_width"] == 0.2
    # bins 0.9 (1 right) and 0.7 (1 wrong): 0.5 * |1 - 0.9| + 0.5 * |0 - 0.7|
    assert abs(figures["ece"] - 0.4) < 1e-9
    assert "coverage_95" not in pooled_figures([score_result(composition, "x", truth, "x")])


def test_flagged_known_counts_the_results_published_with_unknown_fibre():
    truth = {"cotton": 0.6, "polyester": 0.4}
    scores = [score_result(truth, "cotton/polyester", truth, "cotton/polyester", flags=flags)
              for flags in (["unknown_fibre", "refer_to_lab"], [], ["signal_only"], [])]
    assert pooled_figures(scores)["flagged_known"] == 0.25
    assert "flagged_known" not in pooled_figures([score_result(truth, "x", truth, "x")])  # no flags read


def test_results_outside_the_trained_range_are_counted_apart():
    truth = {"cotton": 0.6, "polyester": 0.4}
    scores = [score_result(truth, blend, truth, "cotton/polyester", flags=flags)
              for blend, flags in (("cotton", ["outside_trained_range", "refer_to_lab"]), ("cotton/polyester", []),
                                   ("cotton", []), ("cotton/polyester", []))]
    figures = pooled_figures(scores)
    assert figures["accuracy"] == 0.5 and figures["outside_trained_range"] == 0.25
    assert abs(figures["accuracy_within_trained"] - 2 / 3) < 1e-3  # the flagged wrong result left out
    assert pooled_figures(scores[:1])["accuracy_within_trained"] is None


def _descendants(pid: int) -> set:
    """Every living process below `pid` (read from /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def test_a_killed_bench_stops_its_station_emulator_and_broker(tmp_path):
    """SIGTERM (a `kill`, or systemd) to `bench accuracy` stops the processes it started: none is orphaned."""
    bench = subprocess.Popen(station_command() + ["bench", "accuracy", "--count", "50", "--json", "--line-seed", "7402",
                                                  "--keep", str(tmp_path / "bench")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, started = time.monotonic() + 120, set()
        while time.monotonic() < deadline and not (tmp_path / "bench" / "station.log").is_file():
            time.sleep(0.5)
        time.sleep(2.0)
        started = _descendants(bench.pid)
        assert len(started) >= 2, "the bench should be running the emulator and the station by now"
        bench.send_signal(signal.SIGTERM)
        code = bench.wait(60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in started):
            time.sleep(0.2)
        left = {pid for pid in started if Path(f"/proc/{pid}").exists()
                and "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]}
        assert not left, f"still running after the bench stopped: {left}"
        assert code == 128 + signal.SIGTERM   # stopped by the signal, after its clean-up
    finally:
        if bench.poll() is None:
            bench.kill()


def test_results_of_one_piece_widen_the_interval_by_sample():
    """Four results of each of 40 pieces: when each piece is right or wrong as a whole, the by-sample bootstrap
    interval is about twice the Wilson interval of 160 independent results; coverage likewise by piece."""
    truth = {"cotton": 0.6, "polyester": 0.4}
    inside = {"cotton": [0.5, 0.7], "polyester": [0.3, 0.5]}
    outside = {"cotton": [0.7, 0.8], "polyester": [0.2, 0.3]}
    scores = [score_result(truth, "cotton/polyester" if piece % 5 else "cotton", truth, "cotton/polyester", 0.9,
                           inside if piece % 10 else outside, sample=f"7001:{piece}")
              for piece in range(40) for _ in range(4)]
    figures = pooled_figures(scores)
    assert figures["pieces"] == 40 and figures["n"] == 160 and figures["accuracy"] == 0.8
    lo, hi = figures["accuracy_ci95_by_sample"]
    wilson_lo, wilson_hi = figures["accuracy_ci95"]
    assert lo < 0.8 < hi and (hi - lo) > 1.6 * (wilson_hi - wilson_lo)
    assert figures["coverage_95"] == 0.9
    clo, chi = figures["coverage_95_ci95"]
    assert clo < 0.9 < chi and chi - clo > 0.1
    assert pooled_figures(scores) == figures, "the same scores give the same interval"
    assert "pieces" not in pooled_figures([score_result(truth, "x", truth, "x")])  # unnamed: results independent
    assert "of 40 pieces" in figures_line(figures) and "by sample" in figures_line(figures)
