"""Rows through a graph with a static batch (ATC wants static shapes), whatever their number.

The bimodal graph and the fibre counter each take a fixed number of tile rows per run. More rows run in
chunks of that size; the last chunk is padded with its own first rows, whose answers the caller drops.
Repeats rather than zeros: the bimodal graph's rows also see the mean over their run's tiles, which a
zero tile would pull away from anything the graph was trained on (the counter's rows are independent,
so for it the padding is only what the shape needs).
"""

from typing import Iterator, Tuple

import numpy as np


def static_batches(rows: np.ndarray, batch: int) -> Iterator[Tuple[np.ndarray, int]]:
    """Each chunk of `rows` as float32 [batch, ...] and how many of its rows are real (the first ones)."""
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        real = len(chunk)
        if real < batch:
            chunk = np.concatenate([chunk, chunk[np.arange(batch - real) % real]])
        yield np.ascontiguousarray(chunk, dtype=np.float32), real
