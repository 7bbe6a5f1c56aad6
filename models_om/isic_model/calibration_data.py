"""Station-like held-out measurements with the model's raw answers: the data uncertainty is calibrated on.

Each measurement is simulated as the station takes it (a station's settings: by default the demo
bench's, whose station `bench accuracy` scores: its frame size and µm/px, frames, co-adding and the
sample's printed label in view, which the station masks out), gated as the station gates it
(`acquisition.spectrum_flags`, the quality gate on every frame; a measurement with no frame left is
signal-only, as at the station) and answered by the station's own Predictor
without calibration, once on the station's path (bimodal, or signal-only without frames) and once
signal-only. Samples come in groups of `repeats` fresh pieces of fabric (new nuisance, new frames)
of one composition: the spread within a group is what averaging over a lot removes, the rest is
the systematic error a lot's mean keeps. With `unknown` fibres, every sample holds one of them
(20-80 %) beside 1-2 known fibres: the fabrics the unknown-fibre check must flag.

Sample g of a run is drawn from the generator seeded (seed, g), so runs are reproducible and a
short run is the head of a long one. Collected records are cached as .npz keyed by all of that.
"""

import argparse
import logging
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from isic_drivers.lab.fibres import load_fibres
from isic_model.data import Presets, StationSettings, cache_key, draw_preset
from isic_model.measuring_settings import station_settings
from isic_model.workers import save_npz, stop_workers_on_sigterm
from isic_station.uncertainty import PATH_BIMODAL, PATH_SIGNAL_ONLY, SpectrumQuality, flag_key

log = logging.getLogger(__name__)

UNKNOWN_SHARE = (0.2, 0.8)  # fraction range of the unknown fibre in an unknown-fibre sample
# the lab's cellulose family (cotton, linen, viscose): the fibres the model confuses with one another (lot bounds,
# lot kinds)
CELLULOSE = tuple(name for name, fibre in load_fibres().items() if fibre.family == "cellulose")


def cellulose_count(fibres: Sequence[str]) -> int:
    """How many of `fibres` are cellulose: what the bias a lot's mean keeps grows with (lot bounds, lot kinds)."""
    return sum(f in CELLULOSE for f in fibres)


@dataclass
class Records:
    """Per measurement: truth, the raw answers of both paths and the quality figures.

    `truth` [N, F] over the model's fibres (an unknown fibre's name and share in `unknown_name`,
    `unknown_share` [N]; '' and 0 for known fabrics);
    `group` [N] composition group; `preset` [N] names; `flags` [N] space-joined quality flags;
    `station_signal_only` [N] bool (no frame passed the gate). For path p in (station, signal):
    `p_pred` [N, F], `p_spread` [N, F] (std over tiles), `p_prob` [N, K] fused blend probabilities.
    `spectrum` [N, S] the preprocessed model input; `noise`, `level` [N] from `uncertainty.spectrum_quality`.
    """

    truth: np.ndarray
    unknown_share: np.ndarray
    unknown_name: np.ndarray
    group: np.ndarray
    preset: np.ndarray
    flags: np.ndarray
    station_signal_only: np.ndarray
    station_pred: np.ndarray
    station_spread: np.ndarray
    station_prob: np.ndarray
    signal_pred: np.ndarray
    signal_spread: np.ndarray
    signal_prob: np.ndarray
    labels: np.ndarray
    spectrum: np.ndarray
    noise: np.ndarray
    level: np.ndarray

    def __len__(self) -> int:
        return int(self.truth.shape[0])

    def subset(self, rows: np.ndarray) -> "Records":
        """The records of `rows` (an index or boolean array)."""
        return Records(**{k: v[rows] for k, v in asdict(self).items()})

    @staticmethod
    def concat(parts: Sequence["Records"]) -> "Records":
        """One set from several (groups renumbered so they stay distinct)."""
        offset, groups = 0, []
        for part in parts:
            groups.append(part.group + offset)
            offset += int(part.group.max()) + 1 if len(part) else 0
        fields = {k: np.concatenate([getattr(p, k) for p in parts]) for k in asdict(parts[0])}
        fields["group"] = np.concatenate(groups)
        return Records(**fields)


def _draw(rng: np.random.Generator, preset: Presets, fibres: Sequence[str], unknown: Sequence[str]) -> Any:
    """A sample (known fibres only, or one unknown fibre beside 1-2 known ones) and its preset name."""
    from isic_drivers.lab.sample import Sample, draw_nuisance, draw_sample

    preset = draw_preset(rng, preset)
    if not unknown:
        return draw_sample(rng, preset, fibres=list(fibres)), preset
    stranger = str(unknown[int(rng.integers(len(unknown)))])
    share = float(rng.uniform(*UNKNOWN_SHARE))
    known = rng.choice(len(fibres), size=int(rng.integers(1, 3)), replace=False)
    parts = rng.dirichlet(np.ones(len(known))) * (1.0 - share)
    composition = {stranger: share}
    composition.update({fibres[int(j)]: float(p) for j, p in zip(known, parts)})
    return Sample(composition, draw_nuisance(rng, preset)), preset


