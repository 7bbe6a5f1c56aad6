"""Dark and white references, kept on disk, and reflectance/absorbance from raw counts with them.

A spectrometer's counts depend on its lamp, detector and integration time; reflectance does not:
R = (S - D) / (W - D) with D the dark reference (light path closed) and W the white reference tile
(R_tile ~ 1). Each reference is co-added from several scans and stored with its capture time,
integration time and the instrument's serial number, in one JSON file written atomically
(temporary file, fsync, rename), so a power cut never leaves half a reference behind.

Flags (the result schema's names) say when the references cannot be trusted:
- `missing_reference`: no dark or no white reference, or it was taken on another instrument serial;
- `stale_reference`: a reference is older than `max_age_s`, or was taken at another integration time;
- `white_drift`: the lamp moved. Measured honestly, the only way the station can: `check_white`
  reads the white tile again (periodically, or whenever an operator puts it under the probe) and
  compares it with the stored white, as the median over the pixels of (W_now - D) / (W_stored - D);
  a ratio off 1 by more than `drift_threshold` flags every later result until a new white is taken.

A reference is checked before it is kept (`reference_problem`), since every later result is computed
with it: a dark must be dark (a dark taken over fabric reads tens of thousands of counts), a white
must be unsaturated, above the dark with enough signal, on the dark's pixel count, and - when a white
of the same instrument and integration time is stored - of the same spectral shape (a tile, not a
fabric: fabric has absorption bands the tile has not), unless it is brighter than the stored one
almost everywhere (then the stored one was the fabric). The very first white can only be checked
for its level: a bright fabric passes that, which is why the tile must be under the probe. A
refused reference raises ReferenceRefused naming why, and the stored ones stay. A references file
that cannot be read, or whose references do not fit the instrument, is moved aside
(`references.json.bad-<UTC time>`) at start instead of stalling every measurement: `problem` says
so and the station raises a device_fault alarm.
"""

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Tuple

import numpy as np

from isic_common.errors import DeviceError, StateDirError
from isic_drivers.obp.spectrometer import WIRE_FULL_SCALE_COUNTS
from isic_drivers.reflectance import reflectance_from_counts
from isic_station.atomic_file import write_json

if TYPE_CHECKING:  # the Acquirer's protocol; acquisition imports this module
    from isic_station.acquisition.acquirer import Spectrometer

log = logging.getLogger(__name__)

DARK = "dark"
WHITE = "white"
FILE_NAME = "references.json"
# Pixels whose white signal above dark is below this share of the peak carry no usable reflectance
# (beyond the detector's cut-off): they are left out of the drift ratio.
DRIFT_MIN_SIGNAL_SHARE = 0.1
MIN_REFLECTANCE_FOR_ABSORBANCE = 1e-4
# Reference checks, as fractions of the instrument's full scale (`ObpSpectrometer.full_scale_counts`).
DARK_MAX_FRACTION = 0.15  # a dark's 95th percentile above ~9800 counts saw light (a real one: ~1600)
WHITE_SATURATION_FRACTION = 0.98
WHITE_MIN_SIGNAL_FRACTION = 0.15  # the white's peak above the dark: at least ~9800 counts
WHITE_MIN_LIT_SHARE = 0.5  # at least half the pixels above the dark (beyond the InGaAs cut-off they are not)
WHITE_MAX_SHAPE_SPREAD = 0.2  # (p90 - p10) / median of new/stored white over the lit pixels


def reference_ages(references: Mapping[str, "Reference"]) -> Dict[str, Optional[float]]:
    """`{dark_age_s, white_age_s}`: seconds since each reference was taken, None when there is none."""
    now = time.time()
    return {f"{kind}_age_s": (round(max(0.0, now - references[kind].captured_at), 1) if kind in references
                              else None) for kind in ("dark", "white")}


class ReferenceRefused(DeviceError):
    """A dark or white reference that would make every later result wrong; the stored ones stay."""


