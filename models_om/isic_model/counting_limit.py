"""`isic-model counting-limit`: the best composition any image reader could get from the fibres in view.

A microscope measures a blend by counting fibres: how many of each type cross the frames, turned into
mass fractions through density and diameter (the lab draws the fibres in view exactly that way, see
`isic_drivers.lab.microscope.draw_fibres_in_view`). With a few dozen fibres per measurement the
counts themselves scatter around the true shares, so even a reader that names every fibre in every
frame correctly has an error floor. This command measures that floor for the station's settings (or
others given on the command line): for each sample it draws the fibres the station's frames would
show, and estimates the composition as the posterior mean given those counts and the lab's own
prior over compositions (Monte Carlo over the prior, with the blend's fibres known). It also counts
the samples where some fibre of the blend has no fibre in view at all, which no image model can
then name.

It is an oracle for the image side only: the spectrum adds information on top (a lot for
synthetic-cellulose blends, little for cotton/linen), so a bimodal model can beat it on some blends,
but not on blends the spectrum cannot separate.
"""

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from isic_common.errors import ConfigError
from isic_model import SHIPPED_MANIFEST
from isic_model.scoring import composition_figures
from isic_station.manifest import load_manifest
from isic_station.preprocess.image import ImageParams

log = logging.getLogger(__name__)

PRIOR_DRAWS = 4000


def register(subparsers: "argparse._SubParsersAction") -> None:
    """Add `counting-limit`."""
    cmd = subparsers.add_parser(
        "counting-limit",
        help="the composition error a perfect fibre counter would make with the station's frames",
        description="Draw held-out samples, count the fibres of each type that the station's microscope "
                    "frames would show (exactly as the virtual lab draws them), and report the composition "
                    "MAE of the best estimate from those counts (posterior mean under the lab's prior), in "
                    "the layout of `isic-model evaluate`, for each --frames value. The floor any image "
                    "model meets with these station settings; the spectrum adds to it.")

    cmd.add_argument("--model", type=Path, default=SHIPPED_MANIFEST,
                     help="manifest (or its folder) whose station settings to use (default: the shipped model)")
    cmd.add_argument("--seed", type=int, default=1001, help="seed of the samples (default: %(default)s)")
    cmd.add_argument("--samples", type=int, default=400, help="number of samples (default: %(default)s)")
    cmd.add_argument("--preset", default="default", help="lab preset (default: %(default)s)")
    cmd.add_argument("--frames", default=None,
                     help="comma-separated frames per measurement to compare, e.g. 4,8,16 "
                          "(default: the manifest's station n_frames)")
    cmd.add_argument("--frame-px", type=int, default=None, help="frame side in px (default: the manifest's)")
    cmd.add_argument("--um-per-px", type=float, default=None, help="camera scale (default: the manifest's)")
    cmd.add_argument("--json", action="store_true", help="print one JSON object")
    cmd.set_defaults(handler=_counting_limit_command)


class _Prior:
    """Compositions drawn from the lab's prior for one set of fibres, with their expected count shares."""

    def __init__(self, present: Sequence[str], alpha: float, seed: int) -> None:
        from isic_drivers.lab.fibres import load_fibres
        from isic_drivers.lab.microscope import count_weights
        from isic_drivers.lab.sample import draw_composition

        subset = load_fibres().subset(list(present))
        rng = np.random.default_rng(seed)
        draws = [draw_composition(rng, subset, len(present), alpha) for _ in range(PRIOR_DRAWS)]
        self.fractions = np.array([[d[n] for n in present] for d in draws])
        shares = [count_weights(d, subset) for d in draws]
        self.log_shares = np.log(np.array([[s[n] for n in present] for s in shares]))

    def posterior_mean(self, counts: np.ndarray) -> np.ndarray:
        """E[fractions | counts] for multinomial counts of the fibres in view."""
        log_like = self.log_shares @ counts
        weights = np.exp(log_like - log_like.max())
        return weights @ self.fractions / weights.sum()


class CountingOracle:
    """The posterior-mean composition from fibre counts, with the blend's fibres known (priors cached per blend)."""

    def __init__(self, fibres: Sequence[str], preset: str = "default") -> None:
        from isic_drivers.lab.sample import PRESETS

        self.fibres = list(fibres)
        self.alpha = float(PRESETS[preset].get("dirichlet_alpha", 1.0))
        self._priors: Dict[Tuple[str, ...], _Prior] = {}
        self.predictions: List[List[float]] = []
        self.in_view: List[int] = []
        self.unseen = 0

    def add(self, composition: Mapping[str, float], frame_counts: Sequence[Mapping[str, int]]) -> None:
        """Estimate one sample's composition from its fibre counts per frame (summed over its frames)."""
        present = tuple(n for n in self.fibres if composition.get(n, 0.0) > 0)
        seen = np.array([float(sum(counts.get(n, 0) for counts in frame_counts)) for n in present])
        self.in_view.append(int(seen.sum()))
        self.unseen += int((seen == 0).any())
        if present not in self._priors:
            self._priors[present] = _Prior(present, self.alpha, seed=len(self._priors))
        estimate = dict(zip(present, self._priors[present].posterior_mean(seen)))
        self.predictions.append([estimate.get(n, 0.0) for n in self.fibres])

    def figures(self, truth: np.ndarray, labels: Sequence[str]) -> Dict[str, Any]:
        """The `evaluate` composition figures, the fibres in view and the share of samples with a type unseen."""
        return dict(
            composition_figures(np.array(self.predictions), truth, labels, self.fibres),
            fibres_in_view={"p10": float(np.percentile(self.in_view, 10)),
                            "median": float(np.median(self.in_view)),
                            "p90": float(np.percentile(self.in_view, 90))},
            samples_with_a_fibre_type_unseen=round(self.unseen / max(len(self.predictions), 1), 4),
        )


