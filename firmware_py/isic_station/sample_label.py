"""The sample's identity from a printed label in the microscope's field of view (QR code or barcode).

A technician who lays a labelled swatch under the microscope gets results that carry its sample
id without typing it. OpenCV's detectors do the reading (QR always; 1-D barcodes when this OpenCV
build has `cv2.barcode`). Detection costs a few milliseconds per frame, so `SampleLabelReader`
runs it on every Nth frame only and remembers the last id it read.
"""

import logging
from typing import Optional

import cv2
import numpy as np

log = logging.getLogger(__name__)


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
