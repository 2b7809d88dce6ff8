"""Active-learning state: one integer per pool sample, the stage at which it was labeled (-1: unlabeled)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class PoolState:
    """``labeled_at[i]`` = stage at which absolute sample ``i`` was labeled, -1 if unlabeled.

    Stage 0 holds the initial random labels; a query made at the end of stage ``s`` labels with ``s + 1``.
    The state is immutable: ``label`` returns a new one.
    """

    labeled_at: np.ndarray  # int64 [N]

    @classmethod
    def empty(cls, n: int) -> PoolState:
        return cls(np.full(n, -1, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.labeled_at.shape[0])

    @property
    def num_labeled(self) -> int:
        return int((self.labeled_at >= 0).sum())

    def labeled_indices(self) -> np.ndarray:
        return np.flatnonzero(self.labeled_at >= 0)

    def unlabeled_indices(self) -> np.ndarray:
        return np.flatnonzero(self.labeled_at < 0)

    def labeled_in(self, stage: int) -> np.ndarray:
        """Indices labeled exactly at ``stage`` (stage 0: the initial set)."""
        return np.flatnonzero(self.labeled_at == stage)

    def label(self, idx: np.ndarray, stage: int) -> PoolState:
        """Return a new state with ``idx`` labeled at ``stage``; raises on double or out-of-range labels."""
        idx = np.asarray(idx, dtype=np.int64)
        if stage < 0:
            raise ValueError(f"stage must be >= 0, got {stage}")
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise ValueError(f"indices must be in [0, {len(self)}), got min {idx.min()} max {idx.max()}")
        if np.unique(idx).size != idx.size:
            raise ValueError("indices to label contain duplicates")
        already = idx[self.labeled_at[idx] >= 0]
        if already.size:
            raise ValueError(f"{already.size} indices are already labeled, e.g. {int(already[0])}")
        new = self.labeled_at.copy()
        new[idx] = stage
        return PoolState(new)

    def to_dict(self) -> dict:
        return {"labeled_at": torch.from_numpy(self.labeled_at.copy())}

    @classmethod
    def from_dict(cls, d: dict) -> PoolState:
        return cls(np.asarray(d["labeled_at"], dtype=np.int64).copy())


def initial_pool(n: int, initial: int, rng: np.random.Generator) -> PoolState:
    """Label ``initial`` samples uniformly at random without replacement (stage 0)."""
    if initial > n:
        raise ValueError(f"cannot label {initial} of {n} samples")
    return PoolState.empty(n).label(np.sort(rng.choice(n, size=initial, replace=False)), 0)


def draw_candidates(pool: PoolState, subset_size: int, rng: np.random.Generator) -> np.ndarray:
    """M random unlabeled indices (sorted), re-drawn every stage; all unlabeled if fewer than M remain."""
    unlabeled = pool.unlabeled_indices()
    if unlabeled.size <= subset_size:
        return unlabeled
    return np.sort(rng.choice(unlabeled, size=subset_size, replace=False))
