"""A two-class imbalanced 2-D toy set in the spirit of the paper's Fig. 1: two noisy interleaved moons.

The pool has a 10:1 class ratio (class 0 the majority, class 1 the minority) and the test split is
balanced, so a strategy that finds the minority class shows it in test accuracy. Points are float32
vectors, so ``ALData.is_image`` is False: no normalization, no augmentation.
"""

from __future__ import annotations

import numpy as np
import torch

from tavaal.config import DataConfig
from tavaal.data.base import ALData, Split
from tavaal.registry import DATASETS

POOL_RATIO = 10  # majority : minority in the pool
NOISE = 0.15  # std of the Gaussian jitter around each moon: enough overlap that the boundary matters
_SEED = 20_240_201  # fixed: the toy set is the same for every run; the run seed picks labels, not data


def moons(counts: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``counts[c]`` points of class c -> x float32 ``[N, 2]``, y int64 ``[N]`` (shuffled)."""
    xs, ys = [], []
    for c, n in enumerate(counts):
        t = rng.uniform(0.0, np.pi, n)
        if c == 0:  # upper moon
            pts = np.stack([np.cos(t), np.sin(t)], axis=1)
        else:  # lower moon, shifted to interleave with the upper one
            pts = np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], axis=1)
        xs.append(pts + rng.normal(0.0, NOISE, pts.shape))
        ys.append(np.full(n, c, dtype=np.int64))
    order = rng.permutation(sum(counts))
    return np.concatenate(xs).astype(np.float32)[order], np.concatenate(ys)[order]


def _split(counts: tuple[int, int], rng: np.random.Generator) -> Split:
    x, y = moons(counts, rng)
    return Split(torch.from_numpy(x), torch.from_numpy(y))


@DATASETS.register("toy2d")
def toy2d(cfg: DataConfig) -> ALData:
    """Pool of ``cfg.num_train or 2000`` points (10:1), balanced test of ``cfg.num_test or 1000``."""
    n_train, n_test = cfg.num_train or 2000, cfg.num_test or 1000
    n_minor = max(1, round(n_train / (POOL_RATIO + 1)))
    train_rng, test_rng = (np.random.default_rng([_SEED, k]) for k in (0, 1))
    return ALData(
        name="toy2d",
        train=_split((n_train - n_minor, n_minor), train_rng),
        test=_split((n_test - n_test // 2, n_test // 2), test_rng),
        num_classes=2,
        class_names=("majority", "minority"),
    )
