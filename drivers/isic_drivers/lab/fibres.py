"""The fibre set of the virtual lab, loaded from `fibres.json` (data, not code).

A fibre is its NIR absorption bands (from its chemical family, weighted by crystallinity tags,
plus its own extra bands), its bulk properties (density, diameter, moisture regain, scatter) and
the morphology the virtual microscope draws. Adding wool or elastane to the station is adding an
entry to the JSON file; the blend label set and composition vectors follow the loaded set.
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from isic_common.errors import ConfigError

DEFAULT_FIBRES_PATH = Path(__file__).resolve().parent / "fibres.json"

# d[um] = 11.28 * sqrt(dtex / density[g/cm3]) for a round filament (nir-textiles.md).
_DTEX_DIAMETER_FACTOR = 11.28


class LabConfigError(ConfigError, ValueError):
    """A lab data file or a lab parameter (preset, override, fibre name) is wrong.

    A ValueError for library callers and a ConfigError (exit code 78) on the command line.
    """


@dataclass(frozen=True)
class Band:
    """One absorption band: pseudo-Voigt centre and full width at half maximum, effective strength."""

    centre_nm: float
    fwhm_nm: float
    strength: float


@dataclass(frozen=True)
class Absorber:
    """A non-fibre absorber of a fabric (water, finish): its bands and K per unit amount."""

    bands: Tuple[Band, ...]
    absorptivity: float
    params: Dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Fibre:
    """One fibre type: NIR bands, bulk properties and microscope morphology."""

    name: str
    family: str
    density_g_cm3: float
    diameter_um: Tuple[float, float]
    moisture_regain: float
    min_fraction: float
    max_fraction: float
    bands: Tuple[Band, ...]
    base_k: float
    scatter: Tuple[float, float]
    dye_uptake: float
    morphology: Dict[str, Any]

    @property
    def mean_square_diameter_um2(self) -> float:
        """E[d^2] for d uniform on the diameter range: what a cross-section's area scales with."""
        lo, hi = self.diameter_um
        return (lo * lo + lo * hi + hi * hi) / 3.0


