"""`isic-station bench accuracy`: the real station's results on the demo bench, scored against the line's truth.

The product is the station, so its figures are measured on it: `demo.DemoBench` starts the broker,
the emulated spectrometer and the virtual microscope (QR labels on, the bench's own camera
settings, `--set` changing any config key), and `isic-station run` as systemd runs it. A production
line (`--line-seed`, one new sample every `--dwell` seconds) passes under the probe; each result
that arrives over MQTT is scored against the sample that was under the probe during its
acquisition (`measured_at` to `measured_at + timings_ms.acquire`). A result whose acquisition
straddles two samples is counted (`straddled`) and left out; so are results from before the line.

The station runs at DEBUG, so its log holds the origins of the tiles the model got
(`inference.predictor`); `label_tiles` counts those that touch the printed label (whose place the
virtual microscope knows): anything above 0 means label pixels reached the model.
Scoring and the pooled figures with 95 % intervals are `bench.scoring`'s, as `isic-model evaluate`'s;
`per_seed[i].sample_indices` are the line's samples each scored result measured (sample k of line S
is sample k of `isic-model evaluate --seed S`, so the offline figure on the same samples is one command
away). Results of one sample are not independent: the interval is a little narrower than it should be
when samples are scored several times (a 1.5 s dwell at a 1 s interval gives one or two each).
"""

import argparse
import json
import queue
import re
import shutil
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from isic_common.errors import ConfigError, DeviceError, StationError
from isic_model import SHIPPED_MANIFEST
from isic_station.manifest import load_manifest
from isic_station.tools.bench.model import positive_int
from isic_station.tools.bench.scoring import figures_line, pooled_figures, score_result

DEFAULT_LINE_SEED = 7001           # never used in training (seed 1) nor for the shipped figures (1001)
TILE_LOG = re.compile(r"image tiles at (?P<model>[\d.]+) um/px from (?P<camera>[\d.]+) um/px: .* "
                      r"origins (?P<o>[\d: ]+)")
STARTUP_TIMEOUT_S = 90.0


def seed_list(text: str) -> List[int]:
    """argparse type: one whole number or several, comma-separated (`7001,7002`)."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}")
    return seeds


def register(subparsers: "argparse._SubParsersAction") -> None:
    """Add `bench accuracy`."""
    parser = subparsers.add_parser(
        "accuracy",
        help="the real station on the demo bench, scored against a simulated line (accuracy, MAE, 95 %% CI)",
        description="Run `isic-station run` on the demo bench (emulated spectrometer, virtual microscope with "
                    "QR labels, local broker) while a simulated production line passes under the probe; score "
                    "each result against the sample under the probe during its acquisition. Results whose "
                    "acquisition straddles two samples are counted and left out.",
    )
    parser.add_argument("--line-seed", type=seed_list, default=[DEFAULT_LINE_SEED], metavar="S[,S2,...]",
                        help=f"seed(s) of the simulated line (default {DEFAULT_LINE_SEED}); several are run one "
                             "after the other and pooled")
    parser.add_argument("--count", type=positive_int, default=60, help="scored results per line seed (default: 60)")
    parser.add_argument("--preset", default="default", metavar="NAME",
                        help="the lab's condition preset of the line's samples: default, humid, dark_dyes, low_snr, "
                             "thin, plant (rooms 5-45 degC, axis +-3 nm, dyes to black: results outside the model's "
                             "trained range are flagged and counted in outside_trained_range) (default: "
                             "%(default)s); the emulated instrument takes the preset's typical lamp and detector "
                             "for its references and samples alike (low_snr's weak lamp needs --set "
                             "spectrometer.integration_us=16000 for the white to pass)")
    parser.add_argument("--dwell", type=float, default=1.5, help="seconds each sample stays under the probe "
                        "(default: 1.5, so most samples give one or two results)")
    parser.add_argument("--interval", type=float, default=1.0, help="station measurement interval, s (default: 1)")
    parser.add_argument("--set", dest="settings", action="extend", nargs="+", default=[], metavar="SECTION.KEY=VALUE",
                        help="change keys of the bench's station config, e.g. --set camera.um_per_px=1.6 "
                             "camera.frames_per_measurement=4 (repeatable)")
    parser.add_argument("--model", type=Path, default=None, help="model manifest.json (default: the shipped model)")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it (logs, config)")
    parser.add_argument("--json", action="store_true",
                        help='print one JSON object: {"accuracy", "mae", "mae_per_blend", "n", "straddled", ...}')
    parser.set_defaults(handler=run_accuracy_bench)


def _toml_value(text: str) -> str:
    """VALUE as TOML: numbers and booleans as they are, anything else quoted."""
    if text in ("true", "false") or re.fullmatch(r"[-+]?\d+(\.\d*)?([eE][-+]?\d+)?", text):
        return text
    return json.dumps(text)


def apply_settings(config_text: str, settings: Sequence[str]) -> str:
    """The bench's TOML with each SECTION.KEY=VALUE set (replaced in its section, else added to it)."""
    lines = config_text.splitlines()
    for item in settings:
        name, sep, value = item.partition("=")
        section, dot, key = name.strip().rpartition(".")
        if not sep or not dot or not key:
            raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. camera.um_per_px=1.6")
        entry = f"{key} = {_toml_value(value.strip())}"
        header = f"[{section}]"
        if header not in lines:
            lines += [header, entry]
            continue
        start = lines.index(header) + 1
        end = next((i for i in range(start, len(lines)) if lines[i].startswith("[")), len(lines))
        found = [i for i in range(start, end) if re.match(rf"{re.escape(key)}\s*=", lines[i])]
        if found:
            lines[found[0]] = entry
        else:
            lines.insert(start, entry)
    return "\n".join(lines) + "\n"


