"""Confidence profiles: the blend confidence refit for stations measuring more than the calibration
(`isic-model calibrate-confidence`), and which profile a station's settings pick."""

import json
from dataclasses import asdict, replace

import numpy as np
import pytest

from isic_model import SHIPPED_MANIFEST
from isic_model.calibrate_uncertainty import fit_temperatures
from isic_model.cli import main
from isic_model.measuring_settings import station_settings
from isic_station.config import load_config
from isic_station.daemon.wiring import ModelLoader
from isic_station.manifest import load_manifest
from isic_station.schemas import load_schema
from isic_station.tools.bench.accuracy import apply_settings
from isic_station.tools.demo import DemoBench
from isic_station.uncertainty import (
    INTERVAL_KEYS,
    LOT_KEYS,
    PathCalibration,
    SpectrumQuality,
    UncertaintyCalibration,
    confidence_profile,
    with_confidence_profile,
)

from .test_uncertainty_calibration import copy_model

CALIBRATED = {"coadd": 4, "n_frames": 3, "frame_px": 640, "frame_height": 480, "camera_um_per_px": 1.0,
              "integration_us": 8000, "label": True}


def profile_at(coadd, frames, temperature):
    temps = {"temperature": temperature, "noisy_temperature": 2 * temperature, "flag_temperature": {}}
    return {"station": dict(CALIBRATED, coadd=coadd, n_frames=frames), "data": {}, "heldout": {},
            "paths": {"bimodal": temps, "signal_only": temps}}


def test_a_station_takes_the_richest_profile_its_settings_meet():
    doc = {"paths": {"bimodal": {"temperature": 1.0}, "signal_only": {"temperature": 1.0}},
           "confidence_profiles": [profile_at(16, 16, 0.7), profile_at(8, 8, 0.8)]}
    assert confidence_profile(doc, dict(CALIBRATED, coadd=16, n_frames=16))["paths"]["bimodal"]["temperature"] == 0.7
    assert confidence_profile(doc, dict(CALIBRATED, coadd=32, n_frames=10))["paths"]["bimodal"]["temperature"] == 0.8
    assert confidence_profile(doc, CALIBRATED) is None  # the calibration's own settings: its own temperatures
    assert confidence_profile(doc, None) is None
    # a finer camera over the same pixels sees less field than the profile was fitted on
    assert confidence_profile(doc, dict(CALIBRATED, coadd=16, n_frames=16, camera_um_per_px=0.8)) is None
    # without a camera (signal-only) the frames are unknown: no profile fitted with frames is met
    assert confidence_profile(doc, {"coadd": 16, "integration_us": 8000}) is None
    tempered = with_confidence_profile(doc, confidence_profile(doc, dict(CALIBRATED, coadd=16, n_frames=16)))
    assert tempered["paths"]["signal_only"] == {"temperature": 0.7, "noisy_temperature": 1.4, "flag_temperature": {}}
    assert doc["paths"]["signal_only"] == {"temperature": 1.0}  # the calibration itself is left as it was


def station_config(folder, *settings):
    bench = DemoBench(folder)
    bench.pty_path = "/dev/null"
    path = bench.write_config()
    path.write_text(apply_settings(path.read_text(encoding="utf-8"), list(settings)), encoding="utf-8")
    return path


