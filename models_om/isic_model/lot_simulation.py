"""`isic-model simulate-lots`: how often the station's lot rule passes, fails or refers simulated lots.

A lot is `--size` measurements of fresh pieces of one fabric (one composition, new nuisance and
frames each), drawn from the virtual lab with `--seed` and answered by the calibrated model as the
station answers them. Each lot is judged twice by the station's own `LotSummary`: declared as what
it truly is (should pass) and declared `--offset-pp` off on its main fibre (should fail), at each
`--tolerance`. Prints the shares of pass / fail / undetermined lots.
"""

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from isic_common.errors import ModelError
from isic_model import SHIPPED_MANIFEST
from isic_model.calibration_data import CELLULOSE, add_record_options, apply_records, collect
from isic_model.data import StationSettings
from isic_model.measuring_settings import station_settings
from isic_station.daemon.spec_check import VERDICTS, LotSpec, LotSummary, judge
from isic_station.manifest import load_manifest
from isic_station.uncertainty import PATH_BIMODAL, PATH_SIGNAL_ONLY, UncertaintyCalibration


def offset_declaration(truth: Sequence[float], fibres: Sequence[str], offset: float) -> Dict[str, float]:
    """The true composition with `offset` moved from its largest fibre to its second (or the next fibre)."""
    truth = np.asarray(truth, dtype=np.float64)
    order = np.argsort(-truth)
    main = int(order[0])
    other = int(order[1]) if truth[order[1]] > 0 else (main + 1) % len(fibres)
    declared = truth.copy()
    moved = min(offset, declared[main])
    declared[main] -= moved
    declared[other] += moved
    return {f: float(v) for f, v in zip(fibres, declared) if v > 0}


def simulate_lots(manifest_path: Path, seed: int, lots: int, size: int, preset: str, tolerances: Sequence[float],
                  offset_pp: float, cache_dir: Any = None, progress: bool = True, jobs: int = 1,
                  settings: Optional[StationSettings] = None) -> Dict[str, Any]:
    """{tolerance: {true: {pass, fail, undetermined}, offset: {...}}} shares over `lots` lots measured with
    `settings` (default: the demo bench's), calibrated as a station with them is (its confidence profile)."""
    settings = settings or station_settings()
    manifest = load_manifest(manifest_path)
    calibration = UncertaintyCalibration.from_manifest(manifest, asdict(settings))
    if calibration is None:
        raise ModelError(f"{manifest_path} has no uncertainty calibration: run `isic-model calibrate-uncertainty`")
    records = collect(manifest_path, seed, lots, preset, repeats=size, cache_dir=cache_dir, progress=progress,
                      jobs=jobs, settings=settings)
    return dict({"seed": seed, "lots": lots, "size": size, "preset": preset, "settings": asdict(settings),
                 "confidence_profile": calibration.profile["station"] if calibration.profile else None},
                **judge_lots(calibration, records, tolerances, offset_pp))


def lot_kind(truth: Sequence[float], fibres: Sequence[str]) -> str:
    """What decides how a lot can be judged: one fibre (its wrong declaration adds a fibre at `offset_pp`, a
    share the model seldom reads), or a blend by its number of cellulose fibres (the lot bound's pool)."""
    present = [f for f, v in zip(fibres, truth) if v > 0]
    if len(present) == 1:
        return "one fibre"
    return f"blend, {sum(f in CELLULOSE for f in present)} cellulose"


