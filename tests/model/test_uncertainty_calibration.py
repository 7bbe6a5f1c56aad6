"""Uncertainty calibration: the command writes a valid manifest section the station applies; intervals,
temperature, unknown fibres and the metrics, on the shipped model and the virtual lab (ONNX Runtime)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from isic_drivers.lab.sample import trained_ranges
from isic_model import SHIPPED_DIR, SHIPPED_MANIFEST
from isic_model.calibrate_uncertainty import conformal_quantile
from isic_model.calibration_data import collect
from isic_model.cli import main
from isic_model.measuring_settings import station_settings
from isic_station.inference import create_backend
from isic_station.inference.predictor import Predictor
from isic_station.manifest import load_manifest
from isic_station.uncertainty import spectrum_quality, temper
from isic_station.uncertainty_metrics import (
    confidence_figures,
    coverage_95,
    ece_noise_floor,
    expected_calibration_error,
    median_interval_width,
    unknown_fibre_rates,
)


def copy_model(folder):
    """The shipped model's graphs and manifest (not its ablation) into `folder`; their names, sorted."""
    files = sorted(p.name for p in SHIPPED_DIR.iterdir() if p.suffix in (".onnx", ".json"))
    for name in files:
        shutil.copy(SHIPPED_DIR / name, folder / name)
    return files


@pytest.fixture(scope="module")
def calibrated_copy(tmp_path_factory):
    """The shipped graphs with a small calibration written by the command (a few hundred measurements)."""
    folder = tmp_path_factory.mktemp("calibrated")
    copy_model(folder)
    raw = json.loads((folder / "manifest.json").read_text())
    raw.pop("uncertainty", None)
    (folder / "manifest.json").write_text(json.dumps(raw))
    rc = main(["calibrate-uncertainty", "--model", str(folder), "--seed", "77", "--groups", "24", "--repeats", "2",
               "--heldout-seed", "78", "--heldout-samples", "8", "--heldout-presets", "default,low_snr",
               "--unknown-fibres", "wool", "--unknown-samples", "12", "--lots", "2", "--lot-size", "3", "--jobs", "2",
               "--cache", str(folder / "cache"), "--json"])
    assert rc == 0
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []  # no working copies left
    return folder / "manifest.json"


def predictor_for(path):
    manifest = load_manifest(path)
    return Predictor(manifest, create_backend("onnxruntime", manifest, {"threads": 1}))


def measure(composition, seed, preset="default"):
    """One measurement as the demo bench's station takes it (the settings the calibration is fitted for)."""
    from isic_drivers.lab.sample import Sample, draw_nuisance

    rng = np.random.default_rng(seed)
    fibres = ["cotton", "linen", "viscose", "polyester", "nylon"] + [f for f in composition if f == "wool"]
    return station_settings().take(Sample(composition, draw_nuisance(rng, preset)), rng, fibres)


