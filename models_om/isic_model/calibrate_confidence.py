"""`isic-model calibrate-confidence`: the blend confidence refit for a station that measures more than the calibration.

`calibrate-uncertainty` fits everything at one station's settings (the demo bench's: 3 frames, 4 scans). A
station taking more (the production settings: 16 frames, 16 scans) errs less, so the confidence tempered as
calibrated is underconfident there: the nine-line station bench read a mean confidence of 0.932 against an
accuracy of 0.980, ECE 0.048. This command measures fresh lab data with a station config's settings. It
refits both paths' temperatures on that data, with the same fit as calibrate-uncertainty's at the
calibration's own noise split, and keeps them as a profile in the manifest's
`uncertainty.confidence_profiles` with the ECE before and after on held-out data. Without `--intervals` the
intervals keep the calibration's fit; their scale reads the tempered confidence, so the held-out coverage is
recorded too. A station uses the richest profile its settings meet
(`isic_station.uncertainty.confidence_profile`). With `--intervals` the profile holds the interval model
refit at those settings as well: the calibration's left thin and humid fabric covered 0.89-0.92 at the
production settings, because a station taking 16 frames errs otherwise than the one the scale model was
fitted at, not only less. With `--lots` it holds the lot tables refit at those settings as well (`--repeats 4`,
as the calibration's): lots of 20 measured at the production settings were judged by the demo calibration's
tables, whose bias is that of 3 frames. `calibrate-uncertainty` writes a new calibration without profiles: run
this again after it.
"""

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import numpy as np

from isic_common.errors import ConfigError, ModelError
from isic_model import SHIPPED_MANIFEST
from isic_model.calibrate_uncertainty import (
    answer_figures,
    atypicality_of,
    fit_lot_tables,
    fit_path,
    fit_temperatures,
    lot_bound_text,
    split_groups,
    temperature_text,
)
from isic_model.calibration_data import (
    add_record_options,
    apply_records,
    collect,
    mixture_text,
    path_rows,
    presets_arg,
)
from isic_model.data import Presets, StationSettings
from isic_model.manifest_doc import editing_manifest, uncalibrated_copy
from isic_model.measuring_settings import station_settings
from isic_model.workers import scratch_file
from isic_station.manifest import load_manifest
from isic_station.uncertainty import (
    INTERVAL_KEYS,
    LOT_KEYS,
    PATH_BIMODAL,
    PATH_SIGNAL_ONLY,
    TEMPERATURE_KEYS,
    UncertaintyCalibration,
    measures_at_least,
    with_confidence_profile,
)

MIN_LOT_REPEATS = 2  # pieces per composition group the lot tables need (a group's mean less its pieces' spread)


