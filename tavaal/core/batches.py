"""Mini-batches straight from the in-memory data set (no DataLoader workers: 2-core machines and
Ray workers both do better without them for data that fits in memory)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from tavaal.data.base import ALData


def iter_batches(
    data: ALData,
    split: str,
    indices: np.ndarray,
    batch_size: int,
    generator: torch.Generator | None = None,
    shuffle: bool = False,
    augment: bool = False,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
    """Yield ``(x [B, ...], y [B], idx [B])`` in ``indices`` order, or shuffled with ``generator``.

    The same generator draws the training augmentation (crops, flips) when ``augment`` is set.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if shuffle:
        indices = indices[torch.randperm(indices.size, generator=generator).numpy()]
    stop = indices.size - (indices.size % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        idx = indices[start : start + batch_size]
        x, y = data.batch(split, idx, augment=augment, generator=generator)
        yield x, y, idx


def endless_batches(
    data: ALData, indices: np.ndarray, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """Unaugmented training-split batches forever, reshuffled at every pass (VAE/discriminator training)."""
    while True:
        for x, _, idx in iter_batches(data, "train", indices, batch_size, generator, shuffle=True):
            yield x, idx
