"""`isic-station bench model`: per-measurement CPU of preprocessing and inference, p50 and p99.

Measures what the station does for every measurement, as the station does it: each frame goes into
the predictor's `ImageBatchBuilder` as it arrives (cut, masked, scored, its usable tiles counted by
the counter graph), then after the last frame: that frame's share, the spectrum preprocessing, the
bimodal graph and the fusion (`Predictor.predict` with the built input). `after_last_frame_ms` is what
the user waits for beyond acquisition, `total_ms` all of it per measurement (`frames_ms`: the work
done while later frames were still arriving). Inputs are measurements of the virtual lab
(`isic_drivers.lab.simulate_measurement`) with the manifest's station settings (or `--settings`, as
`bench pipeline` takes them: `config/settings/production-settings.toml`), generated before timing starts
so only the station's own work is timed.
"""

import argparse
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from isic_common.errors import ModelError
from isic_common.percentile import percentile
from isic_station.inference.registry import KINDS
from isic_station.manifest import Manifest, load_manifest
from isic_station.tools.bench.pipeline import load_settings

# Distinct virtual-lab measurements cycled through (generating one costs more than predicting it).
DISTINCT_MEASUREMENTS = 16
WARMUP_PREDICTIONS = 5
SEED = 20261121
# The JSON keys, each {p50, p99} in ms: after_last_frame_ms + frames_ms = total_ms; preprocess_ms and
# infer_ms are the predictor's own split of the work after the last frame (spectrum, bimodal graph).
TIMINGS = ("after_last_frame_ms", "total_ms", "frames_ms", "preprocess_ms", "infer_ms")


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def register(subparsers: "argparse._SubParsersAction") -> None:
    """Add `bench model`."""
    parser = subparsers.add_parser(
        "model",
        help="latency of preprocessing + inference per measurement (p50/p99)",
        description="Time preprocessing and inference for one measurement at a time on virtual-lab "
                    "measurements (the model's station settings: frames, frame size, camera scale, scans) and "
                    "print p50/p99 in milliseconds: after_last_frame_ms (what the user waits for after the last "
                    "frame), total_ms (all work per measurement), frames_ms (the part done while frames arrive), "
                    "preprocess_ms and infer_ms (after the last frame: spectrum, bimodal graph).",
    )
    parser.add_argument("--backend", choices=KINDS, default="auto",
                        help="inference backend (default: auto = acl when pyACL and the .om files are there)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="ONNX Runtime intra-op threads (default: 1)")
    parser.add_argument("--manifest", type=Path, default=None,
                        help="model manifest.json (default: the shipped model)")
    parser.add_argument("--repeats", type=positive_int, default=200,
                        help="measurements timed (default: 200)")
    parser.add_argument("--settings", type=Path, metavar="TOML",
                        help="measurement settings from this file's [spectrometer] and [camera] tables (as bench "
                             "pipeline takes them), e.g. config/settings/production-settings.toml (16 scans, 16 "
                             "frames of 640x480); default: the manifest's station settings")
    parser.add_argument("--json", action="store_true",
                        help='print one JSON object: {"backend", "after_last_frame_ms", "total_ms", "frames_ms", '
                             '"preprocess_ms", "infer_ms", "settings"}, each timing {"p50", "p99"}')
    parser.set_defaults(handler=run_model_bench)


def _manifest_path(given: Optional[Path]) -> Path:
    if given is not None:
        return given
    from isic_model import SHIPPED_MANIFEST

    if not SHIPPED_MANIFEST.is_file():
        raise ModelError(f"no shipped model at {SHIPPED_MANIFEST} (export one with `isic-model export`), "
                         "or pass --manifest PATH")
    return SHIPPED_MANIFEST


# `--settings` keys (table, key) -> `simulate_measurement` options
SETTINGS_OPTIONS = {("camera", "frames_per_measurement"): "n_frames", ("camera", "width"): "frame_size",
                    ("camera", "height"): "frame_height", ("camera", "um_per_px"): "um_per_px",
                    ("spectrometer", "coadd"): "coadd"}


def lab_settings(manifest: Manifest, settings: Optional[Dict[str, Dict[str, Any]]] = None) -> Dict[str, Any]:
    """`simulate_measurement` options for how the model was trained to be used, or as `settings` say.

    The manifest's `training.station` (frames per measurement, frame size, camera µm/px), when
    training recorded it; otherwise the lab's defaults; then the keys `settings` (`load_settings`) hold.
    """
    station = manifest.raw.get("training", {}).get("station", {})
    names = {"n_frames": "n_frames", "frame_px": "frame_size", "frame_height": "frame_height",
             "camera_um_per_px": "um_per_px", "coadd": "coadd"}
    options = {names[key]: value for key, value in station.items() if key in names and value is not None}
    given = settings or {}
    for (table, key), option in SETTINGS_OPTIONS.items():
        if key in given.get(table, {}):
            options[option] = given[table][key]
    return options


def _percentiles(values_ms: List[float]) -> Dict[str, float]:
    return {"p50": round(float(percentile(values_ms, 50)), 4), "p99": round(float(percentile(values_ms, 99)), 4)}


def run_model_bench(args: argparse.Namespace) -> int:
    """Time `args.repeats` predictions and print the p50/p99 figures."""
    from isic_drivers.lab import draw_sample, simulate_measurement
    from isic_station.inference.predictor import Predictor
    from isic_station.inference.registry import create_backend

    manifest = load_manifest(_manifest_path(args.manifest))
    rng = np.random.default_rng(SEED)
    count = min(args.repeats, DISTINCT_MEASUREMENTS)
    settings = lab_settings(manifest, load_settings(args.settings) if args.settings else None)
    measurements = [simulate_measurement(draw_sample(rng), rng, **settings) for _ in range(count)]
    backend = create_backend(args.backend, manifest, {"threads": args.threads})
    timings: Dict[str, List[float]] = {key: [] for key in TIMINGS}
    try:
        predictor = Predictor(manifest, backend)
        for index in range(-WARMUP_PREDICTIONS, args.repeats):
            m = measurements[index % len(measurements)]
            builder = predictor.image_builder(m.um_per_px)
            start = time.perf_counter()
            for frame in m.frames[:-1]:
                builder.add(frame)
            last = time.perf_counter()
            builder.add(m.frames[-1])
            prediction = predictor.predict(m.reflectance, m.wavelengths_nm, m.frames, m.um_per_px,
                                           builder.built(), temperature_c=m.temperature_c)
            end = time.perf_counter()
            if index >= 0:
                timings["frames_ms"].append((last - start) * 1000.0)
                timings["after_last_frame_ms"].append((end - last) * 1000.0)
                timings["total_ms"].append((end - start) * 1000.0)
                timings["preprocess_ms"].append(prediction.timings_ms["preprocess_ms"])
                timings["infer_ms"].append(prediction.timings_ms["infer_ms"])
    finally:
        backend.close()
    frames = measurements[0].frames
    summary: Dict[str, Any] = {"backend": backend.name}
    summary.update({key: _percentiles(values) for key, values in timings.items()})
    summary["settings"] = {"frames": len(frames), "frame_px": [frames[0].shape[1], frames[0].shape[0]],
                           "camera_um_per_px": measurements[0].um_per_px, "coadd": measurements[0].coadd,
                           "counter": "counter" in manifest.graphs}
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"bench model: {manifest.name} {manifest.version} on {backend.name} "
          f"({args.threads} thread(s) for onnxruntime), {args.repeats} measurements from the virtual lab "
          f"({len(frames)} frames of {frames[0].shape[1]}x{frames[0].shape[0]} px at "
          f"{measurements[0].um_per_px} µm/px each)")
    for key in TIMINGS:
        print(f"  {key:<20} p50 {summary[key]['p50']:9.3f}   p99 {summary[key]['p99']:9.3f}")
    return 0
