"""The fibre counter at run time: the manifest's `counter` graph over any number of tiles.

The graph has a static tile batch (ATC wants static shapes), so tiles are fed in chunks of that size
(`batches.TileGraph`: the last one padded, its padding's rows dropped); the per-tile fibre lengths
(tile sides per fibre type) are summed. `ImageBatchBuilder` calls it on every usable tile of each frame
as the frame arrives; training data (`isic_model.data`) count with the same class on an ONNX Runtime
session.
"""

from typing import Callable

import numpy as np

from isic_station.inference.base import GRAPH_COUNTER, Backend
from isic_station.inference.batches import TileGraph

INPUT_IMAGE = "image"
OUTPUT_FIBRE_LENGTH = "fibre_length"


class FibreCounter(TileGraph):
    """`counter(tiles [n, C, P, P]) -> float64 [F]`: fibre length per type summed over the n >= 0 tiles."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], batch: int, n_fibres: int) -> None:
        """`run(tiles [batch, C, P, P]) -> [batch, F]` is one call of the counter graph."""
        super().__init__(run, batch, (n_fibres,))

    @classmethod
    def on_backend(cls, backend: Backend) -> "FibreCounter":
        """The manifest's counter graph on a loaded backend (the station's and `evaluate`'s path)."""
        graph = backend.graph(GRAPH_COUNTER)
        return cls(lambda tiles: backend.run(GRAPH_COUNTER, {INPUT_IMAGE: tiles})[OUTPUT_FIBRE_LENGTH],
                   graph.inputs[0].shape[0], graph.output(OUTPUT_FIBRE_LENGTH).shape[1])

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        return self.rows(tiles).astype(np.float64).sum(axis=0)
