"""A fabric sample: its fibre composition and the nuisance state it is measured in.

The nuisance state is everything other than the fibres that changes what the station sees: the
fabric (moisture, scatter, thickness, dye, finish, temperature), the spectrometer (wavelength
shift, stray light, noise, dark current, lamp) and the microscope (fibre density, focus,
illumination, dust, camera noise). Named presets in `presets.json` give the distributions that
training and evaluation draw from; `overrides` pin single parameters.
"""

import itertools
import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from isic_drivers.lab.fibres import FibreSet, LabConfigError, load_fibres, resolve_fibres

PRESETS_PATH = Path(__file__).resolve().parent / "presets.json"


@dataclass(frozen=True)
class Nuisance:
    """Everything but the fibres that shapes a measurement; defaults are a clean nominal state."""

    humidity: float = 0.65               # room relative humidity 0..1 (moisture = regain x isotherm)
    temperature_c: float = 22.0          # fabric temperature (shifts the water bands)
    scatter_a: float = 0.0               # additive absorbance offset   A = a + b*A0 + c*x + d*x^2
    scatter_b: float = 1.0               # multiplicative path-length factor
    scatter_c: float = 0.0               # linear baseline, x = (lambda - 1300 nm) / 1000 nm
    scatter_d: float = 0.0               # quadratic baseline
    thickness_mm: float = 2.0            # fabric thickness: thin fabrics let light through to the backing
    backing_reflectance: float = 0.05    # what is behind the fabric (a dark probe holder)
    dye_darkness: float = 0.0            # 0 undyed .. 1 black
    dye_hue_deg: float = 0.0             # colour of the dye in the microscope
    dye_carbon: float = 0.0              # share of the darkness from a carbon-black-like NIR absorber
    finish: float = 0.0                  # softener/coating level 0..1
    wavelength_shift_nm: float = 0.0     # instrument axis error (true = nominal + shift)
    stray_light: float = 0.0             # stray light as a fraction of the mean white signal
    detector_noise: float = 1.0          # multiplier on the instrument's read noise
    dark_current_factor: float = 1.0     # multiplier on the instrument's dark current (warm detector)
    lamp_intensity: float = 1.0          # lamp output relative to nominal (ageing)
    lamp_drift: float = 0.0              # relative lamp change between the white reference and the sample
    spot_jitter: float = 0.0             # spot-to-spot relative variation of the scatter path length
    fibre_density_per_mm: float = 30.0   # fibres crossing the microscope field per mm of frame width
    defocus_um: float = 0.0              # microscope defocus blur (sigma, micrometres)
    illumination_unevenness: float = 0.1  # vignetting/gradient depth of the microscope light
    dust_per_frame: float = 0.0          # mean number of dust specks per frame
    camera_noise: float = 1.0            # camera noise (sd, 8-bit levels)


NUISANCE_KEYS = tuple(f.name for f in fields(Nuisance))
# The instrument's own state, which its dark and white references share with the samples measured after them
# (the wavelength axis error is the instrument's too, but a reference does not take it away: it stays per sample).
REFERENCED_KEYS = ("stray_light", "detector_noise", "dark_current_factor", "lamp_intensity")
# The room, fabric and instrument conditions plants meet beyond the lab's (the `plant` preset widens these):
# a model's manifest records the range of each that its training met (`trained_ranges`).
CONDITION_KEYS = ("temperature_c", "humidity", "wavelength_shift_nm", "dye_darkness", "dye_carbon", "defocus_um",
                  "lamp_drift", "lamp_intensity")