def reference_problem(kind: str, counts: np.ndarray, dark: Optional[np.ndarray] = None,
                      white: Optional[np.ndarray] = None,
                      full_scale: float = WIRE_FULL_SCALE_COUNTS) -> Optional[str]:
    """Why `counts` must not become the `kind` reference (None when it may). `dark` and `white` are the
    stored references of the same instrument and integration time, if any; `full_scale` the counts at
    which the instrument clips."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size < 2 or not np.all(np.isfinite(counts)):
        return f"{kind} reference is not a spectrum ({counts.size} values, finite: {bool(np.all(np.isfinite(counts)))})"
    if kind == DARK:
        level = float(np.percentile(counts, 95))
        if level > DARK_MAX_FRACTION * full_scale:
            return (f"dark reference refused: it saw light ({level:.0f} counts at the 95th percentile, a dark reads "
                    f"below {DARK_MAX_FRACTION * full_scale:.0f}): close the light path or put the dark tile "
                    "under the probe, not fabric")
        return None
    peak = float(counts.max())
    if peak >= WHITE_SATURATION_FRACTION * full_scale:
        return (f"white reference refused: it saturates the detector ({peak:.0f} counts); lower "
                "spectrometer.integration_us")
    if dark is None:
        return "white reference refused: take the dark reference first (calibrate dark), the white is measured above it"
    if dark.shape != counts.shape:
        return (f"white reference refused: {counts.size} pixels, the dark reference has {dark.size}: take both on "
                "this instrument")
    signal = counts - dark
    if float(signal.max()) < WHITE_MIN_SIGNAL_FRACTION * full_scale:
        return (f"white reference refused: too little light ({signal.max():.0f} counts above the dark, at least "
                f"{WHITE_MIN_SIGNAL_FRACTION * full_scale:.0f} needed): put the white tile under the probe, "
                "check the lamp (a weak one: raise spectrometer.integration_us, then calibrate dark and white)")
    lit = float(np.mean(signal > 0))
    if lit < WHITE_MIN_LIT_SHARE:
        return f"white reference refused: only {lit:.0%} of the pixels are above the dark"
    if white is not None and white.shape == counts.shape:
        stored = white - dark
        usable = stored > DRIFT_MIN_SIGNAL_SHARE * float(stored.max())
        ratio = signal[usable] / stored[usable]
        median = float(np.median(ratio))
        spread = float(np.percentile(ratio, 90) - np.percentile(ratio, 10)) / median if median > 0 else np.inf
        brighter = float(np.percentile(ratio, 10)) >= 1.0
        if spread > WHITE_MAX_SHAPE_SPREAD and brighter:
            # Brighter than the stored white nearly everywhere: that one was not the tile (fabric reflects
            # less than the tile at every wavelength), this one replaces it.
            log.warning("the stored white reference is dimmer than this one at most wavelengths (shape differs "
                        "by %.0f%%): it was probably not taken on the white tile; replacing it", spread * 100)
        elif spread > WHITE_MAX_SHAPE_SPREAD:
            return (f"white reference refused: its spectral shape differs from the stored white's by {spread:.0%} "
                    f"(at most {WHITE_MAX_SHAPE_SPREAD:.0%} for the same tile): is fabric under the probe instead "
                    "of the white tile?")
    return None


@dataclass(frozen=True)
class Reference:
    """One co-added reference spectrum and the conditions it was taken in."""

    kind: str
    counts: Tuple[float, ...]
    captured_at: float  # unix time
    integration_us: int
    serial: str
    scans: int


@dataclass(frozen=True)
class WhiteCheck:
    """The last re-reading of the white tile: ratio of its signal to the stored white's."""

    ratio: float
    checked_at: float


