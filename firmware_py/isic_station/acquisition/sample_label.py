"""The sample's identity from a printed label in the microscope's field of view (QR code or barcode).

A technician who lays a labelled swatch under the microscope gets results that carry its sample
id without typing it. OpenCV's detectors do the reading (QR always; 1-D barcodes when this OpenCV
build has `cv2.barcode`). Detection costs a few milliseconds per frame, so `SampleLabelReader`
runs it on every Nth frame only and remembers the last id it read.

A label is also what the model must never see: its squares read as fibre (cotton, mostly).
`label_mask` finds printed codes cheaply enough to run on every frame of every measurement
(well under a millisecond at the model's scale, where OpenCV's QR detector takes 4-5 ms and finds
only QR codes): a printed code is a compact square or bar field where nearly every pixel lies within
a module of both ink and paper, ringed by blank paper (its quiet zone), while fibres are long
lines that leave any such box. The mask covers the code and its quiet zone.
"""

import logging
from typing import List, Optional, Tuple

import cv2
import numpy as np

log = logging.getLogger(__name__)

# Ink against paper: a pixel whose 3x3 neighbourhood spans more than this many grey levels (of 255)
# sits on a module edge in a sharp frame; fibre edges reach it too, but only along lines. Defocus lowers
# every edge alike: the threshold is LABEL_CONTRAST_SHARE of the frame's strongest edges (its 99.9th
# percentile), at most LABEL_CONTRAST_GREY and at least LABEL_CONTRAST_MIN, and the ring test's edge
# level scales with it. At a fixed 150 the lab's labels went unfound from 3 um of defocus on (at the
# model's 2.4 um/px; 1.5 um at the camera's 1.0) and their tiles reached the model as fibre.
LABEL_CONTRAST_GREY = 150
LABEL_CONTRAST_SHARE = 0.7
LABEL_CONTRAST_MIN = 30
STRONGEST_EDGES = 0.999
# Gaps closed and slivers opened away at this size: about four modules of a printed code (6 µm
# modules in the virtual lab's labels), wider than a fibre's edge band.
LABEL_MORPH_UM = 24.0
# A code is at least this long (longer side) and wide (shorter side), at most this elongated
# (QR: square; 1-D barcodes: a few times longer than tall), and fills its box.
LABEL_MIN_SIDE_UM = 60.0
LABEL_MIN_WIDTH_UM = 30.0
LABEL_MAX_ASPECT = 4.0
LABEL_MIN_FILL = 0.7
# The quiet zone: blank paper around the code, 4 modules of a 21-module QR code (~0.19 of its side;
# larger codes have relatively narrower ones, so this over-covers them). The ring test looks at
# half of it; on real labels at most 16 % of the ring has edges or ink, on fibre tangles >= 34 %.
QUIET_ZONE_FRACTION = 0.2
RING_FRACTION = 0.1
RING_MAX_BUSY = 0.25
RING_EDGE_GREY = 40
RING_INK_GREY = 150
# Blur and camera noise spread a label a little beyond its printed edge.
LABEL_SPILL_PX = 2

Box = Tuple[int, int, int, int]  # x, y, width, height in pixels


def edge_contrast(spread: np.ndarray) -> float:
    """The module-edge threshold for a frame whose 3x3 grey spread is `spread` (uint8): LABEL_CONTRAST_SHARE
    of its strongest edges, within LABEL_CONTRAST_MIN..LABEL_CONTRAST_GREY (a histogram: no sort)."""
    counts = np.cumsum(np.bincount(spread.ravel(), minlength=256))
    strongest = int(np.searchsorted(counts, STRONGEST_EDGES * counts[-1]))
    return float(min(LABEL_CONTRAST_GREY, max(LABEL_CONTRAST_MIN, LABEL_CONTRAST_SHARE * strongest)))