def collect(
    manifest_path: Path,
    seed: int,
    groups: int,
    preset: Presets = "default",
    repeats: int = 1,
    unknown: Sequence[str] = (),
    cache_dir: Optional[Path] = None,
    progress: bool = True,
    settings: Optional[StationSettings] = None,
    jobs: int = 1,
    room_sensor: bool = True,
) -> Records:
    """`groups` x `repeats` measurements with seed `seed` taken with `settings` (default: the demo
    bench's station settings), answered by the uncalibrated model (without `room_sensor`, given no room
    temperature, as at a station whose sensor reads nothing); `jobs` processes share the groups (the same
    records whatever the number)."""
    from isic_station.manifest import load_manifest

    manifest = load_manifest(manifest_path)
    settings = settings or station_settings()
    key = cache_key(kind="uncertainty-records", seed=seed, groups=groups, repeats=repeats, preset=preset,
                    unknown=list(unknown), settings=asdict(settings), model=manifest.graphs["bimodal"].sha256,
                    signal=manifest.graphs["signal_only"].sha256, image=manifest.image, version=4,
                    **({} if room_sensor else {"room_sensor": False}))
    path = cache_dir / f"records-{key}.npz" if cache_dir is not None else None
    if path is not None and path.is_file():
        log.info("records seed=%d from cache %s", seed, path)
        with np.load(path) as data:
            return Records(**{name: data[name] for name in data.files})
    jobs = max(1, min(int(jobs), groups))
    if jobs == 1:
        records = _simulate(manifest_path, settings, seed, range(groups), preset, repeats, unknown, progress, 2,
                            room_sensor)
    else:
        # groups are drawn from their own generators: split into contiguous chunks, one process each
        bounds = np.linspace(0, groups, jobs + 1).astype(int)
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=stop_workers_on_sigterm) as pool:
            parts = list(pool.map(_simulate, [manifest_path] * jobs, [settings] * jobs, [seed] * jobs,
                                  [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])], [preset] * jobs,
                                  [repeats] * jobs, [list(unknown)] * jobs, [progress] + [False] * (jobs - 1),
                                  [1] * jobs, [room_sensor] * jobs))
        records = Records(**{k: np.concatenate([getattr(part, k) for part in parts]) for k in asdict(parts[0])})
    if path is not None:
        save_npz(path, asdict(records))
    return records


def _simulate(manifest_path: Path, settings: StationSettings, seed: int, groups: range, preset: Presets,
              repeats: int, unknown: Sequence[str], progress: bool, threads: int, room_sensor: bool = True) -> Records:
    """The records of composition groups `groups` (one process's share of a run)."""
    from tqdm import tqdm

    from isic_drivers.lab.instrument import InstrumentModel
    from isic_drivers.lab.sample import Sample, blend_label, draw_nuisance
    from isic_station.acquisition.acquirer import GATE_FLAGS, spectrum_flags
    from isic_station.acquisition.quality_gate import GateThresholds, assess
    from isic_station.inference import create_backend
    from isic_station.inference.predictor import Predictor
    from isic_station.manifest import load_manifest
    from isic_station.preprocess.spectrum import preprocess_spectrum
    from isic_station.uncertainty import spectrum_quality

    manifest = load_manifest(manifest_path)
    fibres = list(manifest.fibres)
    lab_fibres = fibres + [f for f in unknown if f not in fibres]
    predictor = Predictor(manifest, create_backend("onnxruntime", manifest, {"threads": threads}), calibrated=False)
    rows: Dict[str, List[Any]] = {k: [] for k in Records.__dataclass_fields__}
    instrument = InstrumentModel()  # the lab's, as simulate_measurement measures with it: its ADC sets full scale
    try:
        for g in tqdm(groups, desc=f"calibration seed {seed}", unit="sample", disable=not progress,
                      file=sys.stderr):
            rng = np.random.default_rng([seed, g])
            base, preset_name = _draw(rng, preset, fibres, unknown)
            for _ in range(repeats):
                sample = Sample(dict(base.composition), draw_nuisance(rng, preset_name))
                m = settings.take(sample, rng, lab_fibres)
                flags = spectrum_flags(m.raw_counts, m.dark_counts, float((m.white_counts - m.dark_counts).max()),
                                       0.05, full_scale=float(instrument.adc_max))
                passed = []
                for frame in m.frames:
                    quality = assess(frame, GateThresholds(), settings.camera_um_per_px)
                    flags |= {GATE_FLAGS[r] for r in quality.reasons if r in GATE_FLAGS}
                    if quality.passed:
                        passed.append(frame)
                room = m.temperature_c if room_sensor else None
                station = predictor.predict(m.reflectance, m.wavelengths_nm, passed or None, settings.camera_um_per_px,
                                            temperature_c=room)
                signal = predictor.predict(m.reflectance, m.wavelengths_nm, None, settings.camera_um_per_px,
                                           temperature_c=room)
                rows["truth"].append([sample.composition.get(f, 0.0) for f in fibres])
                rows["unknown_share"].append(sum(v for k, v in sample.composition.items() if k not in fibres))
                rows["unknown_name"].append(",".join(sorted(k for k in sample.composition if k not in fibres)))
                rows["group"].append(g)
                rows["preset"].append(preset_name)
                rows["flags"].append(" ".join(sorted(flags | ({"missing_image"} if not passed else set()))))
                rows["station_signal_only"].append(station.signal_only)
                for name, p in (("station", station), ("signal", signal)):
                    rows[f"{name}_pred"].append([p.composition[f] for f in fibres])
                    rows[f"{name}_spread"].append([p.uncertainty[f] for f in fibres])
                    rows[f"{name}_prob"].append([p.blend_probabilities[c] for c in manifest.blend_classes])
                known = {k: v for k, v in sample.composition.items() if k in fibres}
                rows["labels"].append(blend_label(known) if not unknown else "")
                rows["spectrum"].append(preprocess_spectrum(m.reflectance, m.wavelengths_nm, manifest.spectrum))
                quality = spectrum_quality(m.reflectance)
                rows["noise"].append(quality.noise)
                rows["level"].append(quality.level)
    finally:
        predictor.backend.close()
    return Records(**{k: np.asarray(v) for k, v in rows.items()})


