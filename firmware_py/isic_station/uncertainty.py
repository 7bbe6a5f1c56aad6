"""Calibrated uncertainty: per-fibre 95 % intervals, a recalibrated blend confidence, unknown fibres.

The spread of the model's answers over image tiles is far smaller than its real error, so the
station does not report it as the uncertainty. `isic-model calibrate-uncertainty` measures the
real error on held-out station-like lab data and writes the manifest's `uncertainty` object;
this module applies it (numpy only, on the board):

- Intervals: locally weighted split conformal prediction, separately for the bimodal and the
  signal-only path. A scale s = exp(offset[fibre] + weights . features) follows what makes an
  answer harder (fraction near 0.5, tile spread, spectral noise, low blend confidence, an
  atypical or dark spectrum); the
  interval is prediction +- quantile[fibre] * band_factor[band] * level_factor * s * widening, clipped
  to [0, 1].
  `quantile` is the conformal quantile of |error| / s over the calibration data (fibres present),
  which gives the 95 % coverage guarantee per fibre for data like the calibration data;
  `band_factor` then corrects it per band of the predicted fraction (the conformal quantile of
  |error| / (s quantile) within the band, Mondrian style: minor and major parts of a blend err
  more than the scale model expects, pure fibres less); `level_factor` then for spectra below and
  above `level_split` in median reflectance (dark dyes and thin fabric), and `noise_factor` for spectra
  at most and above `noise_split` (a weak lamp, a noisy detector); neither on the decision bound
  of fibres predicted absent, `absent_factor`, calibrated before them. A quality
  flag seen in the calibration data widens the interval by its measured factor, a flag it never
  saw cannot be calibrated: `refer_to_lab`.
  The standard uncertainty is the 95 % half-width over k = 1.96.
- Confidence: temperature scaling of the fused blend probabilities, p_i ** (1/T) renormalised
  (T fitted by log-likelihood on the calibration data), with its own T for noisy spectra (noise
  above `noise_split`: weak lamp, noisy detector), where the model is overconfident, and its own T
  for each set of quality flags the calibration data held often enough (`flag_temperature`, keyed
  by the sorted flags: blurred or badly exposed frames, a dim spectrum), and, where the fit found it
  worth its two parameters, its own T for clean spectra darker than `dark_split` (dark dyes err
  otherwise than bright fabric at the same noise: one T fitted on the mixture left them overconfident
  at the production settings, ECE 0.06-0.075 against 0.01 on default fabric). A station measuring more
  than the calibration data (more scans, frames or field: the production settings) errs less, so
  these temperatures leave it underconfident: a confidence profile refit at its settings
  (`confidence_profiles`, `isic-model calibrate-confidence`) replaces them there, and, where it holds
  one (`--intervals`), the interval model too: at 16 frames the model errs otherwise, not only less; and
  where it holds them (`--lots`), the lot tables below, refit on groups measured at its settings.
- Unknown fibres: the preprocessed spectrum's residual outside the principal subspace of the
  known fibres' calibration spectra (Q statistic, as SIMCA), over what known fabrics leave at
  this noise level (c0 + c1 noise^2); above the threshold (a high quantile over known fabrics of
  the same noise band, Mondrian style: one threshold over all noise levels is set by the noisiest
  spectra and misses most unknown fibres in clean ones) the sample likely holds a fibre the model
  does not know. A fibre at 20-40 % of the fabric leaves too small a residual; where the
  calibration data held fabrics with unknown fibres, a linear discriminant of the spectrum
  (`discriminant`: weights per wavelength, fitted against them) also flags, above its own
  threshold per noise band.
- Lots: `systematic[fibre]` is the standard deviation of the error a lot's mean keeps (the model's
  bias at one composition, measured over groups of fresh pieces of one composition), per blend
  class where the calibration data had enough groups of it, else overall. The bias depends on the
  conditions: dark dyes, thin fabric over the backing, humidity and a weak lamp lend it pp that
  bright clean fabric does not have. So `systematic_per_blend` comes from groups of clean, bright
  spectra (noise <= `noise_split`, median reflectance >= `level_split`) and applies to such
  results; `systematic_per_blend_noisy` from groups of all conditions, for the others. The group-mean
  errors are heavy-tailed (a cellulose blend's mean keeps 0-3 pp at most compositions and 10 pp at
  some), so 1.96 standard deviations cannot bound them: calibrations since then also hold
  `systematic_bound*`, split-conformal 95 % bounds of the error over pools of groups (the fibre's
  family and the blend's number of cellulose fibres), which the station applies instead (/ 1.96).
"""

