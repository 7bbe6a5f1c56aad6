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
"""

import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from isic_station.errors import StateDirError

log = logging.getLogger(__name__)

DARK = "dark"
WHITE = "white"
FILE_NAME = "references.json"
# Pixels whose white signal above dark is below this share of the peak carry no usable reflectance
# (beyond the detector's cut-off): they are left out of the drift ratio.
DRIFT_MIN_SIGNAL_SHARE = 0.1
MIN_REFLECTANCE_FOR_ABSORBANCE = 1e-4


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

    def __init__(self, directory: Path, max_age_s: float = 8 * 3600.0, drift_threshold: float = 0.05) -> None:
        self.directory = Path(directory)
        self.path = self.directory / FILE_NAME
        self.max_age_s = max_age_s
        self.drift_threshold = drift_threshold
        self.references: Dict[str, Reference] = {}
        self.white_check: Optional[WhiteCheck] = None
        self._load()

    def capture(self, spectrometer: Any, kind: str, scans: int = 16) -> Reference:
        """Take a dark or white reference now (co-adding `scans`) and store it."""
        if kind not in (DARK, WHITE):
            raise ValueError(f"reference kind {kind!r}: expected {DARK!r} or {WHITE!r}")
        counts = np.asarray(spectrometer.coadd(scans), dtype=np.float64)
        reference = Reference(kind, tuple(float(c) for c in counts), time.time(),
                              int(spectrometer.integration_time_us()), spectrometer.serial_number(), scans)
        self.references[kind] = reference
        if kind == WHITE:
            self.white_check = None  # a new white is the new baseline
        self._save()
        log.info("%s reference captured: %d scans, %d us, serial %s", kind, scans, reference.integration_us,
                 reference.serial)
        return reference

    def check_white(self, spectrometer: Any, scans: int = 16) -> float:
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

    def _arrays(self) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        dark, white = self.references.get(DARK), self.references.get(WHITE)
        return (None if dark is None else np.asarray(dark.counts),
                None if white is None else np.asarray(white.counts))

    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            self.references = {
                kind: Reference(**dict(entry, counts=tuple(entry["counts"])))
                for kind, entry in data.get("references", {}).items()
            }
            check = data.get("white_check")
            self.white_check = WhiteCheck(**check) if check else None
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise StateDirError(
                f"calibration file {self.path} cannot be read ({exc}); move it away and capture new references"
            ) from exc

    def _save(self) -> None:
        document: Dict[str, Any] = {
            "references": {kind: asdict(ref) for kind, ref in self.references.items()},
            "white_check": asdict(self.white_check) if self.white_check else None,
        }
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=".references-", suffix=".tmp", dir=str(self.directory))
            try:
                with os.fdopen(handle, "w", encoding="utf-8") as out:
                    json.dump(document, out)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temporary, self.path)
            except BaseException:
                if os.path.exists(temporary):
                    os.unlink(temporary)
                raise
            _fsync_directory(self.directory)
        except OSError as exc:
            raise StateDirError(f"cannot write calibration file {self.path}: {exc}") from exc


def reflectance_from_counts(raw: np.ndarray, dark: np.ndarray, white: np.ndarray) -> np.ndarray:
    """R = (S - D) / (W - D); pixels whose white is not above the dark give R = 0.

    The one place the formula lives: the store above and the virtual lab's simulated station both call it.
    """
    span = np.asarray(white, dtype=np.float64) - dark
    return np.divide(np.asarray(raw, dtype=np.float64) - dark, span, out=np.zeros_like(span), where=span > 0)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable."""
    fd = os.open(str(directory), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