def test_the_command_records_data_method_and_heldout_figures(calibrated_copy):
    doc = load_manifest(calibrated_copy).raw["uncertainty"]
    assert doc["data"]["seed"] == 77 and doc["data"]["measurements"] == 48 and doc["data"]["repeats"] == 2
    # the conditions its data spans (the training mixture's: no --preset), against which the station checks a room
    raw = load_manifest(calibrated_copy).raw
    assert doc["data"]["conditions"] == trained_ranges(raw["training"]["preset"])
    assert "conformal" in doc["method"] and doc["coverage"] == 0.95
    for path in ("bimodal", "signal_only"):
        p = doc["paths"][path]
        assert p["temperature"] > 0 and set(p["quantile"]) == {"cotton", "linen", "viscose", "polyester", "nylon"}
    heldout = doc["heldout"]["presets"]
    assert set(heldout) == {"default", "low_snr"} and 0.0 <= heldout["default"]["coverage_95"] <= 1.0
    assert doc["heldout"]["unknown_fibre"]["fibres"] == ["wool"]
    # the discriminant is fitted on the calibration's own wool fabrics (seed + 100), one threshold per noise band
    discriminant = doc["unknown_fibre"]["discriminant"]
    assert discriminant["fibres"] == ["wool"] and discriminant["samples"]["unknown"] == 12
    assert len(discriminant["weights"]) == len(doc["unknown_fibre"]["mean"])
    assert len(discriminant["thresholds"]) == len(doc["unknown_fibre"]["noise_edges"]) + 1
    assert doc["data"]["unknown_fibre"]["seed"] == 177
    assert set(doc["heldout"]["unknown_fibre"]["per_fibre"]) == {"wool"}
    lots = doc["heldout"]["lots"]
    assert lots["lots"] == 2 and lots["size"] == 3 and set(lots["tolerance_pp"]) == {"3", "5"}
    assert sum(lots["tolerance_pp"]["5"]["true"].values()) == pytest.approx(1.0)
    assert 0.0 <= lots["coverage_95"] <= 1.0
    # measured with the station's settings (the demo bench's by default), recorded for the station's check
    assert doc["data"]["station"]["label"] is True and doc["data"]["station"]["coadd"] == 4
    for path in ("bimodal", "signal_only"):
        assert isinstance(doc["paths"][path]["flag_temperature"], dict)
        # the lot bound: a row for every blend class (its own fibres bounded), and the level factor
        p = doc["paths"][path]
        classes = load_manifest(calibrated_copy).blend_classes
        assert set(p["systematic_bound_per_blend"]) == set(classes) == set(p["systematic_bound_per_blend_noisy"])
        assert p["systematic_bound_per_blend"]["cotton/polyester"]["nylon"] == 0.0
        assert p["systematic_bound_per_blend"]["cotton/polyester"]["cotton"] > 0.0
        assert len(p["level_factor"]) == 2 and min(p["level_factor"]) > 0


def test_the_station_reports_calibrated_intervals_and_confidence(calibrated_copy):
    calibrated, raw = predictor_for(calibrated_copy), Predictor(load_manifest(calibrated_copy),
                                                                create_backend("onnxruntime",
                                                                               load_manifest(calibrated_copy),
                                                                               {"threads": 1}), calibrated=False)
    m = measure({"cotton": 0.6, "polyester": 0.4}, 5)
    p = calibrated.predict(m.reflectance, m.wavelengths_nm, m.frames, m.um_per_px)
    r = raw.predict(m.reflectance, m.wavelengths_nm, m.frames, m.um_per_px)
    assert p.composition == r.composition and p.blend == r.blend and r.interval_95 is None
    unclipped = [f for f, (low, high) in p.interval_95.items() if low > 0.0 and high < 1.0]
    assert {"cotton", "polyester"} <= set(unclipped)
    for fibre, (low, high) in p.interval_95.items():
        assert 0.0 <= low <= p.composition[fibre] <= high <= 1.0
        # the calibrated standard uncertainty is the 95 % half-width over 1.96 (where 0 and 1 do not clip it);
        # not the tile spread, which over up to max_tiles tiles says how tiles differ, not how far the mean is
        if fibre in unclipped:
            assert p.uncertainty[fibre] == pytest.approx((high - low) / 2 / 1.96, abs=2e-4)
    assert p.uncertainty["cotton"] > 0.005
    # what the spec check judges: the same interval for fibres present, never wider for those predicted absent
    for fibre, (low, high) in p.decision_interval_95.items():
        assert p.interval_95[fibre][0] <= low <= high <= p.interval_95[fibre][1]
        if p.composition[fibre] >= 0.01:
            assert [low, high] == p.interval_95[fibre]
    # signal-only has its own calibration (wider: no image)
    s = calibrated.predict(m.reflectance, m.wavelengths_nm, None, m.um_per_px)
    assert s.signal_only and s.interval_95["cotton"][1] - s.interval_95["cotton"][0] > 0.0
    # an uncalibrated quality flag is reported, not silently ignored
    flagged = calibrated.predict(m.reflectance, m.wavelengths_nm, m.frames, m.um_per_px, flags={"stale_reference"})
    assert flagged.uncalibrated_flags == ("stale_reference",)


