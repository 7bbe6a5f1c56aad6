"""`isic-model evaluate`: the shipped model through the station's runtime, beside PLS/SVM, on the same samples.

Every measurement is simulated as the station takes it (the manifest's station settings), then
fed to the station's own `Predictor` (shared preprocessing + ONNX Runtime + fusion over tiles):
once with its frames (bimodal) and once without (the signal-only path), and to each ablation
model found in `ablation/*/manifest.json` beside the manifest. The chemometric baselines are
fitted on spectra drawn with the training seed and preset, and predict the very same evaluation
spectra. Sample i is drawn from the generator seeded (seed, i), so the first k samples of a run
are a k-sample run: a short run reproduces the head of a long one.

Composition MAE is taken over the fibres a sample contains: |predicted - true| averaged over its
1-3 fibres, then over samples (`mae_all_fibres` averages over all fibres of the set instead).
`mae_per_fibre[f]` is over the samples that contain f, `mae_per_blend[b]` over the samples of
blend b (every binary blend; the seed's table shows four of them).

Measurements are taken with the station's settings by default (`station_settings`: the demo
bench's config, i.e. the camera's frame size and µm/px, its frames per measurement and co-adding,
and the sample's QR label in every frame, exactly what `isic-station bench accuracy` measures);
`--config` takes a station's own config, `--training-settings` the settings training used.
`--seeds A,B,C` pools the seeds' results: accuracy and MAE with 95 % confidence intervals
(`isic_station.tools.bench.scoring`, the scoring `bench accuracy` uses), each seed's figures beside.

`counting_limit` puts the model beside a perfect fibre counter of the very same frames: the
composition estimated from the true number of fibres of each type in them (see `counting_limit.py`),
the floor an image reader cannot beat with these frames, whatever its network.
"""

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
from tqdm import tqdm

from isic_drivers.lab.sample import parse_overrides
from isic_model.baselines import BASELINE_SAVGOL, baseline_spectrum_params, fit_baselines
from isic_model.counting_limit import CountingOracle
from isic_model.data import StationSettings, generate_spectra
from isic_model.manifest_doc import editing_manifest
from isic_model.measuring_settings import station_settings, training_settings
from isic_model.scoring import composition_figures
from isic_model.uncertainty_figures import interval_figures
from isic_station.inference import create_backend
from isic_station.inference.predictor import Predictor
from isic_station.manifest import load_manifest
from isic_station.preprocess.spectrum import preprocess_spectra
from isic_station.tools.bench.scoring import figures_line, pooled_figures, score_result

log = logging.getLogger(__name__)

# The seed talk's binary blends, spelled as the lab's labels (fibre-set order).
SEED_BLENDS = ("cotton/linen", "cotton/polyester", "polyester/nylon", "viscose/nylon")
ABLATION_ORDER = ("signal", "image", "rg", "isica", "full")
ABLATION_NAMES = {
    "signal": "ISiC-Net (signal)",
    "image": "+ image",
    "rg": "+ image + RG",
    "isica": "+ image + RG + ISiCA",
    "full": "+ image + RG + ISiCA + REC",
}


def method_figures(
    pred: np.ndarray, blends: Sequence[str], truth: np.ndarray, labels: Sequence[str], fibres: Sequence[str]
) -> Dict[str, Any]:
    """Accuracy plus the composition figures of one method."""
    accuracy = float(np.mean([p == t for p, t in zip(blends, labels)]))
    return dict({"accuracy": round(accuracy, 4)}, **composition_figures(pred, truth, labels, fibres))


class _Runner:
    """One model's Predictor over ONNX Runtime; collects compositions and blend labels. Without
    `room_sensor` the model is given no room temperature, as at a station whose sensor reads nothing;
    `settings` pick the calibration's confidence profile as a station measuring with them gets it."""

    def __init__(self, manifest_path: Path, room_sensor: bool = True,
                 settings: Optional[StationSettings] = None) -> None:
        self.manifest = load_manifest(manifest_path)
        self.room_sensor = room_sensor
        self.predictor = Predictor(self.manifest, create_backend("onnxruntime", self.manifest, {"threads": 2}),
                                   measuring=None if settings is None else asdict(settings))
        self.compositions: List[np.ndarray] = []
        self.blends: List[str] = []
        self.predictions: List[Any] = []

    def add(self, measurement: Any, with_frames: bool) -> None:
        frames = measurement.frames if with_frames else None
        p = self.predictor.predict(measurement.reflectance, measurement.wavelengths_nm, frames, measurement.um_per_px,
                                   temperature_c=measurement.temperature_c if self.room_sensor else None)
        self.compositions.append(np.array([p.composition[f] for f in self.manifest.fibres]))
        self.blends.append(p.blend)
        self.predictions.append(p)

    def figures(self, truth: np.ndarray, labels: Sequence[str]) -> Dict[str, Any]:
        figures = method_figures(np.stack(self.compositions), self.blends, truth, labels, self.manifest.fibres)
        figures.update(interval_figures(self.predictions, truth, labels, self.manifest.fibres))
        return figures

    def close(self) -> None:
        self.predictor.backend.close()