def judge_lots(calibration: Any, records: Any, tolerances: Sequence[float], offset_pp: float) -> Dict[str, Any]:
    """Each composition group of `records` judged as a lot by the station's `LotSummary`, declared as it is
    and `offset_pp` off: {offset_pp, tolerance_pp: {tol: {true, offset, results, by_kind}}} (shares; `by_kind`:
    per `lot_kind`, its number of lots and their shares), and `coverage_95`: the share of (lot, fibre present)
    pairs whose interval of the mean holds the truth."""
    fibres, classes = list(calibration.fibres), list(calibration.blend_classes)
    answers = apply_records(calibration, records)
    groups = np.unique(records.group)
    lots = len(groups)
    out: Dict[str, Any] = {"offset_pp": offset_pp, "tolerance_pp": {}}
    covered: List[bool] = []
    for tol in tolerances:
        counts = {"true": dict.fromkeys(VERDICTS, 0), "offset": dict.fromkeys(VERDICTS, 0)}
        results = {"true": dict.fromkeys(VERDICTS, 0), "offset": dict.fromkeys(VERDICTS, 0)}
        kinds: Dict[str, Dict[str, Dict[str, int]]] = {}
        for g in groups:
            rows = np.flatnonzero(records.group == g)
            truth = records.truth[rows[0]]
            kind = kinds.setdefault(lot_kind(truth, fibres),
                                    {"true": dict.fromkeys(VERDICTS, 0), "offset": dict.fromkeys(VERDICTS, 0)})
            declarations = {
                "true": {f: float(v) for f, v in zip(fibres, truth) if v > 0},
                "offset": offset_declaration(truth, fibres, offset_pp / 100.0),
            }
            for case, declared in declarations.items():
                summary = LotSummary(LotSpec(f"lot-{g}", declared, tol), since="")
                for i in rows:
                    path = PATH_SIGNAL_ONLY if records.station_signal_only[i] else PATH_BIMODAL
                    blend = classes[int(np.argmax(records.station_prob[i]))]
                    decision = dict(zip(fibres, answers["decision"][i].tolist()))
                    results[case][judge(summary.spec, decision)["verdict"]] += 1
                    summary.add(dict(zip(fibres, records.station_pred[i])),
                                calibration.systematic(path, blend, float(records.noise[i]), float(records.level[i]),
                                                       declared=summary.spec.composition),
                                decision, blend=blend)
                lot = summary.to_dict("sim", "")
                counts[case][lot["verdict"]] += 1
                kind[case][lot["verdict"]] += 1
                if case == "true" and tol == tolerances[0]:
                    covered += [lot["interval_95"][f][0] <= t <= lot["interval_95"][f][1]
                                for f, t in zip(fibres, truth) if t > 0]
        out["tolerance_pp"][f"{tol:g}"] = {case: {v: round(n / lots, 3) for v, n in c.items()}
                                          for case, c in counts.items()}
        out["tolerance_pp"][f"{tol:g}"]["results"] = {
            case: {v: round(n / len(records), 3) for v, n in c.items()} for case, c in results.items()}
        out["tolerance_pp"][f"{tol:g}"]["by_kind"] = {
            name: dict({case: {v: round(n / sum(c.values()), 3) for v, n in c.items()} for case, c in k.items()},
                       lots=sum(k["true"].values()))
            for name, k in sorted(kinds.items())}
    out["coverage_95"] = round(float(np.mean(covered)), 4) if covered else None
    return out


def register(sub: "argparse._SubParsersAction") -> None:
    """Add `simulate-lots` to the `isic-model` parser."""
    p = sub.add_parser(
        "simulate-lots",
        help="shares of simulated lots the station's lot rule passes, fails or refers to the lab",
        description="Simulate --lots lots of --size fresh pieces of one fabric each, answer them with the "
        "calibrated model, and judge each with the station's LotSummary declared as it truly is and declared "
        "--offset-pp off, at each --tolerance.",
    )
    p.add_argument("--model", type=Path, default=SHIPPED_MANIFEST, help="manifest.json or its folder")
    p.add_argument("--seed", type=int, default=3001, help="lab seed (default: %(default)s)")
    p.add_argument("--lots", type=int, default=40, help="number of lots (default: %(default)s)")
    p.add_argument("--size", type=int, default=20, help="measurements per lot (default: %(default)s)")
    p.add_argument("--preset", default="default", help="lab preset (default: %(default)s)")
    p.add_argument("--tolerance", default="3,5", help="tolerances in pp, comma-separated (default: %(default)s)")
    p.add_argument("--offset-pp", type=float, default=8.0, help="how far off the wrong declaration is")
    p.add_argument("--config", type=Path, default=None,
                   help="measure with this station config's settings, calibrated as that station is (its "
                   "confidence profile) (default: the demo bench's)")
    add_record_options(p, "processes simulating the lots")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_command)


def _command(args: argparse.Namespace) -> int:
    path = args.model / "manifest.json" if args.model.is_dir() else args.model
    result = simulate_lots(path, args.seed, args.lots, args.size, args.preset,
                           [float(t) for t in args.tolerance.split(",") if t], args.offset_pp, args.cache,
                           progress=not args.json, jobs=args.jobs,
                           settings=station_settings(args.config) if args.config else None)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.lots} lots x {args.size} measurements, seed {args.seed}, preset {args.preset}")
    for tol, cases in result["tolerance_pp"].items():
        for case in ("true", "offset"):
            what = "declared as it is" if case == "true" else f"declared {args.offset_pp:g} pp off"
            lots = ", ".join(f"{v} {100 * s:.1f} %" for v, s in cases[case].items())
            single = ", ".join(f"{v} {100 * s:.1f} %" for v, s in cases["results"][case].items())
            print(f"tolerance {tol} pp, {what:<20}: lots {lots}; single results {single}")
            for name, kind in cases["by_kind"].items():
                shares = ", ".join(f"{v} {100 * s:.1f} %" for v, s in kind[case].items())
                print(f"    {name} ({kind['lots']} lots): {shares}")
    print(f"interval of the lot mean holds the truth for {100 * result['coverage_95']:.1f} % of (lot, fibre present)")
    return 0