def test_a_wool_cotton_sample_is_flagged_and_a_known_blend_is_not():
    """On the shipped model's own calibration (README figures)."""
    predictor = predictor_for(SHIPPED_MANIFEST)
    assert predictor.calibration is not None, "the shipped manifest carries no uncertainty calibration"
    wool = measure({"wool": 0.5, "cotton": 0.5}, 11)
    known = measure({"cotton": 0.5, "polyester": 0.5}, 11)
    p_wool = predictor.predict(wool.reflectance, wool.wavelengths_nm, wool.frames, wool.um_per_px)
    p_known = predictor.predict(known.reflectance, known.wavelengths_nm, known.frames, known.um_per_px)
    assert p_wool.unknown_fibre and not p_known.unknown_fibre
    assert p_wool.unknown_fibre_score > p_known.unknown_fibre_score


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_a_quarter_of_wool_the_spectrum_residual_misses_is_flagged_by_the_discriminant(seed):
    """A fibre at 20-30 % leaves a residual within what known fabrics leave; the shipped calibration's
    discriminant (fitted on its own unknown-fibre fabrics, seed 2101) flags it, and not the known blend."""
    predictor = predictor_for(SHIPPED_MANIFEST)
    calibration = predictor.calibration
    assert calibration.discriminant_weights is not None, "the shipped calibration has no unknown-fibre discriminant"
    wool = measure({"wool": 0.25, "cotton": 0.75}, seed)
    known = measure({"cotton": 0.75, "linen": 0.25}, seed)
    p_wool = predictor.predict(wool.reflectance, wool.wavelengths_nm, wool.frames, wool.um_per_px)
    p_known = predictor.predict(known.reflectance, known.wavelengths_nm, known.frames, known.um_per_px)
    noise = spectrum_quality(wool.reflectance).noise
    assert p_wool.unknown_fibre_score < calibration.unknown_threshold_for(noise)  # the Q statistic alone misses it
    assert p_wool.unknown_fibre and not p_known.unknown_fibre


def test_conformal_quantile_is_the_finite_sample_rank():
    scores = np.arange(1, 20)  # n = 19: ceil(20 * 0.95) = 19th smallest
    assert conformal_quantile(scores) == 19
    assert conformal_quantile(np.arange(1, 100)) == 95  # ceil(100 * 0.95) = 95
    assert conformal_quantile(np.array([3.0])) == 3.0


def test_temperature_keeps_the_winner_and_softens():
    p = np.array([0.7, 0.2, 0.1])
    assert np.allclose(temper(p, 1.0), p)
    soft = temper(p, 2.0)
    assert soft.argmax() == 0 and soft[0] < 0.7 and soft.sum() == pytest.approx(1.0)


def test_metrics_on_known_values():
    truth = np.array([[0.6, 0.4, 0.0], [1.0, 0.0, 0.0]])
    intervals = np.array([[[0.5, 0.7], [0.45, 0.5], [0.0, 0.1]], [[0.9, 1.0], [0.0, 0.05], [0.0, 0.0]]])
    assert coverage_95(truth, intervals) == pytest.approx(2 / 3, abs=1e-4)  # polyester 0.4 is outside
    assert median_interval_width(truth, intervals) == pytest.approx(0.1)
    # half the answers at 0.9 right, half at 0.6 right: |0.5-0.9| and |1-0.6| in two bins
    assert expected_calibration_error([0.9, 0.9, 0.6, 0.6], [True, False, True, True]) == pytest.approx(0.4)
    assert expected_calibration_error([0.75] * 4, [True, True, True, False]) == pytest.approx(0.0)
    # counting noise alone: a perfectly calibrated model reads ECE > 0, less the more results
    assert ece_noise_floor([1.0] * 50) == 0.0
    assert ece_noise_floor([0.9] * 180) > ece_noise_floor([0.9] * 900) > 0.0
    # the same ECE from an over- and an underconfident model: the mean confidence tells them apart
    nine_of_ten = [True] * 9 + [False]
    over, under = confidence_figures([0.95] * 10, nine_of_ten), confidence_figures([0.85] * 10, nine_of_ten)
    assert over["ece"] == under["ece"] == pytest.approx(0.05) and over["ece_noise_floor"] > 0
    assert (over["mean_confidence"], under["mean_confidence"]) == (0.95, 0.85)
    rates = unknown_fibre_rates([True, True, False, True], [False] * 9 + [True])
    assert rates["flagged_unknown"] == 0.75 and rates["flagged_known"] == 0.1