def _baselines(
    manifest: Any,
    reflectance: np.ndarray,
    axis: np.ndarray,
    truth: np.ndarray,
    labels: Sequence[str],
    settings: StationSettings,
) -> Dict[str, Any]:
    training = manifest.raw["training"]
    fibres, classes = list(manifest.fibres), list(manifest.blend_classes)
    train = generate_spectra(
        int(training["seed"]), int(training["samples"]), training["preset"], settings, fibres, classes
    )
    params = baseline_spectrum_params(manifest.spectrum)
    fitted = fit_baselines(
        preprocess_spectra(train.reflectance, train.wavelengths_nm, params),
        train.composition,
        train.labels,
        len(classes),
    )
    x = preprocess_spectra(reflectance, axis, params)
    pls = composition_figures(fitted.composition(x), truth, labels, fibres)
    return {
        "pls": dict(pls, components=fitted.pls_components),
        "svm": {
            "accuracy": round(float(np.mean([classes[i] == t for i, t in zip(fitted.svm_classes(x), labels)])), 4),
            "C": fitted.svm_c,
        },
        "plsda": {
            "accuracy": round(float(np.mean([classes[i] == t for i, t in zip(fitted.plsda_classes(x), labels)])), 4),
            "components": fitted.plsda_components,
        },
        "train_samples": len(train),
        "preprocessing": "absorbance, SNV, Savitzky-Golay window {window} order {polyorder} derivative {deriv}".format(
            **BASELINE_SAVGOL
        ),
    }


