"""Imbalanced pools as in the paper: some classes keep only 1/ratio as many training images as the largest.

Paper (imbalanced CIFAR-10): 5,000 images per class, ratio 100, even classes -> 50 images each for classes
0,2,4,6,8 and 5,000 for the odd ones; the test split stays balanced. The official code keeps the *first* N
images of each minority class; we draw them at random with the seed, so that the kept subset is not tied to
the file order and different seeds see different minority samples.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from tavaal.data.base import ALData
from tavaal.errors import ConfigError


def parse_minority(minority: str, num_classes: int) -> list[int]:
    """``"even"`` -> [0, 2, ...], ``"odd"`` -> [1, 3, ...], ``"0,3"`` -> [0, 3]; ConfigError if out of range."""
    if minority == "even":
        return list(range(0, num_classes, 2))
    if minority == "odd":
        return list(range(1, num_classes, 2))
    parts = [p.strip() for p in minority.split(",")]
    if not parts or not all(p.isdigit() for p in parts):
        raise ConfigError(
            f"config field 'data.minority_classes' must be 'even', 'odd' or a comma list of class ids, got {minority!r}"
        )
    ids = sorted({int(p) for p in parts})
    bad = [c for c in ids if c >= num_classes]
    if bad:
        raise ConfigError(
            f"config field 'data.minority_classes' names class {bad[0]}, but the data set has "
            f"{num_classes} classes (0..{num_classes - 1}); use ids in that range"
        )
    return ids


def minority_size(n_max: int, ratio: float) -> int:
    """Images kept per minority class: ``max(1, round(n_max / ratio))`` (5,000 / 100 -> 50)."""
    return max(1, int(round(n_max / ratio)))


def imbalanced_indices(
    labels: np.ndarray, num_classes: int, ratio: float, minority: list[int], rng: np.random.Generator
) -> np.ndarray:
    """Sorted indices into ``labels`` ``[N]`` to keep: all of the majority classes, a random few of the rest."""
    counts = np.bincount(labels, minlength=num_classes)
    keep_n = minority_size(int(counts.max()), ratio)
    keep = np.ones(labels.shape[0], dtype=bool)
    for c in minority:
        idx = np.flatnonzero(labels == c)
        if idx.size > keep_n:
            keep[idx] = False
            keep[rng.choice(idx, size=keep_n, replace=False)] = True
    return np.flatnonzero(keep)


def make_imbalanced(data: ALData, ratio: float, minority: str, seed: int) -> ALData:
    """Return ``data`` with each minority class of the train split cut to ``max(1, round(n_max / ratio))``.

    ``n_max`` is the largest class count of the train split; minority classes that already have fewer keep
    all theirs. Kept images are drawn uniformly at random with ``seed`` and stay in their original order.
    The test split is unchanged.
    """
    if ratio < 1:
        raise ConfigError(f"config field 'data.imbalance_ratio' must be >= 1, got {ratio!r}")
    classes = parse_minority(minority, data.num_classes)
    labels = data.train.y.numpy()
    keep = imbalanced_indices(labels, data.num_classes, ratio, classes, np.random.default_rng(seed))
    idx = torch.from_numpy(keep)
    return dataclasses.replace(data, train=data.train.subset(idx))  # lazy images stay lazy