import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

Z95 = 1.959963984540054  # coverage factor of a 95 % two-sided normal interval
PATH_BIMODAL = "bimodal"
PATH_SIGNAL_ONLY = "signal_only"
FEATURES = ("balance", "tile_spread", "spectral_noise", "blend_doubt", "atypicality", "darkness")
# Bands of the predicted fraction with their own conformal factor (minor and major parts of a blend
# err differently from pure fibres): band i holds predictions in [BAND_EDGES[i-1], BAND_EDGES[i]).
BAND_EDGES = (0.01, 0.05, 0.35, 0.65, 0.95)
# A declared fibre the lot's blend read lacks: where the calibration missed a fibre of its family at that
# share in at least MISS_RATE_LEVEL of MIN_MISS_GROUPS or more groups (or had fewer), the reading says
# nothing against the declaration and the bounds for a missed fibre apply; else it counts against it.
MISS_RATE_LEVEL = 0.05
MIN_MISS_GROUPS = 20
# Flags that say something about this measurement's quality (the others say what the station did).
QUALITY_FLAGS = ("saturation", "low_signal", "stale_reference", "missing_reference", "white_drift",
                 "blurred_image", "missing_image", "exposure", "empty_field")


class SpectrumQuality(NamedTuple):
    """What the measured spectrum says about how hard it is: its noise and its reflectance level."""

    noise: float  # robust sd of the absorbance noise
    level: float  # median reflectance (dark dyes and thin fabric over a dark backing are low)


def spectrum_quality(reflectance: np.ndarray) -> SpectrumQuality:
    """Noise (MAD of the absorbance's second difference / sqrt(6)) and median reflectance of a spectrum.

    The second difference removes the smooth bands and keeps the detector noise (white noise of
    sd sigma gives second differences of sd sigma * sqrt(6)).
    """
    refl = np.asarray(reflectance, dtype=np.float64)
    absorbance = -np.log10(np.clip(refl, 1e-3, None))
    d2 = np.diff(absorbance, 2)
    noise = float(1.4826 * np.median(np.abs(d2 - np.median(d2))) / math.sqrt(6.0))
    return SpectrumQuality(noise, float(np.median(refl)))


def scale_features(pred: np.ndarray, spread: np.ndarray, confidence: float, noise: float,
                   atypicality: float, level: float) -> np.ndarray:
    """[F, len(FEATURES)] per fibre of one measurement (logs, so the scale model is multiplicative).

    `atypicality` is the unknown-fibre score: a spectrum unlike the calibration spectra is harder;
    `level` the median reflectance (darkness = -log level).
    """
    pred = np.clip(np.asarray(pred, dtype=np.float64), 0.0, 1.0)
    n = pred.shape[0]
    return np.stack([
        np.log(np.sqrt(pred * (1.0 - pred)) + 0.01),
        np.log(np.asarray(spread, dtype=np.float64) + 0.002),
        np.full(n, math.log(max(float(noise), 0.0) + 1e-4)),
        np.full(n, 1.0 - float(confidence)),
        np.full(n, math.log(max(float(atypicality), 0.0) + 0.1)),
        np.full(n, -math.log(min(max(float(level), 1e-3), 1.0))),
    ], axis=1)


def raised_quality_flags(path: str, flags: Iterable[str]) -> List[str]:
    """The measurement's quality flags that bear on `path`'s answer (missing_image is what sends a
    measurement down the signal-only path: calibrated there as such)."""
    raised = [f for f in flags if f in QUALITY_FLAGS]
    return [f for f in raised if f != "missing_image"] if path == PATH_SIGNAL_ONLY else raised


def flag_key(path: str, flags: Iterable[str]) -> str:
    """The quality-flag set of a measurement on `path`, as `flag_temperature` keys it ('' when clean)."""
    return " ".join(sorted(set(raised_quality_flags(path, flags))))