def test_the_command_writes_a_profile_richer_stations_use_and_refuses_poorer_settings(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    copy_model(model)
    shipped = load_manifest(model / "manifest.json").raw["uncertainty"].get("confidence_profiles", [])
    richer = station_config(tmp_path, "spectrometer.coadd=8", "camera.frames_per_measurement=4")
    args = ["calibrate-confidence", "--model", str(model), "--config", str(richer), "--groups", "12", "--repeats",
            "2", "--heldout-samples", "10", "--jobs", "2", "--cache", str(tmp_path / "cache"), "--json"]
    assert main(args) == 0
    assert main(args) == 0  # again at the same settings: replaced, not added
    manifest = load_manifest(model / "manifest.json")
    settings = asdict(station_settings(richer))
    profiles = manifest.raw["uncertainty"]["confidence_profiles"]
    assert len(profiles) == len(shipped) + 1 and profiles[:-1] == shipped  # the shipped model's are kept
    profile = profiles[-1]
    assert profile["station"] == settings and profile["data"]["measurements"] == 24
    for when in ("before", "after"):
        assert set(profile["heldout"][when]) >= {"accuracy", "ece", "mean_confidence", "coverage_95"}
    calibration = UncertaintyCalibration.from_manifest(manifest, settings)
    assert calibration.profile == profile
    assert calibration.paths["bimodal"].temperature == profile["paths"]["bimodal"]["temperature"]
    own = UncertaintyCalibration.from_manifest(manifest, manifest.raw["uncertainty"]["data"]["station"])
    assert own.profile is None
    assert own.paths["bimodal"].temperature == manifest.raw["uncertainty"]["paths"]["bimodal"]["temperature"]
    # the station's loader picks it from its own config
    config = load_config(richer)
    config = replace(config, model=replace(config.model, manifest=model / "manifest.json"))
    predictor = ModelLoader(config).load()
    try:
        assert predictor.calibration.profile == profile
    finally:
        predictor.backend.close()
    # --intervals --lots: the same settings' profile, replaced by one holding the interval model and lot tables too
    capsys.readouterr()
    assert main(args + ["--lots", "--repeats", "1"]) != 0  # a group of one piece has no spread to take off
    assert "--lots needs --repeats 2 or more" in capsys.readouterr().err
    assert main([a if a != "12" else "24" for a in args] + ["--intervals", "--lots"]) == 0
    manifest = load_manifest(model / "manifest.json")
    profiles = manifest.raw["uncertainty"]["confidence_profiles"]
    profile = profiles[-1]
    assert len(profiles) == len(shipped) + 1
    assert "intervals" in profile["data"] and "lots" in profile["data"]
    profiled = UncertaintyCalibration.from_manifest(manifest, settings)
    refit = profiled.paths["bimodal"]
    assert refit.quantile.tolist() == [profile["paths"]["bimodal"]["quantile"][f] for f in manifest.fibres]
    assert refit.quantile.tolist() != own.paths["bimodal"].quantile.tolist()
    bounds = profile["paths"]["bimodal"]["systematic_bound_per_blend"]
    blend = next(b for b in bounds if bounds[b] != own.doc["paths"]["bimodal"]["systematic_bound_per_blend"][b])
    assert profiled.systematic("bimodal", blend) == pytest.approx({f: v / 1.959964 for f, v in bounds[blend].items()})
    assert profiled.systematic("bimodal", blend) != own.systematic("bimodal", blend)
    kept = UncertaintyCalibration.from_manifest(manifest, manifest.raw["uncertainty"]["data"]["station"])
    assert kept.paths["bimodal"].quantile.tolist() == own.paths["bimodal"].quantile.tolist()
    assert kept.systematic("bimodal", blend) == own.systematic("bimodal", blend)
    before = (model / "manifest.json").read_bytes()
    capsys.readouterr()
    # two compositions split one to fit, one to calibrate: some fibre is in no calibrating measurement
    assert main([a if a != "12" else "2" for a in args] + ["--intervals"]) != 0
    assert "too few measurements to fit its intervals (measure more compositions: --groups)" in capsys.readouterr().err
    assert (model / "manifest.json").read_bytes() == before
    poorer = station_config(tmp_path, "spectrometer.coadd=2")  # written over `richer`'s file
    assert main(["calibrate-confidence", "--model", str(model), "--config", str(poorer), "--json"]) != 0
    assert "take fewer scans, frames or field than the calibration's" in capsys.readouterr().err
    assert (model / "manifest.json").read_bytes() == before
    assert json.loads(before)["uncertainty"]["confidence_profiles"] == profiles


def answers(rng, n, accuracy, confidence, classes=3):
    """[n, classes] blend probabilities whose top class (at `confidence`) is the true one with `accuracy`."""
    labels = rng.integers(0, classes, n)
    top = np.where(rng.random(n) < accuracy, labels, (labels + rng.integers(1, classes, n)) % classes)
    prob = np.full((n, classes), (1 - confidence) / (classes - 1))
    prob[np.arange(n), top] = confidence
    return prob, labels


def rows_of(parts):
    """Fit rows (`fit_temperatures`' input) from (level, accuracy, confidence, n) parts, all of clean spectra."""
    rng = np.random.default_rng(5)
    probs, labels, levels = [], [], []
    for level, accuracy, confidence, n in parts:
        p, lab = answers(rng, n, accuracy, confidence)
        probs.append(p)
        labels.append(lab)
        levels.append(np.full(n, level))
    n = sum(len(lab) for lab in labels)
    return {"prob": np.concatenate(probs), "labels": np.array(["abc"[i] for i in np.concatenate(labels)]),
            "level": np.concatenate(levels), "noise": np.full(n, 0.001), "flag_key": np.array([""] * n, dtype=object)}


def test_dark_spectra_get_their_own_temperature_only_where_the_fit_data_shows_it():
    """Dark fabric answered as confidently as bright but right less often gets a hotter temperature below the
    split the likelihood picks; where dark and bright err alike, or dark pieces are too few, no split is kept."""
    overconfident_dark = rows_of([(0.75, 0.97, 0.9, 600), (0.3, 0.75, 0.9, 200)])
    temps = fit_temperatures(overconfident_dark, "abc", noise_split=0.01)
    assert 0.3 < temps["dark_split"] <= 0.6
    assert temps["dark_temperature"] > 1.0 > temps["temperature"]  # dark: less sure than answered; bright: surer
    shipped = load_manifest(SHIPPED_MANIFEST)
    path = PathCalibration.from_dict(dict(shipped.raw["uncertainty"]["paths"]["bimodal"], **temps), shipped.fibres)
    assert path.temperature_for(0.001, "", level=0.3) == temps["dark_temperature"]
    assert path.temperature_for(0.001, "", level=0.75) == temps["temperature"]
    assert path.temperature_for(0.02, "", level=0.3) == temps["noisy_temperature"]  # noise comes first
    alike = rows_of([(0.75, 0.9, 0.9, 600), (0.3, 0.9, 0.9, 200)])
    assert "dark_temperature" not in fit_temperatures(alike, "abc", noise_split=0.01)
    few = rows_of([(0.75, 0.97, 0.9, 600), (0.3, 0.75, 0.9, 30)])
    assert "dark_temperature" not in fit_temperatures(few, "abc", noise_split=0.01)


def test_a_profile_without_a_dark_temperature_takes_the_calibrations_away_and_keeps_its_intervals():
    doc = {"paths": {p: {"temperature": 1.0, "noisy_temperature": 2.0, "flag_temperature": {},
                         "dark_temperature": 1.5, "dark_split": 0.45, "quantile": {}}
                     for p in ("bimodal", "signal_only")}}
    tempered = with_confidence_profile(doc, profile_at(16, 16, 0.7))
    assert tempered["paths"]["bimodal"] == {"temperature": 0.7, "noisy_temperature": 1.4, "flag_temperature": {},
                                            "quantile": {}}


def test_noisy_spectra_take_the_noise_factor_on_their_interval():
    """A path's `noise_factor` scales the interval of spectra noisier than its noise split, and only theirs."""
    shipped = load_manifest(SHIPPED_MANIFEST)
    doc = shipped.raw["uncertainty"]
    pred = {f: 0.0 for f in shipped.fibres}
    pred.update({"cotton": 0.6, "polyester": 0.4})
    probs = {c: 1.0 / len(shipped.blend_classes) for c in shipped.blend_classes}
    split = doc["paths"]["bimodal"]["noise_split"]

    def cotton_uncertainty(noise_factor, noise):
        paths = dict(doc["paths"], bimodal=dict(doc["paths"]["bimodal"], noise_factor=noise_factor))
        calibration = UncertaintyCalibration(dict(doc, paths=paths), list(shipped.fibres), list(shipped.blend_classes))
        spectrum = np.asarray(doc["unknown_fibre"]["mean"], dtype=np.float64)
        out = calibration.apply("bimodal", pred, {f: 0.01 for f in shipped.fibres}, probs, spectrum,
                                SpectrumQuality(noise, 0.75))
        return out.uncertainty["cotton"]  # half-width / 1.96, before the interval is clipped to [0, 1]

    noisy, clean = 2 * split, 0.5 * split
    assert cotton_uncertainty([1.0, 1.5], noisy) == pytest.approx(1.5 * cotton_uncertainty([1.0, 1.0], noisy), rel=1e-6)
    assert cotton_uncertainty([1.0, 1.5], clean) == pytest.approx(cotton_uncertainty([1.0, 1.0], clean), rel=1e-6)


def test_the_manifest_schema_asks_a_profile_for_every_table_the_station_swaps_in():
    """`uncertainty.LOT_KEYS` and `INTERVAL_KEYS` (what a profile's lot tables and interval model replace: a key
    the profile lacks falls back to its default, not to the calibration's own) and the schema's
    dependentRequired are one list each."""
    profile_path = (load_schema("manifest")["properties"]["uncertainty"]["properties"]["confidence_profiles"]
                    ["items"]["properties"]["paths"]["additionalProperties"])
    assert set(profile_path["dependentRequired"]["systematic_bound"]) == set(LOT_KEYS) - {"systematic_bound"}
    assert set(profile_path["dependentRequired"]["quantile"]) == set(INTERVAL_KEYS) - {"quantile"}
