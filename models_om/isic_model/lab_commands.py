"""`isic-model dataset | plot-lab | lab-stats`: training data from the virtual lab, and a look at the lab.

`dataset` writes what the trainer reads (npz shards and an index.json); `plot-lab` draws the
pure-fibre spectra and a frame of each fibre so a person can judge whether the lab looks right;
`lab-stats` prints the generator's speed and the spectral distances between the fibres.
"""

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from isic_common.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 256


def _fibre_names(value: Optional[str]) -> Optional[List[str]]:
    return [n.strip() for n in value.split(",") if n.strip()] if value else None


def register(subparsers: "argparse._SubParsersAction") -> None:
    """Add `dataset`, `plot-lab` and `lab-stats`."""
    ds = subparsers.add_parser(
        "dataset", help="write a virtual-lab training set (npz shards + index.json)",
        description="Draw --samples fabric samples from the virtual lab (sample i is drawn from --seed and i "
                    "alone, so a set is reproducible and shards are independent) and write, per sample, the "
                    "co-added raw counts, dark and white references, the station's reflectance, microscope "
                    "frames and the truth (composition, blend, fibre counts per frame, nuisance).")
    ds.add_argument("--samples", type=int, required=True, help="number of samples")
    ds.add_argument("--seed", type=int, required=True, help="seed of the set")
    ds.add_argument("--out", type=Path, required=True, help="output directory (created; must be empty)")
    ds.add_argument("--preset", default="default", help="nuisance preset (default: %(default)s)")
    ds.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V",
                    help="pin one nuisance parameter, e.g. --set humidity=0.9 (repeatable)")
    ds.add_argument("--frames", type=int, default=2, help="microscope frames per sample (default: %(default)s)")
    ds.add_argument("--frame-size", type=int, default=256, help="frame width = height in px (default: %(default)s)")
    ds.add_argument("--um-per-px", type=float, default=0.8, help="microscope scale (default: %(default)s)")
    ds.add_argument("--coadd", type=int, default=8, help="scans averaged per spectrum (default: %(default)s)")
    ds.add_argument("--fibres", help="comma-separated fibre set (default: the station's five from fibres.json)")
    ds.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                    help="samples per npz shard (default: %(default)s)")
    ds.set_defaults(handler=_dataset)

    plot = subparsers.add_parser(
        "plot-lab", help="draw the pure-fibre spectra and a frame of each fibre (PNG)",
        description="Draw the pure-fibre absorbance spectra on the station's InGaAs 900-1700 nm axis (as the "
                    "station measures them) and on 900-2500 nm, and one microscope frame of each fibre.")
    plot.add_argument("--out", type=Path, required=True, help="PNG file to write")
    plot.add_argument("--all-fibres", action="store_true", help="every fibre of fibres.json, not just the station's")
    plot.add_argument("--seed", type=int, default=0, help="seed of the example frames (default: %(default)s)")
    plot.set_defaults(handler=_plot_lab)

    stats = subparsers.add_parser(
        "lab-stats", help="print the lab's speed and the spectral distance matrix of the fibres",
        description="Measure on this machine (one core) how many spectra, 256x256 frames and whole "
                    "measurements the lab generates per second, and print the RMS distance between the "
                    "SNV absorbance spectra of the pure fibres on 900-1700 and 900-2500 nm.")
    stats.add_argument("--seconds", type=float, default=3.0, help="time spent on each speed figure")
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.set_defaults(handler=_lab_stats)