def add_record_options(parser: "argparse.ArgumentParser", jobs_help: str) -> None:
    """The options of a command that collects records: `--cache` (their folder) and `--jobs`."""
    parser.add_argument("--cache", type=Path, default=Path("out/cache"),
                        help="record cache folder (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=1, help=f"{jobs_help} (default: %(default)s)")


def presets_arg(text: str) -> Presets:
    """'default' or 'default=0.4,humid=0.15,...' (a mixture, as train.toml's preset table)."""
    if "=" not in text:
        return text
    return {k.strip(): float(v) for k, v in (item.split("=", 1) for item in text.split(","))}


def mixture_text(preset: Presets) -> str:
    """A preset or mixture as the text `presets_arg` reads back."""
    return preset if isinstance(preset, str) else ",".join(f"{k}={v:g}" for k, v in sorted(preset.items()))


def training_presets(manifest_raw: Mapping[str, Any]) -> Presets:
    """The preset (mixture) the model was trained on: the station's range of conditions."""
    return manifest_raw.get("training", {}).get("preset", "default")


def path_rows(records: Records, path: str, atypicality: np.ndarray) -> Dict[str, np.ndarray]:
    """The measurements and answers of `path` as rows the fits read: bimodal = the station's answer where frames
    passed, signal-only = the signal path's answer on every measurement (its tile spread is none)."""
    if path == PATH_BIMODAL:
        keep = ~records.station_signal_only
        r = records.subset(keep)
        rows = {"pred": r.station_pred, "spread": r.station_spread, "prob": r.station_prob, "truth": r.truth,
                "noise": r.noise, "flags": r.flags, "labels": r.labels, "group": r.group,
                "atypicality": atypicality[keep], "preset": r.preset, "level": r.level}
    else:
        rows = {"pred": records.signal_pred, "spread": np.zeros_like(records.signal_spread),
                "prob": records.signal_prob, "truth": records.truth, "noise": records.noise, "flags": records.flags,
                "labels": records.labels, "group": records.group, "atypicality": atypicality,
                "preset": records.preset, "level": records.level}
    rows["flag_key"] = np.array([flag_key(path, text.split()) for text in rows["flags"]], dtype=object)
    return rows


def apply_records(calibration: Any, records: Records, signal_only: bool = False) -> Dict[str, np.ndarray]:
    """The station's answer for each record as `isic_station.uncertainty` calibrates it (with
    `signal_only`, the signal-only path's answer instead, as if the camera had failed).

    {intervals [N, F, 2], confidence [N], correct [N], unknown [N] bool, signal_only [N]}.
    """
    fibres, classes = calibration.fibres, calibration.blend_classes
    pred, spread, prob = ((records.signal_pred, records.signal_spread, records.signal_prob) if signal_only
                          else (records.station_pred, records.station_spread, records.station_prob))
    out: Dict[str, List[Any]] = {"intervals": [], "decision": [], "confidence": [], "correct": [], "unknown": []}
    for i in range(len(records)):
        path = PATH_SIGNAL_ONLY if signal_only or records.station_signal_only[i] else PATH_BIMODAL
        c = calibration.apply(path, dict(zip(fibres, pred[i])), dict(zip(fibres, spread[i])),
                              dict(zip(classes, prob[i])), records.spectrum[i],
                              SpectrumQuality(records.noise[i], records.level[i]), records.flags[i].split())
        out["intervals"].append([c.interval_95[f] for f in fibres])
        out["decision"].append([c.decision_interval_95[f] for f in fibres])
        out["confidence"].append(c.confidence)
        out["correct"].append(classes[int(np.argmax(prob[i]))] == records.labels[i])
        out["unknown"].append(c.unknown_fibre)
    arrays = {k: np.asarray(v) for k, v in out.items()}
    arrays["signal_only"] = np.asarray(records.station_signal_only)
    return arrays