@dataclass(frozen=True)
class Sample:
    """A fabric: mass fractions over one to three fibres (summing to 1) and its nuisance state."""

    composition: Dict[str, float]
    nuisance: Nuisance = Nuisance()
    sample_id: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict; `Sample.from_dict` reads it back."""
        return {"composition": dict(self.composition), "nuisance": asdict(self.nuisance),
                "sample_id": self.sample_id}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Sample":
        """Read `to_dict()` output; unknown nuisance keys and bad compositions are errors."""
        nuisance = data.get("nuisance", {})
        unknown = set(nuisance) - set(NUISANCE_KEYS)
        if unknown:
            raise LabConfigError(f"unknown nuisance key(s) {sorted(unknown)}; expected some of {list(NUISANCE_KEYS)}")
        composition = {str(k): float(v) for k, v in data["composition"].items()}
        check_composition(composition)
        return cls(composition, Nuisance(**{k: float(v) for k, v in nuisance.items()}), data.get("sample_id"))


def check_composition(composition: Mapping[str, float]) -> None:
    """Raise LabConfigError unless the fractions are non-negative and sum to 1."""
    values = list(composition.values())
    if not values or min(values) < 0 or abs(sum(values) - 1.0) > 1e-6:
        raise LabConfigError(f"composition {dict(composition)} must be non-negative fractions summing to 1")


def blend_label(sample: Union[Sample, Mapping[str, float]], fibres: Optional[FibreSet] = None) -> str:
    """'cotton/polyester': the fibres present, in the fibre set's order."""
    composition = sample.composition if isinstance(sample, Sample) else sample
    order = list(fibres if fibres is not None else load_fibres())
    present = [n for n, v in composition.items() if v > 0]
    return "/".join(sorted(present, key=order.index))


def blend_classes(fibres: Optional[FibreSet] = None, max_fibres: int = 3) -> List[str]:
    """Every blend label of one to `max_fibres` fibres of the set, in a fixed order."""
    names = list(resolve_fibres(fibres))
    return ["/".join(combo) for k in range(1, max_fibres + 1) for combo in itertools.combinations(names, k)]


def composition_vector(sample: Sample, fibres: Optional[FibreSet] = None) -> np.ndarray:
    """The composition as float32 fractions in the fibre set's order (fibres outside the set are an error)."""
    names = list(resolve_fibres(fibres))
    outside = set(sample.composition) - set(names)
    if outside:
        raise LabConfigError(f"sample has fibre(s) {sorted(outside)} outside the set {names}")
    return np.array([sample.composition.get(n, 0.0) for n in names], dtype=np.float32)


def _load_presets() -> Dict[str, Dict[str, Any]]:
    raw = json.loads(PRESETS_PATH.read_text(encoding="utf-8"))
    resolved: Dict[str, Dict[str, Any]] = {}
    for name, spec in raw.items():
        if name.startswith("_"):
            continue
        base = dict(raw[spec["base"]]) if "base" in spec else {}
        merged = {**base, **{k: v for k, v in spec.items() if k not in ("base", "params")}}
        merged["params"] = {**base.get("params", {}), **spec["params"]}
        unknown = set(merged["params"]) - set(NUISANCE_KEYS)
        if unknown:
            raise LabConfigError(f"preset {name!r} in {PRESETS_PATH} has unknown parameter(s) {sorted(unknown)}")
        resolved[name] = merged
    return resolved


PRESETS: Dict[str, Dict[str, Any]] = _load_presets()


def _distribution(spec: Any, key: str) -> Optional[Mapping[str, Any]]:
    """A preset parameter's distribution (uniform, loguniform or normal, maybe with p_zero and clip), None for
    a fixed number; LabConfigError naming the parameter for anything else."""
    if isinstance(spec, (int, float)):
        return None
    if not isinstance(spec, Mapping):
        raise LabConfigError(f"parameter {key!r}: {spec!r} is neither a number nor a distribution")
    if not any(name in spec for name in ("uniform", "loguniform", "normal")):
        raise LabConfigError(f"parameter {key!r}: unknown distribution {spec!r} (uniform, loguniform, normal)")
    return spec