def _timestamp(iso: str) -> float:
    return datetime.strptime(iso.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def tile_origins(log_text: str) -> List[Tuple[float, List[Tuple[int, int, int]]]]:
    """(camera px per model px, tile origins) of each measurement the station's DEBUG log describes."""
    found = []
    for match in TILE_LOG.finditer(log_text):
        scale = float(match["model"]) / float(match["camera"])
        origins = [tuple(int(v) for v in part.split(":")) for part in match["o"].split()]
        found.append((scale, origins))
    return found


def label_tile_count(measurements: Sequence[Tuple[float, Sequence[Tuple[int, int, int]]]],
                     label: Tuple[int, int, int], tile_px: int) -> int:
    """How many model tiles overlap the label box (left, top, side in camera pixels)."""
    left, top, side = label
    count = 0
    for scale, origins in measurements:
        for _frame, y, x in origins:
            x0, y0, size = x * scale, y * scale, tile_px * scale
            if x0 < left + side and left < x0 + size and y0 < top + side and top < y0 + size:
                count += 1
    return count


def _score_line(bench: Any, watcher: Any, seed: int, args: argparse.Namespace, fibres: Sequence[str]
                ) -> Dict[str, Any]:
    """Put line `seed` on the stage and score results until `args.count` are scored."""
    from isic_drivers.lab.sample import blend_label
    from isic_drivers.lab.stage import ProductionLine

    start = time.time()
    bench.put_line(seed, args.dwell)
    line = ProductionLine(seed, args.dwell, bench.preset, start_time=start)
    scores: List[Dict[str, Any]] = []
    straddled = before_line = received = 0
    deadline = time.monotonic() + STARTUP_TIMEOUT_S + args.count * max(args.interval, args.dwell) * 4
    while len(scores) < args.count:
        if time.monotonic() > deadline:
            raise DeviceError(f"only {len(scores)} of {args.count} results scored in time; see {bench.station_log}")
        if bench.station is not None and bench.station.poll() is not None:
            raise StationError(f"the station exited with code {bench.station.returncode}; see {bench.station_log}")
        try:
            _topic, raw, _at = watcher.messages.get(timeout=0.5)
        except queue.Empty:
            continue
        doc = json.loads(raw)
        received += 1
        began = _timestamp(doc["measured_at"])
        ended = began + float(doc["timings_ms"]["acquire"]) / 1000.0
        if began < start:
            before_line += 1
            continue
        index = line.index_at(began)
        if line.index_at(ended) != index:
            straddled += 1
            continue
        sample = line.sample(index)
        truth = {f: float(sample.composition.get(f, 0.0)) for f in fibres}
        scores.append(dict(score_result(doc["composition"], doc["blend"], truth, blend_label(sample),
                                        confidence=doc.get("confidence"), interval_95=doc.get("interval_95"),
                                        flags=doc["flags"], sample=f"{seed}:{index}"),
                           index=index))
        if not args.json:
            print(f"  line {seed}: {len(scores)}/{args.count} scored ({straddled} straddled)", end="\r",
                  file=sys.stderr, flush=True)
    return {"line_seed": seed, "scores": scores, "straddled": straddled, "before_line": before_line,
            "received": received}


def run_accuracy_bench(args: argparse.Namespace) -> int:
    """Set up the bench, run the station over each line, print the pooled figures."""
    from isic_drivers.emulators.microscope import label_box
    from isic_drivers.lab.sample import PRESETS
    from isic_station.config import load_config
    from isic_station.tools.demo import DemoBench, ResultWatcher

    if args.dwell <= 0 or args.interval <= 0:
        raise ConfigError("--dwell and --interval must be > 0")
    if args.preset not in PRESETS:
        raise ConfigError(f"--preset {args.preset!r}: not a lab preset; choose one of {', '.join(sorted(PRESETS))}")
    if args.model is not None:
        args.model = args.model.resolve()   # the station's config lives in another folder: no relative path
    manifest = load_manifest(args.model or SHIPPED_MANIFEST)
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="isic-accuracy-"))
    runs: List[Dict[str, Any]] = []
    started = time.monotonic()
    try:
        # a station id of its own: two benches on one broker must not take each other's client id and results
        with DemoBench(workdir, station_id=f"accuracy-{uuid.uuid4().hex[:8]}", mode="continuous",
                       interval_s=args.interval, preset=args.preset,
                       model=args.model, log_level="DEBUG") as bench:
            bench.config_path.write_text(apply_settings(bench.write_config().read_text(encoding="utf-8"),
                                                        args.settings), encoding="utf-8")
            config = load_config(bench.config_path)
            instrument = bench.instrument
            if not args.json:
                print(f"bench accuracy: {manifest.name} {manifest.version}; camera {config.camera.width}x"
                      f"{config.camera.height} at {config.camera.um_per_px:g} um/px, "
                      f"{config.camera.frames_per_measurement} frames, coadd {config.spectrometer.coadd}; "
                      f"work folder {workdir}", file=sys.stderr, flush=True)
            bench.calibrate()
            watcher = ResultWatcher(bench.broker.host, bench.broker.port, [bench.topics.result])
            try:
                bench.start_station()     # results before the first line's start are left out
                for seed in args.line_seed:
                    runs.append(_score_line(bench, watcher, seed, args, manifest.fibres))
            finally:
                bench.stop_station()
                watcher.close()
            log_text = bench.station_log.read_text(encoding="utf-8", errors="replace")
            boxes = [label_box(f"L{seed}-000000", config.camera.width, config.camera.height)
                     for seed in args.line_seed]
            left, top = min(b[0] for b in boxes), min(b[1] for b in boxes)
            measurements = tile_origins(log_text)
            label_tiles = label_tile_count(measurements, (left, top, max(b[2] for b in boxes)),
                                           int(manifest.image["tile_px"]))
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    all_scores = [s for run in runs for s in run["scores"]]
    result: Dict[str, Any] = pooled_figures(all_scores)
    result.update(
        straddled=sum(r["straddled"] for r in runs),
        line_seeds=list(args.line_seed),
        label_tiles=label_tiles,
        measurements_with_tiles=len(measurements),
        model=f"{manifest.name} {manifest.version}",
        settings={"camera_width": config.camera.width, "camera_height": config.camera.height,
                  "camera_um_per_px": config.camera.um_per_px,
                  "frames_per_measurement": config.camera.frames_per_measurement,
                  "coadd": config.spectrometer.coadd, "dwell_s": args.dwell, "interval_s": args.interval,
                  "preset": args.preset, "instrument": instrument,
                  "set": list(args.settings)},
        per_seed=[dict(pooled_figures(r["scores"]), line_seed=r["line_seed"], straddled=r["straddled"],
                       sample_indices=[s["index"] for s in r["scores"]]) for r in runs],
        seconds=round(time.monotonic() - started, 1),
    )
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"\nbench accuracy: station {figures_line(result)}; {result['straddled']} straddled (left out); "
          f"line seed(s) {','.join(map(str, args.line_seed))}")
    for run in result["per_seed"]:
        print(f"  line {run['line_seed']}: {figures_line(run)}, {run['straddled']} straddled")
    print(f"  MAE per binary blend: {result['mae_per_blend']}")
    print(f"  label tiles that reached the model: {label_tiles} (over {len(measurements)} measurements)")
    return 0