def _dataset(args: argparse.Namespace) -> int:
    from isic_drivers.lab import (
        LAB_VERSION,
        InstrumentModel,
        blend_classes,
        draw_sample,
        simulate_measurement,
    )
    from isic_drivers.lab.fibres import resolve_fibres
    from isic_drivers.lab.sample import NUISANCE_KEYS, parse_overrides

    if args.samples < 1 or args.frames < 0 or args.shard_size < 1:
        raise ConfigError("--samples and --shard-size must be >= 1 and --frames >= 0")
    overrides = parse_overrides(args.overrides)
    fibres = resolve_fibres(_fibre_names(args.fibres))
    draw_sample(np.random.default_rng(0), args.preset, overrides, fibres)  # a bad preset fails before any work
    out: Path = args.out
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out} is not empty; choose a new directory")
    out.mkdir(parents=True, exist_ok=True)
    instrument = InstrumentModel()
    classes = blend_classes(fibres)
    shards: List[Dict[str, Any]] = []
    rows: List[Dict[str, Any]] = []

    def flush() -> None:
        name = f"shard-{len(shards):05d}.npz"
        stacked = {key: np.stack([r[key] for r in rows]) for key in rows[0] if key != "sample_id"}
        np.savez(out / name, wavelengths_nm=instrument.wavelengths_nm.astype(np.float32),
                 sample_id=np.array([r["sample_id"] for r in rows]), **stacked)
        shards.append({"file": name, "first": rows[0]["index"], "samples": len(rows)})
        rows.clear()

    for i in tqdm(range(args.samples), desc="virtual lab", unit="sample"):
        rng = np.random.default_rng([args.seed, i])
        sample = draw_sample(rng, args.preset, overrides, fibres, sample_id=f"S{args.seed}-{i:07d}")
        m = simulate_measurement(sample, rng, instrument, coadd=args.coadd, n_frames=args.frames,
                                 frame_size=args.frame_size, um_per_px=args.um_per_px, fibres=fibres)
        rows.append({
            "index": i,
            "sample_id": sample.sample_id,
            "raw_counts": m.raw_counts.astype(np.float32),
            "dark_counts": m.dark_counts.astype(np.float32),
            "white_counts": m.white_counts.astype(np.float32),
            "reflectance": m.reflectance.astype(np.float32),
            "frames": np.array(m.frames, dtype=np.uint8).reshape(args.frames, args.frame_size, args.frame_size, 3),
            "composition": m.truth.composition,
            "blend": classes.index(m.truth.blend),
            "frame_counts": np.array([[c.get(n, 0) for n in fibres] for c in m.truth.frame_counts],
                                     dtype=np.int16).reshape(args.frames, len(fibres)),
            "nuisance": np.array([getattr(sample.nuisance, k) for k in NUISANCE_KEYS], dtype=np.float32),
        })
        if len(rows) == args.shard_size:
            flush()
    if rows:
        flush()
    index = {
        "lab_version": LAB_VERSION, "seed": args.seed, "preset": args.preset, "overrides": overrides,
        "samples": args.samples, "fibres": list(fibres), "blend_classes": classes,
        "nuisance_keys": list(NUISANCE_KEYS), "frames_per_sample": args.frames, "frame_size": args.frame_size,
        "um_per_px": args.um_per_px, "coadd": args.coadd, "integration_us": instrument.default_integration_us,
        "instrument": {"serial": instrument.serial, "model": instrument.model, "n_pixels": instrument.n_pixels,
                       "wavelength_coeffs": list(instrument.wavelength_coeffs), "adc_max": instrument.adc_max},
        "arrays": {"raw_counts": "[N, L] float32 mean of coadd scans", "dark_counts": "[N, L]",
                   "white_counts": "[N, L]", "reflectance": "[N, L] (S - D) / (W - D)",
                   "frames": "[N, K, H, W, 3] uint8 BGR", "composition": "[N, F] float32 in 'fibres' order",
                   "blend": "[N] index into 'blend_classes'", "frame_counts": "[N, K, F] int16",
                   "nuisance": "[N, P] float32 in 'nuisance_keys' order", "sample_id": "[N] str",
                   "index": "[N] sample number i (drawn from the seed and i alone)",
                   "wavelengths_nm": "[L] float32"},
        "shards": shards,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / "index.json").write_text(json.dumps(index, indent=1), encoding="utf-8")
    log.info("wrote %d samples in %d shards to %s", args.samples, len(shards), out)
    print(f"wrote {args.samples} samples ({len(shards)} shards) to {out}")
    return 0


def _pure_absorbance(names: Sequence[str], wavelengths, instrument=None):
    """Absorbance of each pure fibre in the clean preset: physics, or through the instrument when given."""
    from isic_drivers.lab import Sample, load_fibres, simulate_measurement
    from isic_drivers.lab.sample import draw_nuisance
    from isic_drivers.lab.spectra import absorbance

    clean = draw_nuisance(np.random.default_rng(0), "clean")
    if instrument is None:
        return {n: absorbance(Sample({n: 1.0}, clean), wavelengths) for n in names}
    result = {}
    for n in names:
        m = simulate_measurement(Sample({n: 1.0}, clean), np.random.default_rng(1), instrument, coadd=16,
                                 n_frames=0, fibres=load_fibres())
        result[n] = -np.log10(np.clip(m.reflectance, 1e-4, None))
    return result


