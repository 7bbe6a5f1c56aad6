"""`build_image_batch` one frame at a time, so the image input is ready when the last frame is.

The station reads frames while the spectrometer integrates; cutting and scoring a frame's tiles as it
arrives (in the frame thread) leaves only the pick across frames for after the acquisition. Each frame
goes through `build_image_input` on its own, which keeps its best N tiles (N: the model's most rows,
`max_tiles`, at least the graph's batch B), already normalised; the batch is then the best of those, as
many as `rows_for` gives, in the same order. That is exactly `build_image_batch` of all the frames (a test
checks it): a tile among the best N overall is among its own frame's best N, and the sort is stable with
ties broken by frame order, then tile position, in both. The tiles themselves are still cut, scored and
normalised by `preprocess.image` alone, masks (label, dust, glare) included: they are per frame, so the
argument holds. A frame left without a
usable tile (all label, say) adds none; `batch()` logs at DEBUG which tiles went in (`tile_evidence`).

With a `counter` (the model's fibre counter, `inference.counter.FibreCounter`), every usable tile of
every frame is also counted as the frame arrives (masked tiles count for nothing): `fibre_counts()` is
the fibre length per type over all of them, the bimodal graph's `fibre_counts` input. So only the last
frame's cutting and counting are left for after the last frame has arrived.
"""

import logging
from typing import Any, Callable, List, Mapping, Optional, Tuple

import numpy as np

from isic_station.preprocess.image import (
    ImageInput,
    ImageParams,
    NoUsableTiles,
    cut_frame,
    rows_for,
    select_tiles,
    tile_evidence,
)

log = logging.getLogger(__name__)


class ImageBatchBuilder:
    """Add frames (that passed the quality gate) as they come; `batch()` is the model's image input."""

    def __init__(self, camera_um_per_px: float, params: Mapping[str, Any],
                 counter: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> None:
        """`counter(tiles [n, C, P, P]) -> [F]` sums the fibre length per type over n >= 0 tiles (None: no counting)."""
        self.camera_um_per_px = camera_um_per_px
        self.params = params
        self.spec = ImageParams.from_manifest(params)
        self.counter = counter
        self._counts: Optional[np.ndarray] = None
        self._rows: List[np.ndarray] = []
        self._scores: List[np.ndarray] = []
        self._origins: List[Tuple[int, int, int]] = []
        self._masked = [0, 0, 0]   # tiles masked, label px, ignored px
        self._frames = 0

    def add(self, frame_bgr: np.ndarray) -> None:
        """Cut, score and normalise this frame's tiles; keep its best N and count the fibres on all its usable
        tiles (raises as build_image_input does, except that a frame without a usable tile just adds none)."""
        index = self._frames
        self._frames += 1
        cut = cut_frame(frame_bgr, self.camera_um_per_px, self.spec)
        if self.counter is not None:
            counted = np.asarray(self.counter(cut.counted(self.spec)), dtype=np.float64)
            self._counts = counted if self._counts is None else self._counts + counted
        try:
            best = select_tiles([cut], self.spec)
        except NoUsableTiles:
            return
        distinct = len(best.scores) - best.repeated
        self._rows.append(best.batch[:distinct])
        self._scores.append(best.scores[:distinct])
        self._origins.extend((index, top, left) for _f, top, left in best.origins[:distinct])
        for i, count in enumerate((best.tiles_masked, best.label_px, best.ignored_px)):
            self._masked[i] += count

    @property
    def frames(self) -> int:
        return self._frames

    def fibre_counts(self) -> Optional[np.ndarray]:
        """float32 [F]: the fibre length per type counted over every usable tile of the frames added
        (None without a counter or a frame)."""
        return None if self._counts is None else self._counts.astype(np.float32)

    def batch(self) -> Optional[np.ndarray]:
        """float32 [N, C, P, P] over the frames added (None without any): the best tiles (`rows_for`), the
        best repeated when there are fewer than the graph's batch, as `build_image_batch` gives them."""
        if not self._rows:
            return None
        rows, scores = np.concatenate(self._rows), np.concatenate(self._scores)
        order = np.lexsort((-scores,))  # stable: frame order, then the frame's own (position) order
        wanted = rows_for(len(order), self.spec)
        chosen = order[np.arange(wanted) % len(order)]
        batch = np.ascontiguousarray(rows[chosen])
        if log.isEnabledFor(logging.DEBUG):   # the evidence `bench accuracy` checks label tiles against
            evidence = ImageInput(batch, scores[chosen], tuple(self._origins[i] for i in chosen), len(order),
                                  max(0, wanted - len(order)), *self._masked)
            log.debug("%s", tile_evidence(evidence, self.camera_um_per_px, self.params))
        return batch