def counting_limit(
    settings: Any, fibres: Sequence[str], seed: int, samples: int, preset: str = "default"
) -> Dict[str, Any]:
    """MAE figures (as `evaluate`) of the posterior mean from the fibre counts in `settings.n_frames` frames."""
    from isic_drivers.lab.fibres import load_fibres
    from isic_drivers.lab.microscope import draw_fibres_in_view
    from isic_drivers.lab.sample import draw_sample

    all_fibres = load_fibres()
    oracle = CountingOracle(fibres, preset)
    truths, labels = [], []
    for i in range(samples):
        rng = np.random.default_rng([seed, i])
        sample = draw_sample(rng, preset, fibres=list(fibres))
        frame_counts = []
        for _ in range(settings.n_frames):
            names, kinds = draw_fibres_in_view(sample, rng, settings.frame_px, settings.frame_px,
                                               settings.camera_um_per_px, all_fibres)
            frame_counts.append({name: int(np.count_nonzero(kinds == i)) for i, name in enumerate(names)})
        oracle.add(sample.composition, frame_counts)
        truths.append([sample.composition.get(n, 0.0) for n in fibres])
        labels.append("/".join(n for n in fibres if sample.composition.get(n, 0.0) > 0))
    return dict(oracle.figures(np.array(truths), labels), n_frames=settings.n_frames)


def _settings_list(manifest: Mapping[str, Any], args: argparse.Namespace) -> List[Any]:
    from isic_model.data import StationSettings

    base = StationSettings(**manifest.get("training", {}).get("station", {}))
    if args.frame_px is not None:
        base = replace(base, frame_px=args.frame_px)
    if args.um_per_px is not None:
        base = replace(base, camera_um_per_px=args.um_per_px)
    frames = [int(f) for f in args.frames.split(",")] if args.frames else [base.n_frames]
    return [replace(base, n_frames=f) for f in frames]


def _model_input_share(manifest: Mapping[str, Any], settings: Any) -> float:
    """Share of the frames' area that the model's tiles cover at most (it keeps the best `tiles_per_measurement`,
    or up to `max_tiles`)."""
    image = manifest["image"]
    tile_area = (image["tile_px"] * image["um_per_px"]) ** 2
    frame_area = (settings.frame_px * settings.camera_um_per_px) ** 2
    rows = ImageParams.from_manifest(image).most_rows
    return min(1.0, rows * tile_area / (settings.n_frames * frame_area))


def _counting_limit_command(args: argparse.Namespace) -> int:
    path = args.model / "manifest.json" if args.model.is_dir() else args.model
    manifest = load_manifest(path).raw
    if args.samples < 1:
        raise ConfigError("--samples must be >= 1")
    try:
        settings_list = _settings_list(manifest, args)
    except ValueError:
        raise ConfigError(f"--frames {args.frames!r}: expected comma-separated whole numbers, e.g. 4,8,16") from None
    if any(s.n_frames < 1 for s in settings_list):
        raise ConfigError("--frames values must be >= 1")
    fibres = list(manifest["fibres"])
    rows = []
    for settings in settings_list:
        start = time.perf_counter()
        figures = counting_limit(settings, fibres, args.seed, args.samples, args.preset)
        figures.update(frame_px=settings.frame_px, camera_um_per_px=settings.camera_um_per_px,
                       model_input_area_share=round(_model_input_share(manifest, settings), 3))
        log.info("counting limit, %d frames: %.1f s", settings.n_frames, time.perf_counter() - start)
        rows.append(figures)
    result = {"seed": args.seed, "samples": args.samples, "preset": args.preset, "limits": rows}
    if args.json:
        print(json.dumps(result))
        return 0
    blends = sorted({b for row in rows for b in row["mae_per_blend"]})
    print(f"Counting limit (perfect fibre counter; posterior mean under the lab's prior), preset {args.preset}, "
          f"seed {args.seed}, {args.samples} samples")
    print(f"{'frames':>6} {'px':>5} {'um/px':>5} {'fibres p10/med/p90':>19} {'unseen':>7} {'model sees':>10} "
          f"{'MAE':>6}  " + " ".join(f"{b:>17}" for b in blends))
    for row in rows:
        seen = row["fibres_in_view"]
        print(f"{row['n_frames']:>6} {row['frame_px']:>5} {row['camera_um_per_px']:>5} "
              f"{seen['p10']:>7.0f}/{seen['median']:>4.0f}/{seen['p90']:>4.0f}   "
              f"{row['samples_with_a_fibre_type_unseen']:>7.1%} {row['model_input_area_share']:>10.0%} "
              f"{row['mae']:>6.3f}  " + " ".join(f"{row['mae_per_blend'].get(b, float('nan')):>17.3f}"
                                                for b in blends))
    print("unseen: samples where some fibre of the blend has no fibre in view; model sees: share of the frames' "
          "area in the model's tiles")
    return 0