def fit_profile(manifest_path: Path, settings: StationSettings, seed: int, groups: int, repeats: int,
                preset: Optional[Presets], heldout_seed: int, heldout_samples: int, cache_dir: Optional[Path],
                progress: bool = True, jobs: int = 1, intervals: bool = False, lots: bool = False) -> Dict[str, Any]:
    """The confidence profile of the manifest's calibration at `settings` (not yet written): temperatures
    refit on `groups` x `repeats` measurements of `preset` (default: the calibration's own mixture), with
    `intervals` the interval model too, with `lots` the lot tables, and the held-out figures of
    `heldout_samples` default-preset measurements before and after.

    The interval model is fitted as `calibrate-uncertainty` fits it (`fit_path`: the scale on half the
    composition groups, the conformal factors on the other half), reading the confidence as the profile
    tempers it and the atypicality under the calibration's unknown-fibre model, as the station will. The
    temperatures are fitted on all the data (the calibrating half included: a handful of parameters, which
    the dark pieces need all of, against the split's guarantee kept for the scale's own fit). The lot tables are
    fitted as `calibrate-uncertainty` fits them (`fit_lot_tables`), on all the groups: a lot's mean at 16 frames
    keeps another bias than at the calibration's 3."""
    manifest = load_manifest(manifest_path)
    doc = manifest.raw.get("uncertainty")
    if doc is None:
        raise ModelError(f"{manifest_path} has no uncertainty calibration: run `isic-model calibrate-uncertainty`")
    calibrated = doc["data"].get("station", {})
    if lots and repeats < MIN_LOT_REPEATS:
        raise ConfigError(f"--lots needs --repeats {MIN_LOT_REPEATS} or more: the lot tables are fitted on the error "
                          f"of a composition group's mean, less its pieces' own spread (got --repeats {repeats})")
    if not measures_at_least(asdict(settings), calibrated):
        raise ConfigError(f"settings {asdict(settings)} take fewer scans, frames or field than the calibration's "
                          f"{calibrated}: a confidence profile only tempers richer measurements (recalibrate with "
                          "`isic-model calibrate-uncertainty --config` instead)")
    preset = preset if preset is not None else presets_arg(doc["data"]["preset"])
    fibres, classes = list(manifest.fibres), list(manifest.blend_classes)
    start = time.perf_counter()
    with scratch_file(uncalibrated_copy(manifest_path)) as source:
        fit = collect(source, seed, groups, preset, repeats, cache_dir=cache_dir, progress=progress,
                      settings=settings, jobs=jobs)
        held = collect(source, heldout_seed, heldout_samples, "default", cache_dir=cache_dir, progress=progress,
                       settings=settings, jobs=jobs)
    # the interval's scale reads the atypicality (the temperature fit does not)
    atypicality = atypicality_of(fit, doc["unknown_fibre"]) if intervals else np.zeros(len(fit))
    in_fit = split_groups(fit)
    paths = {}
    for path in (PATH_BIMODAL, PATH_SIGNAL_ONLY):
        temperatures = fit_temperatures(path_rows(fit, path, atypicality), classes,
                                        noise_split=doc["paths"][path]["noise_split"])
        paths[path] = {k: temperatures[k] for k in TEMPERATURE_KEYS if k in temperatures}
        if intervals:
            model = fit_path(path_rows(fit.subset(in_fit), path, atypicality[in_fit]),
                             path_rows(fit.subset(~in_fit), path, atypicality[~in_fit]), fibres, classes, path,
                             temperatures=temperatures)
            paths[path].update({k: model[k] for k in INTERVAL_KEYS})
        if lots:
            tables = fit_lot_tables(path_rows(fit, path, atypicality), fibres, classes,
                                    doc["paths"][path]["noise_split"])
            paths[path].update({k: tables[k] for k in LOT_KEYS})
    profile: Dict[str, Any] = {
        "station": asdict(settings),
        "data": {"seed": seed, "groups": groups, "repeats": repeats, "measurements": len(fit),
                 "preset": mixture_text(preset),
                 **({"intervals": "refit: half the composition groups fit the scale, half calibrate (rng 0)"}
                    if intervals else {}),
                 **({"lots": f"refit: lot tables from all {groups} composition groups of {repeats} pieces"}
                    if lots else {})},
        "paths": paths,
    }
    before = UncertaintyCalibration(doc, fibres, classes)
    after = UncertaintyCalibration(with_confidence_profile(doc, profile), fibres, classes)
    profile["heldout"] = {"seed": heldout_seed, "samples": heldout_samples, "preset": "default",
                          "before": answer_figures(apply_records(before, held), held.truth),
                          "after": answer_figures(apply_records(after, held), held.truth)}
    profile["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    profile["seconds"] = round(time.perf_counter() - start, 1)
    return profile


def write_profile(manifest_path: Path, profile: Mapping[str, Any]) -> None:
    """Keep `profile` in the manifest's `uncertainty.confidence_profiles`, in place of one at the same settings;
    the schema and the runtime accept the manifest first."""
    with editing_manifest(manifest_path,
                          accept=lambda m: UncertaintyCalibration.from_manifest(m, profile["station"])) as raw:
        kept = [p for p in raw["uncertainty"].get("confidence_profiles", []) if p["station"] != profile["station"]]
        raw["uncertainty"]["confidence_profiles"] = kept + [dict(profile)]


def register(sub: "argparse._SubParsersAction") -> None:
    """Add `calibrate-confidence` to the `isic-model` parser."""
    p = sub.add_parser(
        "calibrate-confidence",
        help="refit the blend confidence for a station measuring more than the calibration (a profile)",
        description="Measure fresh lab data with a station config's settings (e.g. the production settings: 16 "
        "frames, 16 scans), refit both paths' confidence temperatures on it, and keep them in the manifest's "
        "`uncertainty.confidence_profiles` with the held-out ECE before and after. Stations measuring at least "
        "as much use the richest profile they meet; the intervals stay as calibrated, unless --intervals refits "
        "them too. Run it again after `calibrate-uncertainty`, which writes a calibration without profiles.",
    )
    p.add_argument("--model", type=Path, default=SHIPPED_MANIFEST, help="manifest.json or its folder (rewritten)")
    p.add_argument("--config", type=Path, required=True,
                   help="the station config whose measuring settings the profile is for")
    p.add_argument("--seed", type=int, default=2101, help="lab seed of the fit data (default: %(default)s)")
    p.add_argument("--groups", type=int, default=600,
                   help="compositions in the fit data; 200 held too few dark-dyed pieces to fit their own "
                   "temperature (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=2, help="fresh pieces per composition (default: %(default)s)")
    p.add_argument("--preset", type=presets_arg, default=None,
                   help="preset or mixture of the fit data (default: the calibration's own mixture)")
    p.add_argument("--heldout-seed", type=int, default=1101, help="seed of the check (default: %(default)s)")
    p.add_argument("--heldout-samples", type=int, default=400,
                   help="default-preset measurements of the check (default: %(default)s)")
    p.add_argument("--intervals", action="store_true",
                   help="refit the intervals' scale model and conformal factors at these settings too (at the "
                   "production settings the calibration's covered thin and humid fabric 0.89-0.92)")
    p.add_argument("--lots", action="store_true",
                   help="refit the lot tables (the systematic error a lot's mean keeps, and its bounds) at these "
                   f"settings too, from the fit data's composition groups (needs --repeats {MIN_LOT_REPEATS} or more; "
                   "4, as the calibration's, bounds them better)")
    add_record_options(p, "processes simulating the records (2 on an idle 2-core machine)")
    p.add_argument("--json", action="store_true", help="print the written profile")
    p.set_defaults(handler=_command)


def _command(args: argparse.Namespace) -> int:
    path = args.model / "manifest.json" if args.model.is_dir() else args.model
    profile = fit_profile(path, station_settings(args.config), args.seed, args.groups, args.repeats, args.preset,
                          args.heldout_seed, args.heldout_samples, args.cache, progress=not args.json, jobs=args.jobs,
                          intervals=args.intervals, lots=args.lots)
    write_profile(path, profile)
    if args.json:
        print(json.dumps(profile))
        return 0
    held = profile["heldout"]
    what = " and ".join(["confidence"] + (["interval"] if args.intervals else []) + (["lot"] if args.lots else []))
    print(f"{what} profile written into {path} for {profile['station']} ({profile['seconds']} s)")
    for name, p in profile["paths"].items():
        print(f"  {name}: {temperature_text(p)}")
        if args.lots:
            print(f"    lot bounds (pp, clean bright / all conditions): {lot_bound_text(p)}")
    for when in ("before", "after"):
        f = held[when]
        print(f"  held out (seed {held['seed']}, {held['samples']}, default) {when}: accuracy {f['accuracy']:.3f}, "
              f"mean confidence {f['mean_confidence']:.3f}, ECE {f['ece']:.4f} "
              f"(noise floor {f['ece_noise_floor']:.4f}), "
              f"coverage_95 {f['coverage_95']:.3f}, median width {f['median_interval_width']:.3f}")
    return 0