def label_boxes(grey: np.ndarray, um_per_px: float) -> List[Box]:
    """Printed codes (QR or barcode) in a grey uint8 frame at `um_per_px`, each box with its quiet zone.

    Hand-written from a few OpenCV calls because OpenCV's detectors cost 10x more per frame and
    each knows one symbology; this finds where a code is, not what it says.
    """
    kernel = np.ones((3, 3), np.uint8)
    spread = cv2.morphologyEx(grey, cv2.MORPH_GRADIENT, kernel)
    contrast = edge_contrast(spread)
    ink = cv2.threshold(spread, contrast, 1, cv2.THRESH_BINARY)[1]
    ring_edge = RING_EDGE_GREY * contrast / LABEL_CONTRAST_GREY
    size = max(3, int(round(LABEL_MORPH_UM / um_per_px)) | 1)
    square = cv2.getStructuringElement(cv2.MORPH_RECT, (size, size))
    ink = cv2.morphologyEx(cv2.morphologyEx(ink, cv2.MORPH_CLOSE, square), cv2.MORPH_OPEN, square)
    if not ink.any():
        return []
    count, _labels, stats, _centres = cv2.connectedComponentsWithStats(ink, connectivity=8, ltype=cv2.CV_16U)
    height, width = grey.shape
    boxes: List[Box] = []
    for x, y, w, h, area in stats[1:count]:
        long_side, short_side = max(w, h), min(w, h)
        if (long_side * um_per_px < LABEL_MIN_SIDE_UM or short_side * um_per_px < LABEL_MIN_WIDTH_UM
                or long_side > LABEL_MAX_ASPECT * short_side or area < LABEL_MIN_FILL * w * h):
            continue
        # the ring starts LABEL_SPILL_PX + 1 off the code (the blurred code's edge is not paper's fault)
        gap = LABEL_SPILL_PX + 1
        ring = gap + max(2, int(round(RING_FRACTION * long_side)))
        x0, y0, x1, y1 = max(0, x - ring), max(0, y - ring), min(width, x + w + ring), min(height, y + h + ring)
        busy = (spread[y0:y1, x0:x1] > ring_edge) | (grey[y0:y1, x0:x1] < RING_INK_GREY)
        ix0, iy0 = max(0, x - gap) - x0, max(0, y - gap) - y0
        ix1, iy1 = min(width, x + w + gap) - x0, min(height, y + h + gap) - y0
        busy[iy0:iy1, ix0:ix1] = False
        ring_px = (y1 - y0) * (x1 - x0) - (iy1 - iy0) * (ix1 - ix0)
        if ring_px == 0 or np.count_nonzero(busy) > RING_MAX_BUSY * ring_px:
            continue   # edges all around (a tangle of fibres), or no paper seen at all: not a code on blank paper
        margin = int(round(QUIET_ZONE_FRACTION * long_side)) + LABEL_SPILL_PX
        x0, y0 = max(0, x - margin), max(0, y - margin)
        boxes.append((x0, y0, min(width, x + w + margin) - x0, min(height, y + h + margin) - y0))
    return boxes


def label_mask(grey: np.ndarray, um_per_px: float) -> np.ndarray:
    """Boolean mask of the printed labels (code and quiet zone) in a grey uint8 frame."""
    mask = np.zeros(grey.shape, dtype=bool)
    for x, y, w, h in label_boxes(grey, um_per_px):
        mask[y:y + h, x:x + w] = True
    return mask


class SampleLabelReader:
    """Reads a sample id from frames; `offer()` looks at every `every_n`-th frame only."""

    def __init__(self, every_n: int = 10) -> None:
        if every_n < 1:
            raise ValueError(f"every_n must be >= 1, got {every_n}")
        self.every_n = every_n
        self._qr = cv2.QRCodeDetector()
        barcode = getattr(cv2, "barcode", None)
        self._barcode = barcode.BarcodeDetector() if barcode is not None else None
        self._offered = 0
        self.last_id: Optional[str] = None

    def read(self, frame: np.ndarray) -> Optional[str]:
        """The text of a QR code (else a barcode) in the frame, or None when there is none."""
        text, _points, _straight = self._qr.detectAndDecode(frame)
        if text:
            return str(text)
        if self._barcode is not None:
            text = self._barcode.detectAndDecode(frame)[0]
            if text:
                return str(text)
        return None

    def offer(self, frame: np.ndarray) -> Optional[str]:
        """Read the label on every Nth offered frame; the last id read (None before any)."""
        self._offered += 1
        if (self._offered - 1) % self.every_n == 0:
            found = self.read(frame)
            if found is not None and found != self.last_id:
                log.info("sample label read: %s", found)
                self.last_id = found
        return self.last_id


def read_sample_label(frame: np.ndarray) -> Optional[str]:
    """One-off read of a sample id from a frame (QR code, else barcode), or None."""
    return SampleLabelReader().read(frame)
