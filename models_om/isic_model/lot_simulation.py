"""`isic-model simulate-lots`: how often the station's lot rule passes, fails or refers simulated lots.

A lot is `--size` measurements of fresh pieces of one fabric (one composition, new nuisance and
frames each), drawn from the virtual lab with `--seed` (or each of `--seeds`, pooled) and answered by
the calibrated model as the station answers them. Each lot is judged twice by the station's own
`LotSummary`: declared as what it truly is (should pass) and declared `--offset-pp` off on its main
fibre (should fail), at each `--tolerance`. Prints the shares of pass / fail / undetermined lots with
their 95 % Wilson intervals (a lot is the unit: fresh pieces, independent of the other lots).
"""

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from isic_common.errors import ModelError
from isic_model import SHIPPED_MANIFEST
from isic_model.calibration_data import add_record_options, apply_records, cellulose_count, collect
from isic_model.data import StationSettings
from isic_model.measuring_settings import station_settings
from isic_station.daemon.spec_check import VERDICTS, LotSpec, LotSummary, judge
from isic_station.manifest import load_manifest
from isic_station.tools.bench.accuracy import seed_list
from isic_station.tools.bench.scoring import wilson_interval
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


def simulate_lots(manifest_path: Path, seeds: Sequence[int], lots: int, size: int, preset: str,
                  tolerances: Sequence[float], offset_pp: float, cache_dir: Any = None, progress: bool = True,
                  jobs: int = 1, settings: Optional[StationSettings] = None) -> Dict[str, Any]:
    """The `lot_figures` of `lots` lots per seed measured with `settings` (default: the demo bench's),
    calibrated as a station with them is (its confidence profile). One seed: its figures under `seed`;
    several: pooled over all their lots under `seeds` (`lots` stays per seed), each seed's under `per_seed`."""
    settings = settings or station_settings()
    manifest = load_manifest(manifest_path)
    calibration = UncertaintyCalibration.from_manifest(manifest, asdict(settings))
    if calibration is None:
        raise ModelError(f"{manifest_path} has no uncertainty calibration: run `isic-model calibrate-uncertainty`")
    total: Dict[str, Any] = {}
    per_seed: List[Dict[str, Any]] = []
    for seed in seeds:
        records = collect(manifest_path, seed, lots, preset, repeats=size, cache_dir=cache_dir, progress=progress,
                          jobs=jobs, settings=settings)
        counts = lot_counts(calibration, records, tolerances, offset_pp)
        per_seed.append(dict({"seed": seed}, **lot_figures(counts, offset_pp)))
        total = summed_counts(total, counts) if total else counts
    head = {"lots": lots, "size": size, "preset": preset, "settings": asdict(settings),
            "confidence_profile": calibration.profile["station"] if calibration.profile else None}
    if len(seeds) == 1:
        return dict(head, **per_seed[0])
    return dict(head, seeds=list(seeds), pooled_lots=total["lots"], **lot_figures(total, offset_pp),
                per_seed=per_seed)


def lot_kind(truth: Sequence[float], fibres: Sequence[str]) -> str:
    """What decides how a lot can be judged: one fibre (its wrong declaration adds a fibre at `offset_pp`, a
    share the model seldom reads), or a blend by its number of cellulose fibres (the lot bound's pool)."""
    present = [f for f, v in zip(fibres, truth) if v > 0]
    if len(present) == 1:
        return "one fibre"
    return f"blend, {cellulose_count(present)} cellulose"


def _verdicts() -> Dict[str, Dict[str, int]]:
    return {"true": dict.fromkeys(VERDICTS, 0), "offset": dict.fromkeys(VERDICTS, 0)}


def lot_counts(calibration: Any, records: Any, tolerances: Sequence[float], offset_pp: float) -> Dict[str, Any]:
    """Each composition group of `records` judged as a lot by the station's `LotSummary`, declared as it is
    and `offset_pp` off, counted: {lots, covered: [held, pairs], tolerance_pp: {tol: {lots, results,
    by_kind}}} (verdict counts per case; `covered`: (lot, fibre present) pairs whose interval of the mean holds
    the truth, at the first tolerance). Counts, so that several seeds' lots add up (`summed_counts`)."""
    fibres, classes = list(calibration.fibres), list(calibration.blend_classes)
    answers = apply_records(calibration, records)
    groups = np.unique(records.group)
    out: Dict[str, Any] = {"lots": len(groups), "covered": [0, 0], "tolerance_pp": {}}
    for tol in tolerances:
        counts: Dict[str, Any] = {"lots": _verdicts(), "results": _verdicts(), "by_kind": {}}
        for g in groups:
            rows = np.flatnonzero(records.group == g)
            truth = records.truth[rows[0]]
            kind = counts["by_kind"].setdefault(lot_kind(truth, fibres), _verdicts())
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
                    counts["results"][case][judge(summary.spec, decision)["verdict"]] += 1
                    summary.add(dict(zip(fibres, records.station_pred[i])),
                                calibration.systematic(path, blend, float(records.noise[i]), float(records.level[i]),
                                                       declared=summary.spec.composition),
                                decision, blend=blend)
                lot = summary.to_dict("sim", "")
                counts["lots"][case][lot["verdict"]] += 1
                kind[case][lot["verdict"]] += 1
                if case == "true" and tol == tolerances[0]:
                    held = [lot["interval_95"][f][0] <= t <= lot["interval_95"][f][1]
                            for f, t in zip(fibres, truth) if t > 0]
                    out["covered"] = [out["covered"][0] + sum(held), out["covered"][1] + len(held)]
        out["tolerance_pp"][f"{tol:g}"] = counts
    return out