def fraction_band(pred: np.ndarray) -> np.ndarray:
    """Index of each predicted fraction's band (0 .. len(BAND_EDGES))."""
    return np.searchsorted(np.asarray(BAND_EDGES), np.asarray(pred, dtype=np.float64), side="right")


def temper(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature-scaled probabilities: p ** (1/T), renormalised (rows of [..., K])."""
    logp = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, None)) / float(temperature)
    logp -= logp.max(axis=-1, keepdims=True)
    p = np.exp(logp)
    return p / p.sum(axis=-1, keepdims=True)


def spectrum_residual(spectrum: np.ndarray, mean: np.ndarray, components: np.ndarray) -> float:
    """Mean squared residual of the preprocessed spectrum outside the known fibres' principal subspace."""
    centred = np.asarray(spectrum, dtype=np.float64) - mean
    residual = centred - components.T @ (components @ centred)
    return float(np.mean(residual ** 2))


def unknown_fibre_score(spectrum: np.ndarray, noise: float, mean: np.ndarray, components: np.ndarray,
                        noise_model: Sequence[float]) -> float:
    """The residual over what known fabrics leave at this noise level (c0 + c1 noise^2, fitted on them)."""
    expected = float(noise_model[0]) + float(noise_model[1]) * float(noise) ** 2
    return spectrum_residual(spectrum, mean, components) / max(expected, 1e-12)


@dataclass(frozen=True)
class MissedFibres:
    """The calibration's `systematic_bound_missed`: for a lot whose blend read lacks a declared fibre."""

    missed: Dict[str, float]  # fibre -> 95 % bound of the lot error of a fibre the blend read lacks
    beside: Dict[str, float]  # fibre -> that of a fibre read beside a missed one (it took the missed share)
    miss_rate: Dict[str, List[Tuple[float, float, int, int]]]  # fibre -> (low, high share, groups, missed)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "MissedFibres":
        return cls(missed={str(f): float(v) for f, v in doc["missed"].items()},
                   beside={str(f): float(v) for f, v in doc["beside"].items()},
                   miss_rate={str(f): [(float(b["share"][0]), float(b["share"][1]), int(b["groups"]), int(b["missed"]))
                                       for b in bands] for f, bands in doc.get("miss_rate", {}).items()})

    def missable(self, fibre: str, share: float) -> bool:
        """Whether the calibration missed `fibre` at this share often enough (or was too seldom met there) that a
        reading without it says nothing against a declaration holding it."""
        for low, high, groups, missed in self.miss_rate.get(fibre, []):
            if low <= share < high:
                return groups < MIN_MISS_GROUPS or missed >= MISS_RATE_LEVEL * groups
        return True


@dataclass(frozen=True)
class PathCalibration:
    """One path's interval model and temperature (the manifest's `uncertainty.paths.<path>`)."""

    offset: np.ndarray  # [F]
    weights: np.ndarray  # [len(FEATURES)]
    quantile: np.ndarray  # [F] conformal quantile of |error| / scale
    band_factor: np.ndarray  # [len(BAND_EDGES) + 1] conformal factor per predicted-fraction band
    absent_factor: float  # band 0's factor over every fibre predicted there, present or not (decisions)
    widening: Dict[str, float]  # quality flag -> factor >= 1 (flags measured in the calibration data)
    temperature: float
    noisy_temperature: float  # T for spectra noisier than noise_split
    noise_split: float
    level_split: float  # median reflectance below which a result takes the lot table of all conditions
    flag_temperature: Dict[str, float]  # quality-flag set (sorted, space-joined) -> its own T
    systematic: np.ndarray  # [F] standard deviation of the error a lot's mean keeps
    systematic_per_blend: Dict[str, np.ndarray]  # blend class -> [F] from groups of clean, bright spectra
    systematic_per_blend_noisy: Dict[str, np.ndarray]  # blend class -> [F] from all groups, for noisy spectra
    # 95 % bounds of the error a lot's mean keeps (conformal, tail-aware); empty in calibrations before them
    systematic_bound: Optional[np.ndarray] = None  # [F] over all groups
    systematic_bound_per_blend: Optional[Dict[str, np.ndarray]] = None  # blend class -> [F], clean bright spectra
    systematic_bound_per_blend_noisy: Optional[Dict[str, np.ndarray]] = None  # blend class -> [F], all conditions
    level_factor: Tuple[float, float] = (1.0, 1.0)  # conformal factor for spectra at / above, below level_split
    noise_factor: Tuple[float, float] = (1.0, 1.0)  # then for spectra at / below, above noise_split
    missed_fibres: Optional[MissedFibres] = None  # where the blend read lacks a declared fibre; None before it
    # T for clean spectra darker than dark_split (median reflectance): dark dyes err otherwise than bright
    # fabric at the same noise; None where the fit found no gain in it (and in calibrations before it)
    dark_temperature: Optional[float] = None
    dark_split: float = 0.0

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], fibres: Sequence[str]) -> "PathCalibration":
        return cls(
            offset=np.array([doc["offset"][f] for f in fibres], dtype=np.float64),
            weights=np.array([doc["weights"][k] for k in FEATURES], dtype=np.float64),
            quantile=np.array([doc["quantile"][f] for f in fibres], dtype=np.float64),
            band_factor=np.asarray(doc["band_factor"], dtype=np.float64),
            absent_factor=float(doc.get("absent_factor", doc["band_factor"][0])),
            widening={str(k): float(v) for k, v in doc.get("widening", {}).items()},
            temperature=float(doc["temperature"]),
            noisy_temperature=float(doc.get("noisy_temperature", doc["temperature"])),
            noise_split=float(doc.get("noise_split", math.inf)),
            level_split=float(doc.get("level_split", 0.0)),
            flag_temperature={str(k): float(v) for k, v in doc.get("flag_temperature", {}).items()},
            systematic=np.array([doc["systematic"][f] for f in fibres], dtype=np.float64),
            systematic_per_blend={b: np.array([v[f] for f in fibres], dtype=np.float64)
                                  for b, v in doc.get("systematic_per_blend", {}).items()},
            systematic_per_blend_noisy={b: np.array([v[f] for f in fibres], dtype=np.float64)
                                        for b, v in doc.get("systematic_per_blend_noisy", {}).items()},
            level_factor=(float(doc["level_factor"][0]), float(doc["level_factor"][1])) if "level_factor" in doc
            else (1.0, 1.0),
            noise_factor=(float(doc["noise_factor"][0]), float(doc["noise_factor"][1])) if "noise_factor" in doc
            else (1.0, 1.0),
            systematic_bound=(np.array([doc["systematic_bound"][f] for f in fibres], dtype=np.float64)
                              if "systematic_bound" in doc else None),
            systematic_bound_per_blend={b: np.array([v[f] for f in fibres], dtype=np.float64)
                                        for b, v in doc.get("systematic_bound_per_blend", {}).items()},
            systematic_bound_per_blend_noisy={b: np.array([v[f] for f in fibres], dtype=np.float64)
                                              for b, v in doc.get("systematic_bound_per_blend_noisy", {}).items()},
            missed_fibres=(MissedFibres.from_dict(doc["systematic_bound_missed"])
                           if "systematic_bound_missed" in doc else None),
            dark_temperature=float(doc["dark_temperature"]) if "dark_temperature" in doc else None,
            dark_split=float(doc.get("dark_split", 0.0)),
        )

    def temperature_for(self, noise: float, flag_set: str = "", level: float = 1.0) -> float:
        """The temperature for a measurement with these quality flags (`flag_key`), spectral noise and median
        reflectance: its flag set's, else the noisy spectra's, else the dark ones', else the clean bright ones'."""
        if flag_set in self.flag_temperature:
            return self.flag_temperature[flag_set]
        if noise > self.noise_split:
            return self.noisy_temperature
        if self.dark_temperature is not None and level < self.dark_split:
            return self.dark_temperature
        return self.temperature

    def scale(self, pred: np.ndarray, spread: np.ndarray, confidence: float, quality: SpectrumQuality,
              atypicality: float) -> np.ndarray:
        """[F] the scale s of each fibre's error for this measurement."""
        feats = scale_features(pred, spread, confidence, quality.noise, atypicality, quality.level)
        return np.exp(self.offset + feats @ self.weights)


