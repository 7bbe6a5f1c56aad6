"""`build_image_batch` one frame at a time, so the image input is ready when the last frame is.

The station reads frames while the spectrometer integrates; cutting and scoring a frame's tiles as it
arrives (in the frame thread) leaves only the pick across frames for after the acquisition. Each frame
goes through `build_image_input` on its own, which keeps its best B tiles (B = tiles per measurement),
already normalised; the batch is then the best B of those, in the same order. That is exactly
`build_image_batch` of all the frames (a test checks it): a tile among the best B overall is among its
own frame's best B, and the sort is stable with ties broken by frame order, then tile position, in
both. The tiles themselves are still cut, scored and normalised by `preprocess.image` alone.
"""

from typing import Any, List, Mapping, Optional

import numpy as np

from isic_station.preprocess.image import build_image_input


class ImageBatchBuilder:
    """Add frames (that passed the quality gate) as they come; `batch()` is the model's image input."""

    def __init__(self, camera_um_per_px: float, params: Mapping[str, Any]) -> None:
        self.camera_um_per_px = camera_um_per_px
        self.params = params
        self.wanted = int(params["tiles_per_measurement"])
        self._rows: List[np.ndarray] = []
        self._scores: List[np.ndarray] = []

    def add(self, frame_bgr: np.ndarray) -> None:
        """Cut, score and normalise this frame's tiles; keep its best B (raises as build_image_input does)."""
        best = build_image_input([frame_bgr], self.camera_um_per_px, self.params)
        distinct = len(best.scores) - best.repeated
        self._rows.append(best.batch[:distinct])
        self._scores.append(best.scores[:distinct])

    @property
    def frames(self) -> int:
        return len(self._rows)

    def batch(self) -> Optional[np.ndarray]:
        """float32 [B, C, P, P] over the frames added (None without any): the best B tiles, the best
        repeated when there are fewer, as `build_image_batch` gives them."""
        if not self._rows:
            return None
        rows, scores = np.concatenate(self._rows), np.concatenate(self._scores)
        order = np.lexsort((-scores,))  # stable: frame order, then the frame's own (position) order
        chosen = order[np.arange(self.wanted) % len(order)]
        return np.ascontiguousarray(rows[chosen])