def _plot_lab(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import cv2
    import matplotlib.pyplot as plt

    from isic_drivers.lab import InstrumentModel, Sample, load_fibres, render_frame
    from isic_drivers.lab.sample import draw_nuisance

    fibres = load_fibres()
    names = list(fibres) if args.all_fibres else list(fibres.default_names)
    instrument = InstrumentModel()
    station = _pure_absorbance(names, None, instrument)
    wide_axis = np.arange(900.0, 2501.0, 2.0)
    wide = _pure_absorbance(names, wide_axis)
    cols = max(len(names), 2)
    fig = plt.figure(figsize=(2.6 * cols, 9.5))
    grid = fig.add_gridspec(2, cols, height_ratios=[1.5, 1.0])
    left = fig.add_subplot(grid[0, : cols // 2])
    right = fig.add_subplot(grid[0, cols // 2:])
    colours = plt.get_cmap("tab10")
    for i, n in enumerate(names):
        left.plot(instrument.wavelengths_nm, station[n], color=colours(i), label=n)
        right.plot(wide_axis, wide[n], color=colours(i), label=n)
    left.set_title("as the station measures it: InGaAs 900-1700 nm, 256 px\n(counts -> (S-D)/(W-D) -> log10 1/R)")
    right.set_title("extended range 900-2500 nm (lab physics, no instrument)")
    marks = ((1450, "water", "right"), (1490, "cellulose O-H", "left"), (1660, "PET arom. C-H", "right"),
             (1940, "water", "right"), (2015, "ester C=O", "right"), (2100, "cellulose", "left"))
    for ax, hi in ((left, 1700), (right, 2500)):
        for nm, what, side in marks:
            if nm < hi:
                ax.axvline(nm, color="0.8", lw=0.8, zorder=0)
                ax.text(nm, ax.get_ylim()[1], what, rotation=90, va="top", ha=side, fontsize=7, color="0.4")
        ax.set_xlabel("wavelength (nm)")
        ax.set_ylabel("absorbance log10(1/R)")
        ax.legend(fontsize=8, loc="upper left")
    rng = np.random.default_rng(args.seed)
    view = draw_nuisance(np.random.default_rng(args.seed), "clean")
    um_per_px = 0.8
    for i, n in enumerate(names):
        frame, truth = render_frame(Sample({n: 1.0}, view), rng, 256, 256, um_per_px, fibres)
        bar_px = int(round(20.0 / um_per_px))
        cv2.line(frame, (10, 244), (10 + bar_px, 244), (0, 0, 0), 2)
        ax = fig.add_subplot(grid[1, i])
        ax.imshow(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        ax.set_title(f"{n} ({truth.counts[n]} fibres)", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.text(0.01, 0.01, f"frames: 256x256 px at {um_per_px} um/px, scale bar 20 um", fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    plt.close(fig)
    print(f"wrote {args.out}")
    return 0


def _rate(fn, seconds: float) -> Dict[str, float]:
    """Calls per wall-clock second and per CPU second of fn() over about `seconds` (after a warm-up call).

    The CPU figure is what one core delivers even when other work shares the machine.
    """
    fn()
    count, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        fn()
        count += 1
    return {"wall": count / (time.perf_counter() - start), "cpu": count / max(time.process_time() - cpu, 1e-9)}


def _lab_stats(args: argparse.Namespace) -> int:
    import cv2

    from isic_drivers.lab import (
        InstrumentModel,
        draw_sample,
        load_fibres,
        raw_counts,
        render_frame,
        simulate_measurement,
    )
    from isic_drivers.lab.spectra import pure_fibre_distances, reflectance

    cv2.setNumThreads(1)  # one core, as on the board and in a trainer's data worker
    instrument = InstrumentModel()
    rng = np.random.default_rng(0)

    def spectrum() -> None:
        sample = draw_sample(rng)
        r = reflectance(sample, instrument.true_axis(sample.nuisance), rng)
        raw_counts(instrument, r, instrument.default_integration_us, rng, sample.nuisance)

    frame_sample = draw_sample(rng, n_fibres=2)
    figures: Dict[str, Any] = {
        "spectra_per_s": _rate(spectrum, args.seconds),
        "frames_256_per_s": _rate(lambda: render_frame(frame_sample, rng, 256, 256, 0.8), args.seconds),
        "measurements_per_s": _rate(lambda: simulate_measurement(draw_sample(rng), rng, instrument),
                                    args.seconds),
        "measurement": "1 sample: 8 co-added scans + dark and white references (8 each), 4 frames 256x256",
        "load_average_1min": os.getloadavg()[0],
    }
    names = list(load_fibres().default_names)
    figures["fibres"] = names
    for lo, hi in ((900, 1700), (900, 2500)):
        d = pure_fibre_distances(names, np.arange(lo, hi + 1.0, 2.0))
        figures[f"snv_rms_distance_{lo}_{hi}"] = np.round(d, 3).tolist()
    if args.json:
        print(json.dumps(figures))
        return 0
    rows = (("spectra (draw sample + reflectance + raw counts)", "spectra_per_s"),
            ("microscope frames 256x256 at 0.8 um/px", "frames_256_per_s"),
            ("whole measurements (" + figures["measurement"] + ")", "measurements_per_s"))
    print(f"one core (cv2 threads = 1); machine load average {figures['load_average_1min']:.1f}")
    for label, key in rows:
        print(f"{label}: {figures[key]['wall']:.1f} /s wall clock, {figures[key]['cpu']:.1f} /s per CPU second")
    for lo, hi in ((900, 1700), (900, 2500)):
        print(f"\nRMS distance of SNV absorbance, pure fibres, {lo}-{hi} nm:")
        print(" " * 10 + "".join(f"{n:>10s}" for n in names))
        for n, row in zip(names, figures[f"snv_rms_distance_{lo}_{hi}"]):
            print(f"{n:>10s}" + "".join(f"{v:10.3f}" for v in row))
    return 0