@dataclass(frozen=True)
class Calibrated:
    """What calibration adds to one prediction."""

    uncertainty: Dict[str, float]  # standard uncertainty per fibre (half-width / 1.96)
    interval_95: Dict[str, List[float]]  # fibre -> [low, high]
    decision_interval_95: Dict[str, List[float]]  # what the spec check judges (see `interval`)
    confidence: float
    blend_probabilities: Dict[str, float]
    unknown_fibre: bool
    unknown_fibre_score: float
    uncalibrated_flags: Tuple[str, ...]  # quality flags the calibration never saw: refer to the lab


# The measuring settings a calibration holds for when a station uses them or richer ones: more co-added
# scans, more frames and a larger field (in µm², frame pixels x scale²) average more and err less, so
# the calibrated intervals hold there or are wider than needed (the shipped calibration, fitted at the
# demo settings, covered 0.948-0.956 at the station at production settings: README, "Every tile").
# Fewer of any err more than the calibration saw: its intervals would be too narrow.
RICHER_IS_SAFE = ("coadd", "n_frames", "field_um2")


def _measuring(settings: Mapping[str, Any]) -> Dict[str, float]:
    """The settings `RICHER_IS_SAFE` compares, from a station-settings dict (the manifest's
    `uncertainty.data.station` keys); a key it lacks is left out."""
    out = {key: float(settings[key]) for key in ("coadd", "n_frames") if settings.get(key) is not None}
    if all(settings.get(key) is not None for key in ("frame_px", "frame_height", "camera_um_per_px")):
        out["field_um2"] = (float(settings["frame_px"]) * float(settings["frame_height"])
                            * float(settings["camera_um_per_px"]) ** 2)
    return out