class CalibrationStore:
    """The references of one station in `directory`, and the reflectance computed with them.

    `spectrometer` arguments are anything with `coadd(n)`, `serial_number()` and
    `integration_time_us()` (an `isic_drivers.obp.spectrometer.ObpSpectrometer`).
    """

    def __init__(self, directory: Path, max_age_s: float = 8 * 3600.0, drift_threshold: float = 0.05,
                 read_only: bool = False) -> None:
        self.directory = Path(directory)
        self.read_only = read_only  # (doctor) an unusable file is reported, not moved
        self.path = self.directory / FILE_NAME
        self.max_age_s = max_age_s
        self.drift_threshold = drift_threshold
        self.references: Dict[str, Reference] = {}
        self.white_check: Optional[WhiteCheck] = None
        self.problem: Optional[str] = None  # why a references file was moved aside (for an alarm)
        self._load()

    def capture(self, spectrometer: "Spectrometer", kind: str, scans: int = 16) -> Reference:
        """Take a dark or white reference now (co-adding `scans`) and store it."""
        if kind not in (DARK, WHITE):
            raise ValueError(f"reference kind {kind!r}: expected {DARK!r} or {WHITE!r}")
        counts = np.asarray(spectrometer.coadd(scans), dtype=np.float64)
        reference = Reference(kind, tuple(float(c) for c in counts), time.time(),
                              int(spectrometer.integration_time_us()), spectrometer.serial_number(), scans)
        dark, white = (self._comparable(k, reference) for k in (DARK, WHITE))
        problem = reference_problem(kind, counts, dark, white, spectrometer.full_scale_counts)
        if problem is not None:
            log.warning("%s (the stored references stay)", problem)
            raise ReferenceRefused(problem)
        self.references[kind] = reference
        if kind == WHITE:
            self.white_check = None  # a new white is the new baseline
        self._save()
        log.info("%s reference captured: %d scans, %d us, serial %s", kind, scans, reference.integration_us,
                 reference.serial)
        return reference

    def check_white(self, spectrometer: "Spectrometer", scans: int = 16) -> float:
        """Read the white tile again and store its ratio to the stored white (1.0 = no drift)."""
        dark, white = self._arrays()
        if dark is None or white is None:
            raise StateDirError(f"no dark and white reference in {self.path} to compare the white tile with")
        now = np.asarray(spectrometer.coadd(scans), dtype=np.float64) - dark
        stored = white - dark
        usable = stored > DRIFT_MIN_SIGNAL_SHARE * float(stored.max())
        ratio = float(np.median(now[usable] / stored[usable]))
        self.white_check = WhiteCheck(ratio, time.time())
        self._save()
        log.info("white check: signal at %.3f of the stored white", ratio)
        return ratio

    @property
    def white_peak(self) -> Optional[float]:
        """Peak of (white - dark) counts, None without both references."""
        dark, white = self._arrays()
        return None if dark is None or white is None else float((white - dark).max())

    def reflectance(self, raw: np.ndarray, serial: Optional[str] = None, integration_us: Optional[int] = None,
                    now: Optional[float] = None) -> Tuple[np.ndarray, Tuple[str, ...]]:
        """(R, flags) for raw (or co-added) counts; R is NaN everywhere without both references.

        `serial` and `integration_us` are the instrument's now: references from another instrument or
        integration time are flagged. Pixels where the white is not above the dark give R = 0.
        """
        flags = self.flags(serial, integration_us, now)
        dark, white = self._arrays()
        raw = np.asarray(raw, dtype=np.float64)
        if dark is None or white is None or dark.shape != raw.shape:
            if dark is not None and dark.shape != raw.shape:
                log.warning("references have %d pixels, the spectrum %d", dark.size, raw.size)
            return np.full(raw.shape, np.nan), tuple(sorted(set(flags) | {"missing_reference"}))
        return reflectance_from_counts(raw, dark, white), flags

    def absorbance(self, raw: np.ndarray, serial: Optional[str] = None, integration_us: Optional[int] = None,
                   now: Optional[float] = None) -> Tuple[np.ndarray, Tuple[str, ...]]:
        """(A, flags) with A = -log10(R), R clipped below at 1e-4 (A at most 4)."""
        reflectance, flags = self.reflectance(raw, serial, integration_us, now)
        return -np.log10(np.clip(reflectance, MIN_REFLECTANCE_FOR_ABSORBANCE, None)), flags

    def flags(self, serial: Optional[str] = None, integration_us: Optional[int] = None,
              now: Optional[float] = None) -> Tuple[str, ...]:
        """The calibration's flags as they are now, each reason logged once per call at debug level."""
        now = time.time() if now is None else now
        flags = set()
        for kind in (DARK, WHITE):
            reference = self.references.get(kind)
            if reference is None:
                log.debug("no %s reference in %s", kind, self.path)
                flags.add("missing_reference")
                continue
            if serial is not None and reference.serial != serial:
                log.debug("%s reference is from instrument %s, not %s", kind, reference.serial, serial)
                flags.add("missing_reference")
            if now - reference.captured_at > self.max_age_s:
                log.debug("%s reference is %.0f s old (max %.0f s)", kind, now - reference.captured_at,
                          self.max_age_s)
                flags.add("stale_reference")
            if integration_us is not None and reference.integration_us != integration_us:
                log.debug("%s reference taken at %d us, spectrum at %d us", kind, reference.integration_us,
                          integration_us)
                flags.add("stale_reference")
        if self.white_check is not None and abs(1.0 - self.white_check.ratio) > self.drift_threshold:
            flags.add("white_drift")
        return tuple(sorted(flags))

    def _comparable(self, kind: str, new: Reference) -> Optional[np.ndarray]:
        """The stored `kind` reference's counts when it was taken as `new` is (instrument, integration)."""
        stored = self.references.get(kind)
        if stored is None or (stored.serial, stored.integration_us) != (new.serial, new.integration_us):
            return None
        return np.asarray(stored.counts)

    def check_pixels(self, n_pixels: int) -> Optional[str]:
        """Move the references aside when they do not fit an instrument of `n_pixels` (they would make
        every measurement fail); the reason, or None when they fit (or there are none)."""
        wrong = {k: len(r.counts) for k, r in self.references.items() if len(r.counts) != n_pixels}
        if not wrong:
            return None
        return self._quarantine(f"references with {wrong} pixels for an instrument with {n_pixels}")

    def _quarantine(self, reason: str) -> str:
        self.references, self.white_check = {}, None
        if self.read_only:
            self.problem = f"calibration file {self.path} unusable ({reason}): the station will move it aside"
            return self.problem
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        kept = self.path.with_name(f"{self.path.name}.bad-{stamp}")
        try:
            os.replace(self.path, kept)
        except OSError as exc:
            raise StateDirError(f"calibration file {self.path} is unusable ({reason}) and cannot be moved "
                                f"aside: {exc}") from exc
        self.problem = (f"calibration file {self.path} unusable ({reason}): moved aside to {kept.name}; "
                        "calibrate dark, then white")
        log.error("%s", self.problem)
        return self.problem

    def _arrays(self) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        dark, white = self.references.get(DARK), self.references.get(WHITE)
        return (None if dark is None else np.asarray(dark.counts),
                None if white is None else np.asarray(white.counts))

    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            references = {
                kind: Reference(**dict(entry, counts=tuple(float(c) for c in entry["counts"])))
                for kind, entry in data.get("references", {}).items()
            }
            check = data.get("white_check")
            white_check = WhiteCheck(**check) if check else None
        except PermissionError as exc:
            raise StateDirError(f"calibration file {self.path} cannot be read: {exc}") from exc
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            self._quarantine(f"cannot be read: {type(exc).__name__}: {exc}")
            return
        problem = _layout_problem(references)
        if problem is not None:
            self._quarantine(problem)
            return
        self.references, self.white_check = references, white_check

    def _save(self) -> None:
        document: Dict[str, Any] = {
            "references": {kind: asdict(ref) for kind, ref in self.references.items()},
            "white_check": asdict(self.white_check) if self.white_check else None,
        }
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_json(self.path, document)
        except OSError as exc:
            raise StateDirError(f"cannot write calibration file {self.path}: {exc}") from exc


def _layout_problem(references: Dict[str, Reference]) -> Optional[str]:
    """What is wrong with references read from a file: kinds, finite counts, one pixel count."""
    unknown = sorted(set(references) - {DARK, WHITE})
    if unknown:
        return f"unknown reference kind(s) {unknown}"
    sizes = {len(r.counts) for r in references.values()}
    if len(sizes) > 1 or 0 in sizes or 1 in sizes:
        return f"references of {sorted(sizes)} pixels"
    for kind, reference in references.items():
        if reference.kind != kind or not np.all(np.isfinite(reference.counts)):
            return f"{kind} reference is malformed"
    return None
