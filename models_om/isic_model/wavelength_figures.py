"""`isic-model wavelength-shift`: what a shifted wavelength axis costs, before and after the wavelength check.

For each `--shift` the virtual instrument's axis is moved by that many nm for everything it measures:
the wavelength reference tile is measured as the station does (dark, white and tile, co-added as the
station co-adds) and the station's own `wavelength_check.fit_offset` fits the offset; then the same held-out samples
(seed, preset; the demo bench's station settings) are answered by the station's Predictor on the
reported axis (uncorrected) and on the corrected one (reported + fitted offset).
"""

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Dict, Sequence

import numpy as np
from tqdm import tqdm

from isic_drivers.reflectance import reflectance_from_counts
from isic_model import SHIPPED_MANIFEST
from isic_station.acquisition.wavelength_check import fit_offset
from isic_station.manifest import load_manifest


def fitted_offset(shift_nm: float, settings: Any, seed: int) -> float:
    """The station's fit of the axis offset from the lab's wavelength tile on an instrument shifted by `shift_nm`."""
    from isic_drivers.lab.instrument import InstrumentModel
    from isic_drivers.lab.measurement import scan_counts
    from isic_drivers.lab.sample import Nuisance
    from isic_drivers.lab.stage import ReferenceTile
    from isic_drivers.lab.wavelength_standard import CERTIFIED_BANDS_NM

    instrument = InstrumentModel()
    rng = np.random.default_rng(seed)
    state = dataclasses.replace(Nuisance(), wavelength_shift_nm=shift_nm)
    integration = settings.integration_us or instrument.default_integration_us

    def counts(kind: str) -> np.ndarray:
        return np.mean([scan_counts(instrument, ReferenceTile(kind), integration, rng, state).astype(float)
                        for _ in range(settings.coadd)], axis=0)

    tile = reflectance_from_counts(counts("wavelength"), counts("dark"), counts("white"))
    return fit_offset(tile, instrument.wavelengths_nm, CERTIFIED_BANDS_NM).offset_nm


def shift_figures(manifest_path: Path, shifts: Sequence[float], seed: int, samples: int, preset: str,
                  progress: bool = True, settings: Any = None) -> Dict[str, Any]:
    """{shift: {fitted_offset_nm, accuracy_uncorrected, accuracy_corrected, mae_...}} over `samples`
    measured with `settings` (default: the demo bench's station settings)."""
    from isic_model.measuring_settings import station_settings
    from isic_station.inference import create_backend
    from isic_station.inference.predictor import Predictor

    manifest = load_manifest(manifest_path)
    settings = settings or station_settings()
    predictor = Predictor(manifest, create_backend("onnxruntime", manifest, {"threads": 2}))
    fibres = list(manifest.fibres)
    out: Dict[str, Any] = {"model": f"{manifest.name} {manifest.version}", "seed": seed, "samples": samples,
                           "preset": preset, "settings": dataclasses.asdict(settings), "shifts": {}}
    try:
        for shift in shifts:
            offset = fitted_offset(shift, settings, seed)
            hits = {"uncorrected": [], "corrected": []}
            errors = {"uncorrected": [], "corrected": []}
            for i in tqdm(range(samples), desc=f"shift {shift:+g} nm", disable=not progress, file=sys.stderr):
                m = settings.measure(np.random.default_rng([seed, i]), preset, {"wavelength_shift_nm": shift}, fibres)
                present = m.truth.composition > 0
                for name, axis in (("uncorrected", m.wavelengths_nm), ("corrected", m.wavelengths_nm + offset)):
                    p = predictor.predict(m.reflectance, axis, m.frames, m.um_per_px, temperature_c=m.temperature_c)
                    hits[name].append(p.blend == m.truth.blend)
                    pred = np.array([p.composition[f] for f in fibres])
                    errors[name].append(float(np.abs(pred - m.truth.composition)[present].mean()))
            out["shifts"][f"{shift:g}"] = dict(
                fitted_offset_nm=offset,
                **{f"accuracy_{k}": round(float(np.mean(v)), 4) for k, v in hits.items()},
                **{f"mae_{k}": round(float(np.mean(v)), 4) for k, v in errors.items()},
            )
    finally:
        predictor.backend.close()
    return out


def register(sub: "argparse._SubParsersAction") -> None:
    """Add `wavelength-shift` to the `isic-model` parser."""
    p = sub.add_parser(
        "wavelength-shift",
        help="accuracy under a shifted wavelength axis, uncorrected and after the station's wavelength check",
        description="Shift the virtual instrument's axis, fit the offset from the wavelength reference tile as "
        "`calibrate wavelength` does, and answer the same held-out samples on the reported and the corrected axis.",
    )
    p.add_argument("--model", type=Path, default=SHIPPED_MANIFEST, help="manifest.json or its folder")
    p.add_argument("--shift", default="0,3,-3", help="axis shifts in nm, comma-separated (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1001, help="lab seed (default: %(default)s)")
    p.add_argument("--samples", type=int, default=200, help="measurements per shift (default: %(default)s)")
    p.add_argument("--preset", default="default", help="lab preset (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_command)


def _command(args: argparse.Namespace) -> int:
    path = args.model / "manifest.json" if args.model.is_dir() else args.model
    result = shift_figures(path, [float(s) for s in args.shift.split(",") if s], args.seed, args.samples,
                           args.preset, progress=not args.json)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['model']}: seed {args.seed}, {args.samples} measurements per shift, preset {args.preset}")
    for shift, f in result["shifts"].items():
        print(f"shift {float(shift):+5.1f} nm: fitted {f['fitted_offset_nm']:+6.2f} nm; accuracy "
              f"{100 * f['accuracy_uncorrected']:.1f} % uncorrected, {100 * f['accuracy_corrected']:.1f} % corrected; "
              f"MAE {f['mae_uncorrected']:.4f} / {f['mae_corrected']:.4f}")
    return 0
