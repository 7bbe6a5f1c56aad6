"""`isic-station bench camera`: frames per second through capture + quality gate + model input building.

Measured on two sources: the virtual microscope (capture includes the lab's rendering) and a video
file written from its frames with OpenCV's MJPG encoder and decoded back (capture = real decoding).
Every `frames_per_measurement` frames that passed the gate are built into one model input batch,
as a measurement would; the image parameters come from the shipped model's manifest.
Separately, the cost of one sample-label (QR) read on labelled virtual frames.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping

import numpy as np

from isic_common.errors import ModelError, StationError
from isic_model import SHIPPED_MANIFEST
from isic_station.manifest import load_manifest

LABEL_FRAMES = 20


def register(subparsers: "argparse._SubParsersAction") -> None:
    """Add `bench camera`."""
    parser = subparsers.add_parser(
        "camera",
        help="frames/s through capture + quality gate + model input, on the virtual microscope and a video file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--frames", type=int, default=200, help="frames per source (default 200)")
    parser.add_argument("--width", type=int, default=640, help="frame width in pixels (default 640)")
    parser.add_argument("--height", type=int, default=480, help="frame height in pixels (default 480)")
    parser.add_argument("--um-per-px", type=float, default=1.0, help="camera micrometres per pixel (default 1.0)")
    parser.add_argument("--frames-per-measurement", type=int, default=4,
                        help="passing frames built into one model input (default 4)")
    parser.add_argument("--manifest", default="", help="model manifest for the image parameters "
                        "(default: the shipped model's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(handler=run)


def _image_params(manifest_path: str) -> Mapping[str, Any]:
    """The manifest's `image` object: the given manifest's, else the shipped model's."""
    if manifest_path:
        return load_manifest(manifest_path).image

    if not SHIPPED_MANIFEST.is_file():
        raise ModelError(f"no shipped model manifest at {SHIPPED_MANIFEST}: export a model "
                         "(isic-model export) or pass --manifest PATH")
    return load_manifest(SHIPPED_MANIFEST).image


def _measure(camera: Any, frames: int, per_measurement: int, um_per_px: float,
             params: Mapping[str, Any]) -> Dict[str, Any]:
    """Run `frames` frames through read -> gate -> input building; mean milliseconds per frame of each."""
    from isic_station.acquisition.quality_gate import QualityGate
    from isic_station.preprocess.image import build_image_input

    gate = QualityGate()
    capture_s = gate_s = input_s = 0.0
    pending: List[Any] = []
    measurements = read = 0
    started = time.perf_counter()
    while read < frames:
        t0 = time.perf_counter()
        frame = camera.read()
        t1 = time.perf_counter()
        if frame is None:
            raise StationError(f"camera {camera.source} ended after {read} of {frames} frames")
        quality = gate.assess(frame.image)
        t2 = time.perf_counter()
        read += 1
        if quality.passed:
            pending.append(frame.image)
        if len(pending) == per_measurement:
            build_image_input(pending, um_per_px, params)
            measurements += 1
            pending = []
        capture_s, gate_s, input_s = capture_s + t1 - t0, gate_s + t2 - t1, input_s + time.perf_counter() - t2
    elapsed = time.perf_counter() - started
    counts = gate.counts()
    return {
        "fps": round(frames / elapsed, 1),
        "capture_ms": round(1000 * capture_s / frames, 2),
        "gate_ms": round(1000 * gate_s / frames, 2),
        "input_ms": round(1000 * input_s / frames, 2),
        "frames_passed": counts["passed"],
        "measurements": measurements,
    }


def _virtual_source(folder: Path) -> str:
    """The virtual microscope on one fixed sample (line 1's first, on a stage file in `folder`).

    Its own line follows the wall clock: which sample it shows, and so whether every frame passes the
    quality gate (`frames_passed`), would depend on the time of day.
    """
    from isic_drivers.lab.stage import ProductionLine, SampleStage

    stage = SampleStage(folder / "stage.json")
    stage.put_sample(ProductionLine(1, 1.0).sample(0))
    return f"virtual:?seed=1&stage={stage.path}"


