"""The shipped model: what the station loads, what ATC can compile, and figures that reproduce."""

import json

import numpy as np
import pytest

from isic_drivers.lab import draw_sample, simulate_measurement
from isic_drivers.lab.sample import trained_ranges
from isic_model import SHIPPED_DIR, SHIPPED_MANIFEST
from isic_model.calibration_data import presets_arg
from isic_model.evaluate import run_evaluation, run_seeds
from isic_model.graph_checks import graph_op_types, graph_problems, load_allowlist
from isic_station.inference.predictor import Predictor
from isic_station.inference.registry import create_backend
from isic_station.manifest import load_manifest, verify_graph_file
from isic_station.preprocess.image_stream import ImageBatchBuilder

METRIC_KEYS = (
    "accuracy",
    "mae",
    "mae_per_fibre",
    "mae_per_blend",
    "signal_only",
    "baselines",
    "preset",
    "seed",
    "samples",
)


@pytest.fixture(scope="module")
def manifest():
    return load_manifest(SHIPPED_MANIFEST)


def test_station_loads_the_manifest_and_the_checksums_match(manifest):
    assert set(manifest.graphs) >= {"bimodal", "signal_only"}
    for graph in manifest.graphs.values():
        verify_graph_file(graph)
        assert graph.onnx_path.stat().st_size < 4_000_000  # "a few MB at most"
    tiles = manifest.image["tiles_per_measurement"]
    assert manifest.graphs["bimodal"].inputs[0].shape == (tiles, len(manifest.spectrum["wavelengths_nm"]))
    assert manifest.graphs["signal_only"].output("composition").shape == (1, len(manifest.fibres))


def test_every_shipped_graph_is_atc_ready():
    allowlist = load_allowlist()
    graphs = sorted(SHIPPED_DIR.rglob("*.onnx"))
    assert graphs, f"no .onnx under {SHIPPED_DIR}"
    for path in graphs:
        assert graph_op_types(path) <= allowlist, path
        assert graph_problems(path, allowlist) == [], path


def test_metrics_come_from_a_heldout_seed_with_the_contract_keys(manifest):
    metrics, training = manifest.raw["metrics"], manifest.raw["training"]
    assert all(key in metrics for key in METRIC_KEYS)
    assert metrics["seed"] == training["heldout_seed"] != training["seed"]
    assert metrics["preset"] == "default"
    assert {"pls", "svm", "plsda"} <= set(metrics["baselines"])


def test_the_conditions_are_those_of_the_training_mixture(manifest):
    """What the station checks a room against is what the recorded training drew from, not a hand-set range."""
    conditions = manifest.raw["conditions"]
    assert conditions == trained_ranges(manifest.raw["training"]["preset"])
    data = manifest.raw["uncertainty"]["data"]  # the calibration's: this model was calibrated on its own mixture
    assert data["conditions"] == trained_ranges(presets_arg(data["preset"]))
    assert conditions["temperature_c"][0] <= 18.0 and conditions["temperature_c"][1] >= 30.0
    assert manifest.condition_problem(conditions["temperature_c"][0] - 0.5) is not None
    assert manifest.condition_problem(sum(conditions["temperature_c"]) / 2) is None


def test_evaluate_on_the_heldout_seed_reproduces_the_recorded_run(manifest):
    check = manifest.raw["training"]["check_run"]
    result = run_evaluation(
        SHIPPED_MANIFEST,
        check["seed"],
        check["samples"],
        check["preset"],
        baselines=False,
        ablation=False,
        progress=False,
    )
    assert result["accuracy"] == check["accuracy"]
    assert result["mae"] == pytest.approx(check["mae"], abs=2e-4)
    # the recorded figures (the uncertainty figures came later, with the calibration)
    recorded = {k: result["signal_only"][k] for k in check["signal_only"]}
    assert json.dumps(recorded, sort_keys=True) == json.dumps(check["signal_only"], sort_keys=True)



def test_evaluate_seeds_pools_coverage_and_confidence_over_every_seeds_results():
    """Pooled over one seed, the uncertainty figures are that seed's own; over two, they come with the
    coverage's interval by piece of fabric."""
    options = dict(baselines=False, ablation=False, progress=False)
    alone = run_evaluation(SHIPPED_MANIFEST, 5, 3, **options)
    one = run_seeds(SHIPPED_MANIFEST, [5], 3, **options)
    for key in ("coverage_95", "median_interval_width", "ece", "ece_noise_floor", "mean_confidence"):
        assert one[key] == pytest.approx(alone[key], abs=1e-4), key
    two = run_seeds(SHIPPED_MANIFEST, [5, 6], 3, **options)
    low, high = two["coverage_95_ci95"]
    assert two["n"] == two["pieces"] == 6 and 0.0 <= low <= two["coverage_95"] <= high <= 1.0
    assert two["per_seed"][0]["coverage_95"] == alone["coverage_95"] and "coverage_95_ci95" in alone

def test_the_station_encodes_tiles_as_frames_arrive_and_answers_as_the_bimodal_graph(manifest, monkeypatch):
    """The shipped model's tile encoder runs while frames arrive, only its fusion after the last one, and the
    answer is the bimodal graph's on the same frames; tiles picked only at the end (a later frame's label
    blocked better ones) are encoded then, to the same tokens."""
    rng = np.random.default_rng(14)
    m = simulate_measurement(draw_sample(rng), rng, n_frames=4, frame_size=640, frame_height=480, um_per_px=1.6)
    backend = create_backend("onnxruntime", manifest, {"threads": 1})
    ran = []
    run = backend.run
    monkeypatch.setattr(backend, "run", lambda key, inputs: ran.append(key) or run(key, inputs))
    try:
        predictor = Predictor(manifest, backend)
        builder = predictor.image_builder(m.um_per_px)
        for frame in m.frames:
            builder.add(frame)
        assert set(ran) == {"tile_encoder"}
        streamed = builder.built()
        assert streamed.tile_tokens.shape == (len(streamed.batch),) + manifest.graphs["fusion"].inputs[1].shape[1:]
        ran.clear()
        split = predictor.predict(m.reflectance, m.wavelengths_nm, m.frames, m.um_per_px, streamed,
                                  temperature_c=m.temperature_c)
        assert set(ran) == {"fusion"}
        whole = predictor.predict(m.reflectance, m.wavelengths_nm, m.frames, m.um_per_px,
                                  temperature_c=m.temperature_c)
        assert "bimodal" in ran and not split.signal_only
        assert split.composition == pytest.approx(whole.composition, abs=1e-5)
        assert split.confidence == pytest.approx(whole.confidence, abs=1e-5)
        monkeypatch.setattr(ImageBatchBuilder, "_among_best", lambda self, cut: np.zeros(len(cut.scores), bool))
        late = predictor.image_builder(m.um_per_px)
        for frame in m.frames:
            late.add(frame)
        np.testing.assert_allclose(late.tile_tokens(), streamed.tile_tokens, atol=1e-6)
    finally:
        backend.close()
