"""Score a set of pool indices with a strategy's scorer, in index order, in fixed-size batches.

A scorer is a picklable object (weights + how to rebuild the models) with ``setup(device)`` and
``__call__(x, idx) -> {name: Tensor[B, ...]}``; the same scorer runs in-process and on Ray Data actors.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from tavaal.core.batches import iter_batches
from tavaal.data.base import ALData


class Scorer(Protocol):
    def setup(self, device: torch.device) -> None: ...

    def __call__(self, x: torch.Tensor, idx: np.ndarray) -> dict[str, torch.Tensor]: ...


@torch.no_grad()
def score_pool(
    scorer: Scorer, data: ALData, indices: np.ndarray, batch_size: int, device: torch.device
) -> dict[str, np.ndarray]:
    """Run ``scorer`` over train-split ``indices`` (unaugmented); outputs concatenated in index order."""
    scorer.setup(device)
    parts: dict[str, list[np.ndarray]] = {}
    for x, _, idx in iter_batches(data, "train", np.asarray(indices), batch_size):
        for name, value in scorer(x.to(device), idx).items():
            parts.setdefault(name, []).append(value.detach().float().cpu().numpy())
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}