def _write_video(path: Path, source: str, frames: int, width: int, height: int, um_per_px: float) -> None:
    import cv2

    from isic_drivers.camera import CameraSource

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (width, height))
    if not writer.isOpened():
        raise StationError(f"OpenCV cannot write an MJPG video to {path}")
    with CameraSource(source, width=width, height=height, um_per_px=um_per_px) as virtual:
        for frame in virtual.frames(limit=frames):
            writer.write(frame.image)
    writer.release()


def _measure_label_reads(frames: int, width: int, height: int, um_per_px: float) -> Dict[str, Any]:
    """Milliseconds per sample-label read on frames drawn as the virtual microscope draws them, each of
    the next sample of line 1 with its printed QR label.

    One sample per frame and no clock: the virtual microscope's own line follows the wall clock, so
    its frames would all show whichever sample is current, and whether that one label reads at a
    small frame size (its modules shrink to fit) would decide `ids_read` by the time of day.
    """
    from isic_drivers.emulators.microscope import label_decorator
    from isic_drivers.lab import render_frame
    from isic_drivers.lab.stage import ProductionLine
    from isic_station.acquisition.sample_label import SampleLabelReader

    reader = SampleLabelReader(every_n=1)
    line, rng = ProductionLine(1, 1.0), np.random.default_rng(1)
    images = []
    for index in range(frames):
        sample = line.sample(index)
        image, _truth = render_frame(sample, rng, width, height, um_per_px,
                                     decorate=label_decorator(str(sample.sample_id)))
        images.append(image)
    started = time.perf_counter()
    found = sum(reader.read(image) is not None for image in images)
    elapsed = time.perf_counter() - started
    return {"frames": len(images), "ms_per_read": round(1000 * elapsed / len(images), 2), "ids_read": found}


def run(args: argparse.Namespace) -> int:
    """Measure both sources and print the figures."""
    from isic_drivers.camera import CameraSource

    if args.frames < 1 or args.frames_per_measurement < 1:
        raise StationError("--frames and --frames-per-measurement must be at least 1")
    params = _image_params(args.manifest)
    results: Dict[str, Dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="isic-bench-camera-") as folder:
        source = _virtual_source(Path(folder))
        with CameraSource(source, width=args.width, height=args.height, um_per_px=args.um_per_px) as camera:
            results["virtual"] = _measure(camera, args.frames, args.frames_per_measurement, args.um_per_px, params)
        video = Path(folder) / "virtual.avi"
        _write_video(video, source, args.frames, args.width, args.height, args.um_per_px)
        with CameraSource(str(video)) as camera:
            results["video_mjpg"] = _measure(camera, args.frames, args.frames_per_measurement,
                                             args.um_per_px, params)
    label = _measure_label_reads(min(args.frames, LABEL_FRAMES), args.width, args.height, args.um_per_px)
    report = {
        "frames": args.frames,
        "width": args.width,
        "height": args.height,
        "um_per_px": args.um_per_px,
        "frames_per_measurement": args.frames_per_measurement,
        "image": dict(params),
        "sources": results,
        "sample_label": label,
    }
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"camera bench: {args.frames} frames of {args.width}x{args.height} at {args.um_per_px} µm/px per source, "
          f"model input every {args.frames_per_measurement} passing frames (tiles {params['tile_px']} px "
          f"at {params['um_per_px']} µm/px, {params['tiles_per_measurement']} per graph run, up to "
          f"{max(params.get('max_tiles', 0), params['tiles_per_measurement'])} per measurement)")
    for name, figures in results.items():
        print(f"  {name:10s} {figures['fps']:7.1f} frames/s   capture {figures['capture_ms']:6.2f} ms  "
              f"gate {figures['gate_ms']:5.2f} ms  input {figures['input_ms']:5.2f} ms per frame  "
              f"({figures['frames_passed']} passed the gate, {figures['measurements']} inputs built)")
    print(f"  sample label (QR) read: {label['ms_per_read']:.2f} ms per frame, {label['ids_read']} of "
          f"{label['frames']} labelled frames read (run on every Nth frame only; not in the frames/s above)")
    return 0