def station_settings_of(config: Any) -> Dict[str, Any]:
    """A station config's (`config.Config`) measuring settings under the calibration's key names; without
    a camera (`camera.source` empty: signal-only, whose calibration frames do not touch) the spectrometer's."""
    own = {"coadd": config.spectrometer.coadd, "integration_us": config.spectrometer.integration_us}
    if config.camera.source:
        own.update(n_frames=config.camera.frames_per_measurement, frame_px=config.camera.width,
                   frame_height=config.camera.height, camera_um_per_px=config.camera.um_per_px)
    return own


def _shown(key: str, value: float) -> str:
    return f"{value:.0f}" if key == "field_um2" else f"{value:g}"


def settings_problem(calibrated: Mapping[str, Any], config: Any) -> Optional[str]:
    """Why the calibration (fitted at the manifest's `uncertainty.data.station`) does not hold for this
    station's measuring settings (`config.Config`), or None: the station takes fewer co-added scans, fewer
    frames or a smaller field than the calibration data (its error is larger than the intervals allow)."""
    theirs, own = _measuring(calibrated), _measuring(station_settings_of(config))
    fewer = [f"{key} {_shown(key, theirs[key])} -> {_shown(key, own[key])}"
             for key in RICHER_IS_SAFE if key in theirs and key in own and own[key] < theirs[key] * (1 - 1e-6)]
    if not fewer:
        return None
    return ("the uncertainty calibration was fitted on richer measurements than this station takes ("
            + ", ".join(fewer) + "): its intervals would be too narrow here, so results are flagged "
            "uncalibrated_settings and referred to the lab; run `isic-model calibrate-uncertainty --config` "
            "with this station's config")


def settings_note(calibrated: Mapping[str, Any], config: Any) -> Optional[str]:
    """How this station's settings differ from the calibration's where that is safe (richer scans, frames
    or field; another integration time, whose noise the interval's scale follows), or None when they are
    the same or not safe."""
    own = station_settings_of(config)
    differ = [f"{key} {calibrated[key]} -> {value}" for key, value in own.items()
              if calibrated.get(key) is not None and value is not None
              and not math.isclose(float(calibrated[key]), float(value), rel_tol=1e-6)]
    if not differ or settings_problem(calibrated, config):
        return None
    return ("the uncertainty calibration was fitted at other station settings (" + ", ".join(differ)
            + "); this station measures at least as much (co-added scans, frames, field), so its intervals hold "
            "or are wider than needed (the integration time is not compared: the intervals follow the spectrum's "
            "measured noise)")


