"""`build_image_batch` one frame at a time, so the image input is ready when the last frame is.

The station reads frames while the spectrometer integrates; cutting, masking and scoring a frame's tiles as
it arrives (in the frame thread, `preprocess.image.cut_frame`) leaves only the pick across frames and the
normalisation of the tiles picked for after the acquisition (`select_tiles` over the frames' cut tiles, kept
as uint8). That is `build_image_batch` of all the frames by construction (a test checks it), masks (label,
dust, glare) included: a label found in any frame of the measurement blocks its tiles in every frame, which
only the pick over all of them can do. `batch()` logs at DEBUG which tiles went in (`tile_evidence`).

With a `counter` (the model's fibre counter, `inference.counter.FibreCounter`), every usable tile of
every frame is also counted as the frame arrives (tiles masked in that frame count for nothing):
`fibre_counts()` is the fibre length per type over all of them, the bimodal graph's `fibre_counts` input.
So only the last frame's cutting and counting are left for after the last frame has arrived.
"""

import logging
from typing import Any, Callable, List, Mapping, Optional

import numpy as np

from isic_station.preprocess.image import FrameTiles, ImageParams, NoUsableTiles, cut_frame, select_tiles, tile_evidence

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
        self._cut: List[FrameTiles] = []

    def add(self, frame_bgr: np.ndarray) -> None:
        """Cut, mask and score this frame's tiles and count the fibres on its usable ones (raises as
        build_image_input does)."""
        cut = cut_frame(frame_bgr, self.camera_um_per_px, self.spec)
        if self.counter is not None:
            counted = np.asarray(self.counter(cut.counted(self.spec)), dtype=np.float64)
            self._counts = counted if self._counts is None else self._counts + counted
        self._cut.append(cut)

    @property
    def frames(self) -> int:
        return len(self._cut)

    def fibre_counts(self) -> Optional[np.ndarray]:
        """float32 [F]: the fibre length per type counted over every usable tile of the frames added
        (None without a counter or a frame)."""
        return None if self._counts is None else self._counts.astype(np.float32)

    def batch(self) -> Optional[np.ndarray]:
        """float32 [N, C, P, P] over the frames added (None without any frame or usable tile): the best tiles
        (`rows_for`), the best repeated when there are fewer than the graph's batch, as `build_image_batch`
        gives them."""
        if not self._cut:
            return None
        try:
            image = select_tiles(self._cut, self.spec)
        except NoUsableTiles:
            return None
        if log.isEnabledFor(logging.DEBUG):   # the evidence `bench accuracy` checks label tiles against
            log.debug("%s", tile_evidence(image, self.camera_um_per_px, self.params))
        return image.batch
