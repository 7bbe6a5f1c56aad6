"""`isic-station bench model`: per-measurement latency of preprocessing and inference, p50 and p99.

Measures what the station does for every measurement after acquisition: spectrum and image
preprocessing, the graph on the chosen backend, and the fusion over tiles (`Predictor.predict`).
Inputs are measurements of the virtual lab (`isic_drivers.lab.simulate_measurement`), generated
before timing starts so only the station's own work is timed.
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

# Distinct virtual-lab measurements cycled through (generating one costs more than predicting it).
DISTINCT_MEASUREMENTS = 16
WARMUP_PREDICTIONS = 5
SEED = 20261121


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
                    "measurements and print p50/p99 in milliseconds: preprocess_ms, infer_ms, total_ms.",
    )
    parser.add_argument("--backend", choices=KINDS, default="auto",
                        help="inference backend (default: auto = acl when pyACL and the .om files are there)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="ONNX Runtime intra-op threads (default: 1)")
    parser.add_argument("--manifest", type=Path, default=None,
                        help="model manifest.json (default: the shipped model)")
    parser.add_argument("--repeats", type=positive_int, default=200,
                        help="measurements timed (default: 200)")
    parser.add_argument("--json", action="store_true",
                        help='print one JSON object: {"backend", "preprocess_ms", "infer_ms", "total_ms"}, '
                             'each timing {"p50", "p99"}')
    parser.set_defaults(handler=run_model_bench)


def _manifest_path(given: Optional[Path]) -> Path:
    if given is not None:
        return given
    from isic_model import SHIPPED_MANIFEST

    if not SHIPPED_MANIFEST.is_file():
        raise ModelError(f"no shipped model at {SHIPPED_MANIFEST} (export one with `isic-model export`), "
                         "or pass --manifest PATH")
    return SHIPPED_MANIFEST


def lab_settings(manifest: Manifest) -> Dict[str, Any]:
    """`simulate_measurement` options for how the model was trained to be used.

    The manifest's `training.station` (frames per measurement, frame size, camera µm/px), when
    training recorded it; otherwise the lab's defaults.
    """
    station = manifest.raw.get("training", {}).get("station", {})
    names = {"n_frames": "n_frames", "frame_px": "frame_size", "camera_um_per_px": "um_per_px", "coadd": "coadd"}
    return {names[key]: value for key, value in station.items() if key in names}


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
    settings = lab_settings(manifest)
    measurements = [simulate_measurement(draw_sample(rng), rng, **settings) for _ in range(count)]
    backend = create_backend(args.backend, manifest, {"threads": args.threads})
    preprocess_ms, infer_ms, total_ms = [], [], []
    try:
        predictor = Predictor(manifest, backend)
        for index in range(-WARMUP_PREDICTIONS, args.repeats):
            m = measurements[index % len(measurements)]
            start = time.perf_counter()
            prediction = predictor.predict(m.reflectance, m.wavelengths_nm, m.frames, m.um_per_px)
            elapsed_ms = (time.perf_counter() - start) * 1000.0
            if index >= 0:
                preprocess_ms.append(prediction.timings_ms["preprocess_ms"])
                infer_ms.append(prediction.timings_ms["infer_ms"])
                total_ms.append(elapsed_ms)
    finally:
        backend.close()
    summary = {
        "backend": backend.name,
        "preprocess_ms": _percentiles(preprocess_ms),
        "infer_ms": _percentiles(infer_ms),
        "total_ms": _percentiles(total_ms),
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    frames = measurements[0].frames
    print(f"bench model: {manifest.name} {manifest.version} on {backend.name} "
          f"({args.threads} thread(s) for onnxruntime), {args.repeats} measurements from the virtual lab "
          f"({len(frames)} frames of {frames[0].shape[1]}x{frames[0].shape[0]} px at "
          f"{measurements[0].um_per_px} µm/px each)")
    for key in ("preprocess_ms", "infer_ms", "total_ms"):
        print(f"  {key:<14} p50 {summary[key]['p50']:9.3f}   p99 {summary[key]['p99']:9.3f}")
    return 0

