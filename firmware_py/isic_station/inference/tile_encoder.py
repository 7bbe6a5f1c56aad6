"""The tile encoder at run time: the manifest's `tile_encoder` graph over any number of tiles.

A model whose bimodal graph was cut after its image encoder (`isic-model split-graph`) has a
`tile_encoder` graph (image [T, C, P, P] -> tile_tokens [T, N, d]) and a `fusion` graph that takes those
tokens where the bimodal graph takes the tiles. The encoder reads each tile alone, so `ImageBatchBuilder`
encodes a frame's tiles that may be picked as the frame arrives, and after the last frame only the fusion
is left to run (`Predictor.infer`): the user waits for the fusion, not for the encoder.
"""

import numpy as np

from isic_station.inference.base import GRAPH_TILE_ENCODER, Backend
from isic_station.inference.batches import TileGraph

INPUT_IMAGE = "image"
OUTPUT_TILE_TOKENS = "tile_tokens"


class TileEncoder(TileGraph):
    """`encoder(tiles [n, C, P, P]) -> float32 [n, N, d]`: each tile's tokens (n >= 0)."""

    @classmethod
    def on_backend(cls, backend: Backend) -> "TileEncoder":
        """The manifest's tile-encoder graph on a loaded backend."""
        graph = backend.graph(GRAPH_TILE_ENCODER)
        return cls(lambda tiles: backend.run(GRAPH_TILE_ENCODER, {INPUT_IMAGE: tiles})[OUTPUT_TILE_TOKENS],
                   graph.inputs[0].shape[0], graph.output(OUTPUT_TILE_TOKENS).shape[1:])

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        return self.rows(tiles)