def _draw_value(rng: np.random.Generator, spec: Any, key: str) -> float:
    dist = _distribution(spec, key)
    if dist is None:
        return float(spec)
    if rng.random() < float(dist.get("p_zero", 0.0)):
        return 0.0
    if "uniform" in dist:
        lo, hi = dist["uniform"]
        return float(rng.uniform(lo, hi))
    if "loguniform" in dist:
        lo, hi = dist["loguniform"]
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    mean, sd = dist["normal"]
    lo, hi = dist.get("clip", (-math.inf, math.inf))
    return float(np.clip(rng.normal(mean, sd), lo, hi))


def typical_value(spec: Any, key: str) -> float:
    """The middle of a preset parameter's distribution: a number itself, the middle of a uniform range, the
    geometric middle of a log-uniform one, a normal's mean (clipped); 0 when it is more often 0 than not."""
    dist = _distribution(spec, key)
    if dist is None:
        return float(spec)
    if float(dist.get("p_zero", 0.0)) > 0.5:
        return 0.0
    if "uniform" in dist:
        return float(sum(dist["uniform"]) / 2.0)
    if "loguniform" in dist:
        lo, hi = dist["loguniform"]
        return float(math.sqrt(lo * hi))
    lo, hi = dist.get("clip", (-math.inf, math.inf))
    return float(np.clip(dist["normal"][0], lo, hi))


def value_range(spec: Any, key: str) -> Tuple[float, float]:
    """The values a preset parameter can take: a number itself, a (log-)uniform range, a normal's clip (its mean
    +- 4 sd without one), with 0 when `p_zero` can give it."""
    dist = _distribution(spec, key)
    if dist is None:
        return float(spec), float(spec)
    if "uniform" in dist or "loguniform" in dist:
        lo, hi = dist["uniform"] if "uniform" in dist else dist["loguniform"]
    else:
        mean, sd = dist["normal"]
        lo, hi = dist.get("clip", (mean - 4.0 * sd, mean + 4.0 * sd))
    if float(dist.get("p_zero", 0.0)) > 0.0:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    return float(lo), float(hi)


def trained_ranges(weights: Union[str, Mapping[str, float]]) -> Dict[str, List[float]]:
    """Per `CONDITION_KEYS` parameter, [low, high] over the presets a training mixture draws from (weight > 0;
    a preset's name alone: that one)."""
    weights = {weights: 1.0} if isinstance(weights, str) else weights
    unknown = [name for name in weights if name not in PRESETS]
    if unknown:
        raise LabConfigError(f"unknown preset(s) {', '.join(unknown)}; known: {', '.join(PRESETS)}")
    ranges: Dict[str, List[float]] = {}
    for name in (name for name, weight in weights.items() if float(weight) > 0.0):
        params = PRESETS[name]["params"]
        for key in CONDITION_KEYS:
            lo, hi = value_range(params[key], key) if key in params else (getattr(Nuisance(), key),) * 2
            seen = ranges.setdefault(key, [lo, hi])
            seen[0], seen[1] = min(seen[0], lo), max(seen[1], hi)
    return ranges


def instrument_state(preset: str = "default") -> Dict[str, float]:
    """The state of one instrument in `preset`'s conditions: each of `REFERENCED_KEYS` at its typical value.

    The lab draws these per sample and takes each sample's dark and white references in the same state
    (`simulate_measurement`): the station's reflectance divides them away. A bench instrument has one lamp
    and one detector, referenced once before the line: pinned to this state (the emulator's overrides), its
    references and its samples share it, as in the lab. Left per sample, a low_snr sample's 10-30 % lamp
    was divided by a white taken at the full lamp: 3-10 times too dark a spectrum, which the lab never made.
    """
    if preset not in PRESETS:
        raise LabConfigError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    params = PRESETS[preset]["params"]
    return {key: typical_value(params[key], key) for key in REFERENCED_KEYS if key in params}


