"""`build_image_batch` one frame at a time, so the image input is ready when the last frame is.

The station reads frames while the spectrometer integrates; cutting, masking and scoring a frame's tiles as
it arrives (in the frame thread, `preprocess.image.cut_frame`) leaves only the pick across frames and the
normalisation of the tiles picked for after the acquisition (`select_tiles` over the frames' cut tiles, kept
as uint8). That is `build_image_batch` of all the frames by construction (a test checks it), masks (label,
dust, glare) included: a label found in any frame of the measurement blocks its tiles in every frame, which
only the pick over all of them can do. `built()` logs at DEBUG which tiles went in (`tile_evidence`).

With a `counter` (the model's fibre counter, `inference.counter.FibreCounter`), every usable tile of
every frame is also counted as the frame arrives (tiles masked in that frame count for nothing):
`fibre_counts()` is the fibre length per type over all of them, the bimodal graph's `fibre_counts` input.
With an `encoder` (the model's tile encoder, `inference.tile_encoder.TileEncoder`), the tiles are encoded
as their frame arrives too, and the picked rows' tokens are the fusion graph's `tile_tokens`. The pick is
known only after the last frame, so a frame's usable tiles are encoded when they rank among the best
`max_tiles` seen so far (a tile outside them then cannot be picked later, unless a label found in a later
frame blocks better ones: `tile_tokens()` encodes any picked tile still without tokens). At the production
settings (16 frames of 640x480 at 1.6 µm/px) that encodes about 230 of some 475 usable tiles, 96 of them
picked; encoding every usable tile would double it. So only the last frame's cutting, counting and the
encoding of its few best tiles are left for after the last frame has arrived.
"""

import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np

from isic_station.preprocess.image import (
    FrameTiles,
    ImageInput,
    ImageParams,
    NoUsableTiles,
    cut_frame,
    select_tiles,
    tile_evidence,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamedImage:
    """One measurement's image input as `ImageBatchBuilder` built it while the frames arrived.

    `params` is the manifest `image` object it was built for (another model loaded meanwhile makes it stale:
    the predictor then builds it again from the frames); `batch` float32 [N, C, P, P], None when no tile was
    usable (signal-only); `fibre_counts` [F] with a counter; `tile_tokens` [N, T, d], the encoder's tokens of
    the batch's rows, with an encoder.
    """

    params: Mapping[str, Any]
    batch: Optional[np.ndarray]
    fibre_counts: Optional[np.ndarray] = None
    tile_tokens: Optional[np.ndarray] = None


class ImageBatchBuilder:
    """Add frames (that passed the quality gate) as they come; `built()` is the model's image input."""

    def __init__(self, camera_um_per_px: float, params: Mapping[str, Any],
                 counter: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                 encoder: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> None:
        """`counter(tiles [n, C, P, P]) -> [F]` sums the fibre length per type over n >= 0 tiles, `encoder(tiles)
        -> [n, T, d]` gives each tile's tokens (None: no counting, no encoding)."""
        self.camera_um_per_px = camera_um_per_px
        self.params = params
        self.spec = ImageParams.from_manifest(params)
        self.counter = counter
        self.encoder = encoder
        self._counts: Optional[np.ndarray] = None
        self._cut: List[FrameTiles] = []
        self._tokens: List[Dict[int, np.ndarray]] = []   # per frame: tile index -> its tokens [T, d]
        self._selection: Optional[ImageInput] = None

    def add(self, frame_bgr: np.ndarray) -> None:
        """Cut, mask and score this frame's tiles; count the fibres on its usable ones and encode them (raises
        as build_image_input does)."""
        cut = cut_frame(frame_bgr, self.camera_um_per_px, self.spec)
        if self.counter is not None:
            counted = np.asarray(self.counter(cut.counted(self.spec)), dtype=np.float64)
            self._counts = counted if self._counts is None else self._counts + counted
        self._cut.append(cut)
        self._selection = None
        if self.encoder is not None:
            self._tokens.append({})
            self._encode(len(self._cut) - 1, np.flatnonzero(self._among_best(cut)))

    def _among_best(self, cut: FrameTiles) -> np.ndarray:
        """[tiles] bool: this frame's usable tiles that rank among the best `most_rows` usable ones so far."""
        scores = np.concatenate([frame.scores[frame.usable] for frame in self._cut])
        if len(scores) <= self.spec.most_rows:
            return cut.usable
        threshold = np.partition(scores, len(scores) - self.spec.most_rows)[len(scores) - self.spec.most_rows]
        return cut.usable & (cut.scores >= threshold)

    def _encode(self, frame: int, rows: np.ndarray) -> None:
        """Encode tiles `rows` of frame `frame` into its tokens."""
        if len(rows) == 0:
            return
        encoded = np.asarray(self.encoder(self._cut[frame].normalised(rows, self.spec)), dtype=np.float32)
        self._tokens[frame].update(zip(rows.tolist(), encoded))

    @property
    def frames(self) -> int:
        return len(self._cut)

    def fibre_counts(self) -> Optional[np.ndarray]:
        """float32 [F]: the fibre length per type counted over every usable tile of the frames added
        (None without a counter or a frame)."""
        return None if self._counts is None else self._counts.astype(np.float32)

    def _selected(self) -> Optional[ImageInput]:
        """The best tiles of the frames added (`select_tiles`), None without any frame or usable tile."""
        if self._selection is None and self._cut:
            try:
                self._selection = select_tiles(self._cut, self.spec)
            except NoUsableTiles:
                return None
            if log.isEnabledFor(logging.DEBUG):   # the evidence `bench accuracy` checks label tiles against
                log.debug("%s", tile_evidence(self._selection, self.camera_um_per_px, self.params))
        return self._selection

    def batch(self) -> Optional[np.ndarray]:
        """float32 [N, C, P, P] over the frames added (None without any frame or usable tile): the best tiles
        (`rows_for`), the best repeated when there are fewer than the graph's batch, as `build_image_batch`
        gives them."""
        image = self._selected()
        return None if image is None else image.batch

    def tile_tokens(self) -> Optional[np.ndarray]:
        """float32 [N, T, d]: the encoder's tokens of `batch()`'s rows (None without an encoder or a batch)."""
        image = self._selected()
        if image is None or self.encoder is None:
            return None
        starts = np.cumsum([0] + [len(cut.scores) for cut in self._cut])
        frame_of = np.searchsorted(starts, image.picked, side="right") - 1
        rows = image.picked - starts[frame_of]
        for frame in np.unique(frame_of).tolist():   # picked after all: a later frame's label blocked better tiles
            missing = np.unique([i for i in rows[frame_of == frame].tolist() if i not in self._tokens[frame]])
            if len(missing):
                log.debug("encoding %d picked tile(s) of frame %d late", len(missing), frame)
                self._encode(frame, missing)
        return np.stack([self._tokens[f][i] for f, i in zip(frame_of, rows)])

    def built(self) -> Optional[StreamedImage]:
        """The image input of the frames added, for the predictor (None without any frame)."""
        if not self._cut:
            return None
        return StreamedImage(self.params, self.batch(), self.fibre_counts(), self.tile_tokens())
