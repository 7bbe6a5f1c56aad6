"""Rows through a graph with a static batch (ATC wants static shapes), whatever their number.

The bimodal graph and the per-tile graphs (fibre counter, tile encoder) each take a fixed number of tile
rows per run. More rows run in chunks of that size; the last chunk is padded with its own first rows, whose
answers the caller drops. Repeats rather than zeros: the bimodal graph's rows also see the mean over their
run's tiles, which a zero tile would pull away from anything the graph was trained on (a per-tile graph's
rows are independent, so for it the padding is only what the shape needs).
"""

from typing import Callable, Iterator, Sequence, Tuple

import numpy as np


def static_batches(rows: np.ndarray, batch: int) -> Iterator[Tuple[np.ndarray, int]]:
    """Each chunk of `rows` as float32 [batch, ...] and how many of its rows are real (the first ones)."""
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        real = len(chunk)
        if real < batch:
            chunk = np.concatenate([chunk, chunk[np.arange(batch - real) % real]])
        yield np.ascontiguousarray(chunk, dtype=np.float32), real


class TileGraph:
    """A per-tile graph over any number of tiles: `rows(tiles [n, C, P, P]) -> float32 [n, ...]`, one answer
    row per tile, the graph run in static batches (`static_batches`)."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], batch: int, row_shape: Sequence[int]) -> None:
        """`run(tiles [batch, C, P, P]) -> [batch, *row_shape]` is one call of the graph."""
        self.run, self.batch, self.row_shape = run, int(batch), tuple(int(d) for d in row_shape)

    def rows(self, tiles: np.ndarray) -> np.ndarray:
        answers = [np.asarray(self.run(chunk), dtype=np.float32)[:real]
                   for chunk, real in static_batches(tiles, self.batch)]
        return np.concatenate(answers) if answers else np.zeros((0,) + self.row_shape, dtype=np.float32)
