"""The quality gate: which microscope frames may reach the model, with the figures that decided it.

A blurred, over- or under-exposed or empty frame gives the model nothing to see and would
silently drag a measurement towards whatever the model guesses on noise. Every frame is
assessed, failing frames are flagged with their reasons and counted by reason (for the stats
topic), and only passing frames go on to `preprocess.image`.

Figures, all computed on the grey frame shrunk to a fixed working width (when wider), so thresholds
do not change with a camera's resolution above it:
- focus: variance of the Laplacian (of a 1 px Gaussian) over the fibre region (fibres dilated) minus
  its variance on the bare glass (the noise floor), so a field with few sharp fibres scores as
  sharp as a crowded one and neither camera noise nor JPEG blocking counts as sharpness. A given
  defocus in µm blurs fewer pixels at coarser µm/px and so scores higher there: `min_focus` is set for
  the camera (the default suits 0.8-1 µm/px, where 4 µm of defocus scores at most 33 and a sharp frame
  over 1500);
- clipped_high / clipped_low: fraction of pixels at the sensor's ends (exposure);
- coverage: fraction of pixels that are fibre (`preprocess.image.fibre_mask`, the same notion
  the tile choice uses), too little means an empty field.
A printed sample label (`sample_label.label_mask`) is left out of every figure: it is sharp and
high-contrast whatever the focus on the fabric, so it made blurred frames pass and counted as fibre.
"""

import threading
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import cv2
import numpy as np

from isic_station.acquisition.sample_label import label_mask
from isic_station.preprocess.image import fibre_mask, to_grey

WORKING_WIDTH_PX = 640
# Fewer bare-glass pixels than this: too few to estimate the noise floor of the focus figure.
MIN_GLASS_PX = 500
FOCUS_SIGMA_PX = 1.0

REASON_BLURRED = "blurred"
REASON_OVEREXPOSED = "overexposed"
REASON_UNDEREXPOSED = "underexposed"
REASON_EMPTY = "empty"
REASONS = (REASON_BLURRED, REASON_OVEREXPOSED, REASON_UNDEREXPOSED, REASON_EMPTY)


@dataclass(frozen=True)
class GateThresholds:
    """Limits a frame must meet; the config's `[quality]` section sets the four limits.

    Defaults measured on the virtual lab's frames at 1 µm/px (README, "Microscope camera"), raw
    and after JPEG at quality 75 and 95: focus >= 96 on normal frames, <= 31 at 4 µm defocus (the
    figure grows with coarser µm/px: 306 / 132 at 1.6 µm/px; set `min_focus` for the camera). The
    lab's bright field sits near full scale: up to ~46 % of a normal frame is >= 250 (the lamp's hot
    spot), ~100 % with the over-exposure fault. The clip levels leave room for JPEG (a clipped 255
    decodes as 250-255).
    """

    min_focus: float = 50.0
    max_clipped_high: float = 0.6
    max_clipped_low: float = 0.25
    min_coverage: float = 0.01
    clip_high_level: int = 250
    clip_low_level: int = 5


@dataclass(frozen=True)
class FrameQuality:
    """The gate's figures for one frame and, when it failed, why (reasons from REASONS)."""

    focus: float
    clipped_high: float
    clipped_low: float
    coverage: float
    passed: bool
    reasons: Tuple[str, ...]


def working_grey(frame: np.ndarray) -> np.ndarray:
    """The frame as grey, shrunk (INTER_AREA) to WORKING_WIDTH_PX wide when wider; never enlarged,
    since enlarging would blur and make a small sharp frame look out of focus."""
    grey = to_grey(frame)
    height, width = grey.shape
    if width <= WORKING_WIDTH_PX:
        return grey
    size = (WORKING_WIDTH_PX, max(1, int(round(height * WORKING_WIDTH_PX / width))))
    return cv2.resize(grey, size, interpolation=cv2.INTER_AREA)


def focus_figure(grey: np.ndarray, fibre: np.ndarray, excluded: Optional[np.ndarray] = None) -> float:
    """Variance of the Laplacian of Gaussian around the fibres minus its variance on the bare glass.

    The Gaussian (FOCUS_SIGMA_PX) and the glass's share remove what a plain variance of the
    Laplacian counts as sharpness: camera noise and the ringing JPEG leaves at fibre edges, which
    made MJPG-decoded blurred frames score three times higher than before encoding. `excluded`
    pixels (a label) count as neither.
    """
    mask = fibre.astype(np.uint8)
    near = cv2.dilate(mask, np.ones((7, 7), np.uint8)).astype(bool)
    glass = ~cv2.dilate(mask, np.ones((15, 15), np.uint8)).astype(bool)
    if excluded is not None:
        near &= ~excluded
        glass &= ~excluded
    laplacian = cv2.Laplacian(cv2.GaussianBlur(grey, (0, 0), FOCUS_SIGMA_PX), cv2.CV_32F, ksize=3)
    noise = float(laplacian[glass].var()) if np.count_nonzero(glass) >= MIN_GLASS_PX else 0.0
    return max(0.0, float(laplacian[near].var()) - noise)


def assess(frame: np.ndarray, thresholds: GateThresholds = GateThresholds(), um_per_px: float = 1.0) -> FrameQuality:
    """The figures of one BGR (or grey) uint8 frame at `um_per_px` and whether it passes `thresholds`."""
    grey = working_grey(frame)
    label = label_mask(grey, um_per_px * frame.shape[1] / grey.shape[1])
    pixels = float(max(1, grey.size - np.count_nonzero(label)))
    clipped_high = float(np.count_nonzero((grey >= thresholds.clip_high_level) & ~label)) / pixels
    clipped_low = float(np.count_nonzero((grey <= thresholds.clip_low_level) & ~label)) / pixels
    mask = fibre_mask(grey) & ~label
    coverage = float(np.count_nonzero(mask)) / pixels
    focus = focus_figure(grey, mask, label) if coverage > 0 else 0.0
    reasons = []
    if coverage < thresholds.min_coverage:
        reasons.append(REASON_EMPTY)     # nothing to focus on: focus says nothing, so no "blurred"
    elif focus < thresholds.min_focus:
        reasons.append(REASON_BLURRED)
    if clipped_high > thresholds.max_clipped_high:
        reasons.append(REASON_OVEREXPOSED)
    if clipped_low > thresholds.max_clipped_low:
        reasons.append(REASON_UNDEREXPOSED)
    return FrameQuality(round(focus, 2), round(clipped_high, 5), round(clipped_low, 5), round(coverage, 5),
                        not reasons, tuple(reasons))


class QualityGate:
    """`assess` with counters: frames assessed, passed, and failed by reason (thread-safe to read)."""

    def __init__(self, thresholds: GateThresholds = GateThresholds(), um_per_px: float = 1.0) -> None:
        self.thresholds = thresholds
        self.um_per_px = um_per_px
        self._lock = threading.Lock()
        self._counts: Dict[str, int] = {"assessed": 0, "passed": 0}
        self._counts.update({reason: 0 for reason in REASONS})

    def assess(self, frame: np.ndarray) -> FrameQuality:
        """Assess one frame and count the outcome."""
        quality = assess(frame, self.thresholds, self.um_per_px)
        with self._lock:
            self._counts["assessed"] += 1
            self._counts["passed"] += int(quality.passed)
            for reason in quality.reasons:
                self._counts[reason] += 1
        return quality

    def counts(self) -> Dict[str, int]:
        """assessed, passed, and one count per reason (a frame can fail for several)."""
        with self._lock:
            return dict(self._counts)