def run_evaluation(
    manifest_path: Path,
    seed: int,
    samples: int,
    preset: str = "default",
    overrides: Optional[Mapping[str, float]] = None,
    baselines: bool = True,
    ablation: bool = True,
    progress: bool = True,
    settings: Optional[StationSettings] = None,
    scores: Optional[List[Dict[str, Any]]] = None,
    unknown_fibres: Sequence[str] = (),
    room_sensor: bool = True,
) -> Dict[str, Any]:
    """The evaluation figures (the object `evaluate --json` prints) with `settings` (default: training's).

    `scores`, when given, receives one `score_result` per measurement of the bimodal model. Without
    `room_sensor` the models are scored as at a station without a room temperature reading.
    """
    manifest_path = Path(manifest_path)
    if manifest_path.is_dir():
        manifest_path = manifest_path / "manifest.json"
    settings = settings or training_settings(load_manifest(manifest_path))
    main = _Runner(manifest_path, room_sensor, settings)
    signal = _Runner(manifest_path, room_sensor, settings)
    manifest = main.manifest
    fibres = list(manifest.fibres)
    variants: Dict[str, _Runner] = {}
    if ablation:
        for name in ABLATION_ORDER[:-1]:
            path = manifest_path.parent / "ablation" / name / "manifest.json"
            if path.is_file():
                variants[name] = _Runner(path, room_sensor, settings)

    counter = CountingOracle(fibres, preset)
    truths, labels, reflectances = [], [], []
    axis = None
    start = time.perf_counter()
    try:
        for i in tqdm(range(samples), desc=f"evaluate seed {seed}", unit="meas", disable=not progress, file=sys.stderr):
            m = settings.measure(np.random.default_rng([seed, i]), preset, overrides, fibres)
            truths.append(m.truth.composition)
            labels.append(m.truth.blend)
            reflectances.append(m.reflectance)
            axis = m.wavelengths_nm
            counter.add(m.truth.sample.composition, m.truth.frame_counts)
            main.add(m, with_frames=True)
            signal.add(m, with_frames=False)
            for runner in variants.values():
                runner.add(m, with_frames=True)
    finally:
        for runner in [main, signal, *variants.values()]:
            runner.close()
    truth = np.stack(truths)
    run_scores = [  # each measurement its own piece of fabric, so that pooled coverage is bootstrapped by piece
        score_result(dict(zip(fibres, comp)), p.blend, dict(zip(fibres, true)), label, confidence=p.confidence,
                     interval_95=p.interval_95, sample=f"{seed}/{i}")
        for i, (comp, p, true, label) in enumerate(zip(main.compositions, main.predictions, truth, labels))
    ]
    if scores is not None:
        scores.extend(run_scores)
    pooled = pooled_figures(run_scores)
    result: Dict[str, Any] = {
        "model": f"{manifest.name} {manifest.version}",
        "preset": preset,
        "seed": seed,
        "samples": samples,
        "overrides": dict(overrides or {}),
        "settings": asdict(settings),
        "room_sensor": room_sensor,
        "confidence_profile": (None if main.predictor.calibration is None or main.predictor.calibration.profile is None
                               else main.predictor.calibration.profile["station"]),
        "n": pooled["n"],
        "accuracy_ci95": pooled["accuracy_ci95"],
        "mae_ci95": pooled["mae_ci95"],
    }
    if "coverage_95_ci95" in pooled:
        result["coverage_95_ci95"] = pooled["coverage_95_ci95"]
    result.update(main.figures(truth, labels))
    result["signal_only"] = signal.figures(truth, labels)
    result["counting_limit"] = counter.figures(truth, labels)
    if variants:
        result["ablation"] = {name: runner.figures(truth, labels) for name, runner in variants.items()}
        result["ablation"]["full"] = main.figures(truth, labels)
    if baselines:
        # fitted on training-seed spectra as training measured them, whatever the evaluation's settings
        result["baselines"] = _baselines(manifest, np.stack(reflectances), axis, truth, labels,
                                         training_settings(manifest))
        result["mae_ratio_to_pls"] = round(result["mae"] / max(result["baselines"]["pls"]["mae"], 1e-9), 3)
    if unknown_fibres:
        from isic_model.uncertainty_figures import unknown_fibre_figures

        result["unknown_fibre"] = unknown_fibre_figures(manifest_path, seed, samples, preset, unknown_fibres,
                                                        main.predictions, progress, settings, room_sensor)
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def run_seeds(manifest_path: Path, seeds: Sequence[int], samples: int, **options: Any) -> Dict[str, Any]:
    """`run_evaluation` on each seed, pooled: n, accuracy, MAE (with 95 % CIs), MAE per blend and, with a
    calibrated model, coverage_95 (its 95 % CI by piece), median interval width and ECE over every seed's
    results, then each seed's own figures under `per_seed`."""
    scores: List[Dict[str, Any]] = []
    per_seed = [run_evaluation(manifest_path, seed, samples, scores=scores, **options) for seed in seeds]
    first = per_seed[0]
    result: Dict[str, Any] = {key: first[key] for key in ("model", "preset", "overrides", "settings", "room_sensor",
                                                          "confidence_profile")}
    result.update(seeds=list(seeds), samples_per_seed=samples, **pooled_figures(scores))
    result["per_seed"] = per_seed
    result["seconds"] = round(sum(r["seconds"] for r in per_seed), 1)
    return result


def format_pooled(result: Mapping[str, Any], fibres: Sequence[str]) -> str:
    """The pooled figures over seeds, then each seed's table."""
    lines = [f"{result['model']}: preset {result['preset']}, seeds {','.join(map(str, result['seeds']))}, "
             f"{result['samples_per_seed']} measurements each, station settings {result['settings']}",
             "pooled ISiC-Net (bimodal): " + figures_line(result),
             "per seed: " + "; ".join(f"{r['seed']}: {100 * r['accuracy']:.1f} % / MAE {r['mae']:.4f}"
                                      for r in result["per_seed"]), ""]
    lines += [format_table(r, fibres) + "\n" for r in result["per_seed"]]
    return "\n".join(lines)


def _cell(value: Optional[float], width: int, scale: float = 1.0, digits: int = 3) -> str:
    return f"{'-':>{width}}" if value is None else f"{scale * value:{width}.{digits}f}"