# What a confidence profile (`uncertainty.confidence_profiles[i].paths.<path>`) replaces in a path's calibration:
# its temperatures, all of them (the dark pair is optional: a profile without it gives dark spectra the clean
# temperature), and, in a profile that holds them, the interval model (`calibrate-confidence --intervals`) and the
# lot tables (`--lots`).
TEMPERATURE_KEYS = ("temperature", "noisy_temperature", "flag_temperature", "dark_temperature", "dark_split")
INTERVAL_KEYS = ("offset", "weights", "quantile", "band_factor", "absent_factor", "interval_level", "level_factor",
                 "level_split", "noise_factor", "widening")
LOT_KEYS = ("systematic", "systematic_per_blend", "systematic_per_blend_noisy", "systematic_bound",
            "systematic_bound_per_blend", "systematic_bound_per_blend_noisy", "systematic_bound_pools",
            "systematic_bound_pools_noisy", "systematic_bound_missed")


def measures_at_least(measuring: Mapping[str, Any], other: Mapping[str, Any]) -> bool:
    """Whether settings `measuring` take at least the co-added scans, frames and field of `other` (each a
    station-settings dict; a key `other` has and `measuring` lacks fails)."""
    own = _measuring(measuring)
    return all(key in own and own[key] >= value * (1 - 1e-6) for key, value in _measuring(other).items())