def summed_counts(first: Any, second: Any) -> Any:
    """Two `lot_counts` (or any parts of them) added key by key; a key only one holds is kept as it is."""
    if isinstance(first, dict):
        return {k: summed_counts(first[k], second[k]) if k in first and k in second else first.get(k, second.get(k))
                for k in list(first) + [k for k in second if k not in first]}
    if isinstance(first, list):
        return [a + b for a, b in zip(first, second)]
    return first + second


def _shares(counts: Mapping[str, Mapping[str, int]]) -> Dict[str, Dict[str, float]]:
    return {case: {v: round(n / max(sum(c.values()), 1), 3) for v, n in c.items()} for case, c in counts.items()}


def _intervals(counts: Mapping[str, Mapping[str, int]]) -> Dict[str, Dict[str, List[float]]]:
    return {case: {v: [round(x, 3) for x in wilson_interval(n, sum(c.values()))] for v, n in c.items()}
            for case, c in counts.items()}


def lot_figures(counts: Mapping[str, Any], offset_pp: float) -> Dict[str, Any]:
    """`lot_counts` as shares: {offset_pp, tolerance_pp: {tol: {true, offset, ci95, results, by_kind}},
    coverage_95}. `true` / `offset`: shares of lots per verdict, `ci95` their 95 % Wilson intervals (lots are
    independent pieces of cloth; single results are not, so `results`, their shares, carry none); `by_kind`:
    per `lot_kind`, its number of lots, shares and intervals."""
    out: Dict[str, Any] = {"offset_pp": offset_pp, "tolerance_pp": {}}
    for tol, c in counts["tolerance_pp"].items():
        out["tolerance_pp"][tol] = dict(_shares(c["lots"]), ci95=_intervals(c["lots"]), results=_shares(c["results"]))
        out["tolerance_pp"][tol]["by_kind"] = {
            name: dict(_shares(k), ci95=_intervals(k), lots=sum(k["true"].values()))
            for name, k in sorted(c["by_kind"].items())}
    held, pairs = counts["covered"]
    out["coverage_95"] = round(held / pairs, 4) if pairs else None
    return out


def judge_lots(calibration: Any, records: Any, tolerances: Sequence[float], offset_pp: float) -> Dict[str, Any]:
    """The `lot_figures` of `records`' composition groups judged as lots (`lot_counts`)."""
    return lot_figures(lot_counts(calibration, records, tolerances, offset_pp), offset_pp)


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
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=3001, help="lab seed (default: %(default)s)")
    seeds.add_argument("--seeds", type=seed_list, metavar="A,B,C",
                       help="several lab seeds: --lots lots each, shares pooled over all of them")
    p.add_argument("--lots", type=int, default=40, help="number of lots per seed (default: %(default)s)")
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


def _shares_text(shares: Mapping[str, float], ci95: Optional[Mapping[str, Sequence[float]]] = None) -> str:
    """`pass 67.5 % (52.0-80.1), fail 0.0 % (0.0-8.8), ...` (with the 95 % intervals when given)."""
    return ", ".join(f"{v} {100 * s:.1f} %" + (f" ({100 * ci95[v][0]:.1f}-{100 * ci95[v][1]:.1f})" if ci95 else "")
                     for v, s in shares.items())


def _command(args: argparse.Namespace) -> int:
    path = args.model / "manifest.json" if args.model.is_dir() else args.model
    seeds = args.seeds or [args.seed]
    result = simulate_lots(path, seeds, args.lots, args.size, args.preset,
                           [float(t) for t in args.tolerance.split(",") if t], args.offset_pp, args.cache,
                           progress=not args.json, jobs=args.jobs,
                           settings=station_settings(args.config) if args.config else None)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.lots} lots x {args.size} measurements, seed{'s' * (len(seeds) > 1)} "
          f"{','.join(map(str, seeds))}, preset {args.preset}; lot shares with 95 % intervals")
    for tol, cases in result["tolerance_pp"].items():
        for case in ("true", "offset"):
            what = "declared as it is" if case == "true" else f"declared {args.offset_pp:g} pp off"
            print(f"tolerance {tol} pp, {what:<20}: lots {_shares_text(cases[case], cases['ci95'][case])}; "
                  f"single results {_shares_text(cases['results'][case])}")
            for name, kind in cases["by_kind"].items():
                print(f"    {name} ({kind['lots']} lots): {_shares_text(kind[case], kind['ci95'][case])}")
    print(f"interval of the lot mean holds the truth for {100 * result['coverage_95']:.1f} % of (lot, fibre present)")
    return 0