def _row(name: str, fig: Mapping[str, Any], fibres: Sequence[str], accuracy: Optional[float] = None) -> str:
    cells = [f"{name:<36}", _cell(fig.get("accuracy", accuracy), 6, 100.0, 1), _cell(fig["mae"], 6)]
    cells += [_cell(fig["mae_per_fibre"].get(f), 9) for f in fibres]
    cells += [_cell(fig["mae_per_blend"].get(b), 15) for b in SEED_BLENDS]
    return " ".join(cells)


def format_table(result: Mapping[str, Any], fibres: Sequence[str]) -> str:
    """The seed's layout: accuracy, MAE, MAE per fibre, MAE per binary blend; one row per method."""
    head = [f"{'method':<36}", f"{'acc %':>6}", f"{'MAE':>6}"] + [f"{f:>9}" for f in fibres]
    head += [f"{b:>15}" for b in SEED_BLENDS]
    lines = [
        f"{result['model']}: preset {result['preset']}, seed {result['seed']}, {result['samples']} measurements"
        + (f", overrides {result['overrides']}" if result["overrides"] else "")
        + (f"; ISiC-Net {figures_line(result)}" if "accuracy_ci95" in result else ""),
        " ".join(head),
        _row("ISiC-Net (bimodal)", result, fibres),
        _row("ISiC-Net signal-only path", result["signal_only"], fibres),
    ]
    for name, fig in result.get("ablation", {}).items():
        lines.append(_row("ablation " + ABLATION_NAMES[name], fig, fibres))
    base = result.get("baselines")
    if base:
        lines.append(_row(f"PLS ({base['pls']['components']} LV) + SVM", base["pls"], fibres, base["svm"]["accuracy"]))
        lines.append(
            f"{'PLS-DA (' + str(base['plsda']['components']) + ' LV)':<36} {100 * base['plsda']['accuracy']:6.1f}"
        )
        lines.append(f"baselines fitted on {base['train_samples']} training-seed spectra; {base['preprocessing']}")
        lines.append(f"ISiC-Net MAE / PLS MAE = {result['mae_ratio_to_pls']:.2f}")
    limit = result.get("counting_limit")
    if limit:
        lines.append(_row("perfect fibre counter, same frames", limit, fibres))
        lines.append(
            f"fibres in these frames: median {limit['fibres_in_view']['median']:.0f} per measurement; "
            f"{100 * limit['samples_with_a_fibre_type_unseen']:.1f} % of samples show no fibre of some type"
        )
    lines.append("MAE: mean |predicted - true| fraction over the fibres each sample contains; '-': no such samples")
    return "\n".join(lines)


def record_metrics(manifest_path: Path, cfg: Mapping[str, Any], classes: Sequence[str]) -> Dict[str, Any]:
    """Evaluate on the config's held-out seed, write `metrics` and a short check run into the manifest."""
    seed, samples = int(cfg["heldout_seed"]), int(cfg["eval_samples"])
    preset = cfg.get("eval_preset", "default")
    metrics = run_evaluation(manifest_path, seed, samples, preset)
    check = run_evaluation(
        manifest_path, seed, int(cfg["check_samples"]), preset, baselines=False, ablation=False, progress=False
    )
    with editing_manifest(Path(manifest_path)) as doc:
        doc["metrics"] = metrics
        doc["training"]["check_run"] = {
            k: check[k] for k in ("seed", "samples", "preset", "accuracy", "mae", "signal_only")
        }
    print(format_table(metrics, list(doc["fibres"])))
    return metrics


def evaluate_command(args: argparse.Namespace) -> int:
    """Handler of `isic-model evaluate`."""
    path = args.model / "manifest.json" if args.model.is_dir() else args.model
    manifest = load_manifest(path)
    settings = training_settings(manifest) if args.training_settings else station_settings(args.config)
    options = dict(preset=args.preset, overrides=parse_overrides(args.overrides), baselines=not args.no_baselines,
                   ablation=not args.no_ablation, progress=not args.json, settings=settings,
                   unknown_fibres=[f for f in args.unknown_fibres.split(",") if f],
                   room_sensor=not args.no_temperature)
    if args.seeds:
        result = run_seeds(args.model, args.seeds, args.samples, **options)
        text = format_pooled(result, manifest.fibres)
    else:
        result = run_evaluation(args.model, args.seed, args.samples, **options)
        text = format_table(result, manifest.fibres)
    print(json.dumps(result) if args.json else text)
    return 0