def confidence_profile(doc: Mapping[str, Any], measuring: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    """The confidence profile of calibration `doc` for a station measuring with `measuring` (station-settings
    keys, as `station_settings_of`), or None: the richest profile whose co-added scans, frames and field the
    station meets. The model errs less with more of them, so the blend probabilities tempered at the
    calibration's own (poorer) settings are underconfident there; a profile holds temperatures refit at
    richer settings (`isic-model calibrate-confidence`)."""
    if not measuring:
        return None
    met = [p for p in doc.get("confidence_profiles", []) if measures_at_least(measuring, p["station"])]
    if not met:
        return None
    return dict(max(met, key=lambda p: tuple(_measuring(p["station"]).get(k, 0.0) for k in RICHER_IS_SAFE)))


def with_confidence_profile(doc: Mapping[str, Any], profile: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """Calibration `doc` with `profile`'s temperatures (and interval model and lot tables, where it holds them) in
    place of each path's own (`doc` itself without a profile). The unknown-fibre check stays the calibration's."""
    if profile is None:
        return dict(doc)
    paths = {}
    for name, path in doc["paths"].items():
        own = profile["paths"][name]
        keys = (TEMPERATURE_KEYS + (INTERVAL_KEYS if "quantile" in own else ())
                + (LOT_KEYS if "systematic_bound" in own else ()))
        paths[name] = dict({k: v for k, v in path.items() if k not in keys}, **{k: own[k] for k in keys if k in own})
    return dict(doc, paths=paths)


class UncertaintyCalibration:
    """The manifest's `uncertainty` object, ready to apply to one measurement at a time (`profile`: the
    confidence profile in use, None for the calibration's own temperatures)."""

    def __init__(self, doc: Mapping[str, Any], fibres: Sequence[str], blend_classes: Sequence[str],
                 measuring: Optional[Mapping[str, Any]] = None) -> None:
        self.profile = confidence_profile(doc, measuring)
        doc = with_confidence_profile(doc, self.profile)
        self.doc = doc
        self.fibres = tuple(fibres)
        self.blend_classes = tuple(blend_classes)
        self.paths = {name: PathCalibration.from_dict(doc["paths"][name], self.fibres)
                      for name in (PATH_BIMODAL, PATH_SIGNAL_ONLY)}
        unknown = doc["unknown_fibre"]
        self.pca_mean = np.asarray(unknown["mean"], dtype=np.float64)
        self.pca_components = np.asarray(unknown["components"], dtype=np.float64)
        self.noise_model = [float(v) for v in unknown["noise_model"]]
        self.unknown_threshold = float(unknown["threshold"])
        self.unknown_noise_edges = np.asarray(unknown.get("noise_edges", []), dtype=np.float64)
        self.unknown_thresholds = [float(v) for v in unknown.get("thresholds", [self.unknown_threshold])]
        discriminant = unknown.get("discriminant")
        self.discriminant_weights = (None if discriminant is None
                                     else np.asarray(discriminant["weights"], dtype=np.float64))
        self.discriminant_intercept = 0.0 if discriminant is None else float(discriminant["intercept"])
        self.discriminant_q_weight = 0.0 if discriminant is None else float(discriminant.get("q_weight", 0.0))
        self.discriminant_thresholds = [] if discriminant is None else [float(v) for v in discriminant["thresholds"]]

    def _noise_band(self, noise: float) -> int:
        return int(np.searchsorted(self.unknown_noise_edges, float(noise)))

    def unknown_threshold_for(self, noise: float) -> float:
        """The unknown-fibre threshold for a spectrum of this noise: its noise band's (Mondrian), else the one."""
        if len(self.unknown_thresholds) != len(self.unknown_noise_edges) + 1:
            return self.unknown_threshold
        return self.unknown_thresholds[self._noise_band(noise)]

    def unknown_discriminated(self, spectrum: np.ndarray, noise: float, q_score: float) -> bool:
        """Whether the discriminant (when calibrated) puts this preprocessed spectrum, with its Q score, with
        the unknown fibres."""
        if self.discriminant_weights is None:
            return False
        score = (float(np.asarray(spectrum, dtype=np.float64) @ self.discriminant_weights)
                 + self.discriminant_q_weight * math.log(max(q_score, 1e-12)) + self.discriminant_intercept)
        return score > self.discriminant_thresholds[self._noise_band(noise)]

    @classmethod
    def from_manifest(cls, manifest: Any,
                      measuring: Optional[Mapping[str, Any]] = None) -> Optional["UncertaintyCalibration"]:
        """The manifest's calibration for a station measuring with `measuring` (its confidence profile, if
        one fits), or None when the model was never calibrated."""
        doc = manifest.raw.get("uncertainty")
        return None if doc is None else cls(doc, manifest.fibres, manifest.blend_classes, measuring)

    def unknown_score(self, spectrum: np.ndarray, noise: float) -> float:
        """The unknown-fibre score of one preprocessed spectrum (flagged above `unknown_threshold`)."""
        return unknown_fibre_score(spectrum, noise, self.pca_mean, self.pca_components, self.noise_model)

    def interval(self, path: str, pred: np.ndarray, spread: np.ndarray, confidence: float,
                 quality: SpectrumQuality, atypicality: float,
                 flags: Iterable[str] = ()) -> Tuple[np.ndarray, np.ndarray, np.ndarray, Tuple[str, ...]]:
        """(half-width [F], interval [F, 2], decision interval [F, 2], uncalibrated quality flags) on `path`.

        The interval covers 95 % of the fibres present. A fibre predicted absent (band 0) is usually
        absent, and its interval must still reach the few present ones the model missed; the spec
        check asks instead how far an undeclared fibre may be from 0, over all fibres predicted absent:
        the decision interval uses `absent_factor` there (elsewhere it is the interval).
        """
        cal = self.paths[path]
        raised = raised_quality_flags(path, flags)
        widening = max([cal.widening[f] for f in raised if f in cal.widening] + [1.0])
        pred = np.asarray(pred, dtype=np.float64)
        bands = fraction_band(pred)
        level = cal.level_factor[1] if quality.level < cal.level_split else cal.level_factor[0]
        level *= cal.noise_factor[1] if quality.noise > cal.noise_split else cal.noise_factor[0]
        unit = cal.quantile * cal.scale(pred, spread, confidence, quality, atypicality) * widening
        half = unit * cal.band_factor[bands] * level
        decision_half = np.where(bands == 0, unit * cal.absent_factor, half)

        def bounds(h: np.ndarray) -> np.ndarray:
            return np.stack([np.clip(pred - h, 0.0, 1.0), np.clip(pred + h, 0.0, 1.0)], axis=1)

        return half, bounds(half), bounds(decision_half), tuple(sorted(f for f in raised if f not in cal.widening))

    def apply(self, path: str, composition: Mapping[str, float], spread: Mapping[str, float],
              blend_probabilities: Mapping[str, float], spectrum: np.ndarray, quality: SpectrumQuality,
              flags: Iterable[str] = ()) -> Calibrated:
        """Calibrated uncertainty, interval, confidence and the unknown-fibre check for one prediction."""
        pred = np.array([composition[f] for f in self.fibres])
        flags = list(flags)
        probs = temper(np.array([blend_probabilities[c] for c in self.blend_classes]),
                       self.paths[path].temperature_for(quality.noise, flag_key(path, flags), quality.level))
        score = self.unknown_score(spectrum, quality.noise)
        half, bounds, decision, uncalibrated = self.interval(
            path, pred, np.array([spread[f] for f in self.fibres]), float(np.max(probs)), quality, score, flags)

        def per_fibre(b: np.ndarray) -> Dict[str, List[float]]:
            return {f: [round(float(lo), 4), round(float(hi), 4)] for f, (lo, hi) in zip(self.fibres, b)}

        return Calibrated(
            uncertainty={f: float(h / Z95) for f, h in zip(self.fibres, half)},
            interval_95=per_fibre(bounds),
            decision_interval_95=per_fibre(decision),
            confidence=float(np.max(probs)),
            blend_probabilities={c: float(p) for c, p in zip(self.blend_classes, probs)},
            unknown_fibre=(score > self.unknown_threshold_for(quality.noise)
                           or self.unknown_discriminated(spectrum, quality.noise, score)),
            unknown_fibre_score=round(score, 4),
            uncalibrated_flags=uncalibrated,
        )

    def systematic(self, path: str, blend: Optional[str] = None, noise: float = 0.0,
                   level: float = 1.0, declared: Optional[Mapping[str, float]] = None) -> Dict[str, float]:
        """Per fibre, the standard systematic uncertainty of a lot's mean on `path` for results of `blend`
        whose spectrum has this `noise` and median reflectance `level`: clean and bright (noise <= the
        path's noise split, level >= its level split), the table of such spectra; else that of all
        conditions, where a weak lamp's or a dark dye's far larger bias applies.

        With the calibration's 95 % bounds (`systematic_bound*`) it is the bound / 1.96, as a result's
        `uncertainty` is its half-width / 1.96: the lot's interval then holds the bound whatever the shape
        of the error's distribution (heavy-tailed for the cellulose blends). An older calibration has only
        the standard deviations of the error (`systematic*`): those.

        When `blend` lacks one of the lot's `declared` fibres (fibre -> share) that the calibration often
        missed at that share (`MissedFibres.missable`), the tables of lots read so apply: that fibre takes the
        bound of what the model misses of a fibre, the fibres read take the larger of theirs and that of a
        fibre read beside a missed one (it took the missed share). A declared fibre seldom missed at its share
        keeps 0: reading none of it speaks against the declaration. Undeclared fibres the blend lacks keep 0."""
        cal = self.paths[path]
        harsh = noise > cal.noise_split or level < cal.level_split
        if cal.systematic_bound is not None:
            overall, scale = cal.systematic_bound, 1.0 / Z95
            clean, noisy = cal.systematic_bound_per_blend or {}, cal.systematic_bound_per_blend_noisy or {}
        else:
            overall, scale = cal.systematic, 1.0
            clean, noisy = cal.systematic_per_blend, cal.systematic_per_blend_noisy
        table = noisy if harsh and noisy else clean
        values = table.get(blend, overall) if blend is not None else overall
        out = {f: float(v) * scale for f, v in zip(self.fibres, values)}
        missed = cal.missed_fibres
        if not blend or not declared or missed is None:
            return out
        read = set(blend.split("/"))
        lacking = {f for f, share in declared.items() if share > 0 and f not in read and missed.missable(f, share)}
        for f in self.fibres if lacking else ():
            if f in lacking:
                out[f] = missed.missed[f] / Z95
            elif f in read:
                out[f] = max(out[f], missed.beside[f] / Z95)
        return out