class FibreSet(Mapping):
    """The loaded fibre set: an ordered name -> Fibre mapping plus the physics shared by all fibres.

    Behaves as the `Dict[str, Fibre]` of the lab contract; the order is the file's order, which is
    the order of composition vectors and of the fibres in a blend label.
    """

    def __init__(self, fibres: Dict[str, Fibre], physics: Dict[str, Any], absorbers: Dict[str, Absorber],
                 dye: Dict[str, float], default_names: Sequence[str], path: Path) -> None:
        self._fibres = fibres
        self.physics = physics
        self.absorbers = absorbers
        self.dye = dye
        self.default_names = tuple(default_names)
        self.path = path

    def __getitem__(self, name: str) -> Fibre:
        try:
            return self._fibres[name]
        except KeyError:
            raise LabConfigError(
                f"unknown fibre {name!r}: {self.path} defines {', '.join(self._fibres)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._fibres)

    def __len__(self) -> int:
        return len(self._fibres)

    def require(self, names: Sequence[str]) -> None:
        """Raise LabConfigError naming any of `names` the set does not define."""
        unknown = [n for n in names if n not in self._fibres]
        if unknown:
            raise LabConfigError(f"unknown fibre(s) {unknown}: {self.path} defines {', '.join(self._fibres)}")

    def subset(self, names: Sequence[str]) -> "FibreSet":
        """The same physics with only `names` (kept in file order)."""
        self.require(names)
        chosen = {n: f for n, f in self._fibres.items() if n in set(names)}
        return FibreSet(chosen, self.physics, self.absorbers, self.dye, list(chosen), self.path)

    def default_set(self) -> "FibreSet":
        """The station's fibre set (the file's `default_set`)."""
        return self.subset(self.default_names)


def _bands(rows: Sequence[Sequence[Any]], overtone_ratio: float, weights: Mapping[str, float],
           scale: float, where: str) -> List[Band]:
    bands = []
    for row in rows:
        if len(row) != 5:
            raise LabConfigError(f"{where}: band {row!r} must be [centre_nm, fwhm_nm, strength, order, tag]")
        centre, fwhm, strength, order, tag = row
        weight = 1.0 if tag is None else float(weights.get(tag, 0.0))
        decay = overtone_ratio ** max(int(order) - 1, 0)
        if weight > 0:
            bands.append(Band(float(centre), float(fwhm), float(strength) * decay * weight * scale))
    return bands


def _diameter(entry: Mapping[str, Any]) -> Tuple[float, float]:
    if "diameter_um" in entry:
        lo, hi = entry["diameter_um"]
    elif "dtex" in entry:
        lo, hi = (_DTEX_DIAMETER_FACTOR * math.sqrt(t / entry["density_g_cm3"]) for t in entry["dtex"])
    else:
        raise LabConfigError(f"fibre {entry.get('name')!r} needs 'diameter_um' or 'dtex'")
    return float(lo), float(hi)


def _fibre(entry: Mapping[str, Any], families: Mapping[str, Any], ratio: float) -> Fibre:
    name = entry.get("name")
    try:
        family_rows = families[entry["family"]]
        where = f"fibre {name!r}"
        scale = float(entry.get("absorptivity", 1.0))
        weights = entry.get("tag_weights", {})
        bands = _bands(family_rows, ratio, weights, scale, where)
        bands += _bands(entry.get("extra_bands", []), ratio, weights, scale, where)
        return Fibre(
            name=str(name),
            family=str(entry["family"]),
            density_g_cm3=float(entry["density_g_cm3"]),
            diameter_um=_diameter(entry),
            moisture_regain=float(entry["moisture_regain"]),
            min_fraction=float(entry.get("min_fraction", 0.1)),
            max_fraction=float(entry.get("max_fraction", 1.0)),
            bands=tuple(bands),
            base_k=float(entry.get("base_k", 0.004)),
            scatter=(float(entry["scatter"][0]), float(entry["scatter"][1])),
            dye_uptake=float(entry.get("dye_uptake", 1.0)),
            morphology=dict(entry["morphology"]),
        )
    except KeyError as exc:
        raise LabConfigError(f"fibre {name!r}: missing key {exc.args[0]!r} (or unknown family)") from None


def _parse_fibre_set(data: Mapping[str, Any], file: Path) -> FibreSet:
    physics = data["physics"]
    ratio = float(physics["overtone_ratio"])
    fibres = {}
    for entry in data["fibres"]:
        fibre = _fibre(entry, data["families"], ratio)
        fibres[fibre.name] = fibre
    absorbers = {}
    for key in ("water", "finish"):
        spec = data["absorbers"][key]
        params = {k: float(v) for k, v in spec.items() if k not in ("bands", "absorptivity", "_about")}
        absorbers[key] = Absorber(tuple(_bands(spec["bands"], ratio, {}, 1.0, key)),
                                  float(spec["absorptivity"]), params)
    dye = {k: float(v) for k, v in data["absorbers"]["dye"].items() if k != "_about"}
    return FibreSet(fibres, physics, absorbers, dye, data.get("default_set", list(fibres)), file)


_CACHE: Dict[Path, Tuple[float, FibreSet]] = {}


def load_fibres(path: Optional[Union[str, Path]] = None) -> FibreSet:
    """Load the fibre set (default: the packaged `fibres.json`); cached per file until it changes."""
    file = Path(path) if path is not None else DEFAULT_FIBRES_PATH
    try:
        mtime = file.stat().st_mtime
        cached = _CACHE.get(file)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        data = json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise LabConfigError(f"cannot read fibre set {file}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise LabConfigError(f"fibre set {file} is not valid JSON: {exc}") from None
    try:
        result = _parse_fibre_set(data, file)
    except KeyError as exc:
        raise LabConfigError(f"fibre set {file}: missing key {exc.args[0]!r}") from None
    result.require(result.default_names)
    _CACHE[file] = (mtime, result)
    return result


def resolve_fibres(fibres: Optional[Union[FibreSet, Sequence[str]]]) -> FibreSet:
    """A FibreSet from None (the station's default set), a FibreSet, or a list of fibre names."""
    if fibres is None:
        return load_fibres().default_set()
    if isinstance(fibres, FibreSet):
        return fibres
    return load_fibres().subset(list(fibres))