def draw_nuisance(rng: np.random.Generator, preset: str = "default",
                  overrides: Optional[Mapping[str, Any]] = None) -> Nuisance:
    """A nuisance state drawn from a named preset, with `overrides` pinning single parameters."""
    if preset not in PRESETS:
        raise LabConfigError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    params = dict(PRESETS[preset]["params"])
    unknown = set(overrides or {}) - set(NUISANCE_KEYS)
    if unknown:
        raise LabConfigError(f"unknown nuisance parameter(s) {sorted(unknown)}; known: {', '.join(NUISANCE_KEYS)}")
    params.update(overrides or {})
    # Draw in the dataclass order so a seed gives the same state whatever the dict order.
    return Nuisance(**{key: _draw_value(rng, params[key], key) for key in NUISANCE_KEYS if key in params})


def draw_composition(rng: np.random.Generator, fibres: FibreSet, n_fibres: int,
                     alpha: float = 1.0) -> Dict[str, float]:
    """Mass fractions over `n_fibres` distinct fibres of the set, each within its min/max fraction."""
    names = list(fibres)
    if not 1 <= n_fibres <= min(3, len(names)):
        raise LabConfigError(f"n_fibres must be 1..{min(3, len(names))}, got {n_fibres}")
    chosen = [names[i] for i in sorted(rng.choice(len(names), size=n_fibres, replace=False))]
    if n_fibres == 1:
        return {chosen[0]: 1.0}
    # Minor fibres (a max fraction below 1, e.g. elastane 2-8 %) get their share first.
    fractions: Dict[str, float] = {}
    for name in chosen:
        fibre = fibres[name]
        if fibre.max_fraction < 1.0:
            fractions[name] = float(rng.uniform(fibre.min_fraction, fibre.max_fraction))
    major = [n for n in chosen if n not in fractions]
    if not major:  # only minor fibres drawn: scale them up to a whole
        total = sum(fractions.values())
        return {n: fractions[n] / total for n in chosen}
    rest = 1.0 - sum(fractions.values())
    floors = np.array([fibres[n].min_fraction for n in major])
    free = max(rest - floors.sum(), 0.0)
    shares = floors + free * rng.dirichlet(np.full(len(major), alpha)) if len(major) > 1 else np.array([rest])
    shares = shares * rest / shares.sum()
    fractions.update({n: float(s) for n, s in zip(major, shares)})
    return {n: fractions[n] for n in chosen}


def draw_sample(rng: np.random.Generator, preset: str = "default", overrides: Optional[Mapping[str, Any]] = None,
                fibres: Optional[Union[FibreSet, Sequence[str]]] = None, n_fibres: Optional[int] = None,
                sample_id: Optional[str] = None) -> Sample:
    """A random sample: 1-3 fibres of the set (the station's five by default) and a preset's nuisance."""
    fibre_set = resolve_fibres(fibres)
    if preset not in PRESETS:
        raise LabConfigError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    spec = PRESETS[preset]
    if n_fibres is None:
        p = np.array(spec["n_fibres_p"], dtype=float)[: len(fibre_set)]
        n_fibres = int(rng.choice(np.arange(1, len(p) + 1), p=p / p.sum()))
    composition = draw_composition(rng, fibre_set, n_fibres, float(spec.get("dirichlet_alpha", 1.0)))
    return Sample(composition, draw_nuisance(rng, preset, overrides), sample_id)


def with_nuisance(sample: Sample, **changes: float) -> Sample:
    """The same sample with some nuisance parameters changed (e.g. `humidity=0.9`)."""
    unknown = set(changes) - set(NUISANCE_KEYS)
    if unknown:
        raise LabConfigError(f"unknown nuisance parameter(s) {sorted(unknown)}")
    return replace(sample, nuisance=replace(sample.nuisance, **changes))


def parse_overrides(items: Sequence[str]) -> Dict[str, float]:
    """`["humidity=0.9", ...]` (command-line `--set K=V`) -> {"humidity": 0.9}; bad items are errors."""
    result: Dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in NUISANCE_KEYS:
            raise LabConfigError(f"--set {item!r}: expected KEY=NUMBER with KEY one of {', '.join(NUISANCE_KEYS)}")
        try:
            result[key] = float(value)
        except ValueError:
            raise LabConfigError(f"--set {item!r}: {value!r} is not a number") from None
    return result