def test_a_station_measuring_less_than_calibrated_is_told_and_one_measuring_more_is_not():
    """Fewer scans, frames or field than the calibration data err more than its intervals allow: a problem.
    More of them (production's 16 scans and 16 frames over the demo's 4 and 3) err less: only a note."""
    from types import SimpleNamespace

    from isic_station.uncertainty import settings_note, settings_problem

    def config(coadd=4, frames=3, width=640, height=480, um_per_px=1.0, source="emulated:lab"):
        return SimpleNamespace(spectrometer=SimpleNamespace(coadd=coadd, integration_us=8000),
                               camera=SimpleNamespace(source=source, frames_per_measurement=frames, width=width,
                                                      height=height, um_per_px=um_per_px))

    calibrated = {"coadd": 4, "n_frames": 3, "frame_px": 640, "frame_height": 480, "camera_um_per_px": 1.0,
                  "integration_us": 8000, "label": True}
    assert settings_problem(calibrated, config()) is None and settings_note(calibrated, config()) is None
    richer = config(coadd=16, frames=16, width=1280, height=720, um_per_px=0.8)
    assert settings_problem(calibrated, richer) is None
    assert "coadd 4 -> 16" in settings_note(calibrated, richer) and "at least as much" in settings_note(
        calibrated, richer)
    problem = settings_problem(calibrated, config(coadd=2, frames=1))
    assert "coadd 4 -> 2" in problem and "n_frames 3 -> 1" in problem and "--config" in problem
    assert settings_note(calibrated, config(coadd=2, frames=1)) is None
    # a finer camera scale over the same pixels sees a smaller field: fewer fibres than calibrated
    assert "field_um2 307200 -> 196608" in settings_problem(calibrated, config(um_per_px=0.8))
    # without a camera the signal-only calibration holds whatever the frames would have been
    assert settings_problem(calibrated, config(frames=1, source="")) is None


def test_a_killed_calibration_leaves_the_model_folder_as_it_was(tmp_path):
    """SIGTERM while the records are collected (real process): the manifest is unchanged and the command's
    scratch copies (`.uncalibrated-manifest.json`) are gone; before, the copy stayed in the model's folder."""
    files = copy_model(tmp_path)
    before = (tmp_path / "manifest.json").read_bytes()
    proc = subprocess.Popen([sys.executable, "-m", "isic_model.cli", "calibrate-uncertainty", "--model", str(tmp_path),
                             "--groups", "400", "--heldout-samples", "8", "--cache", str(tmp_path / "cache"),
                             "--jobs", "2", "--json"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        copy = tmp_path / ".uncalibrated-manifest.json"
        deadline = time.monotonic() + 120
        while not copy.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert copy.exists(), "the calibration never started collecting"
        time.sleep(2)   # its worker processes are rendering the first records
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == files
    assert (tmp_path / "manifest.json").read_bytes() == before


def test_records_without_a_room_sensor_give_the_model_no_room():
    """`evaluate --unknown-fibres ... --no-temperature` scores the unknown-fibre fabrics as the known ones: the
    shipped model (it takes the room) answers the same measurements otherwise without a reading."""
    with_room, without = (collect(SHIPPED_MANIFEST, 91, 2, unknown=["wool"], progress=False, room_sensor=sensor)
                          for sensor in (True, False))
    assert np.array_equal(with_room.truth, without.truth) and with_room.unknown_share.min() > 0
    assert not np.allclose(with_room.station_pred, without.station_pred, atol=1e-4)
