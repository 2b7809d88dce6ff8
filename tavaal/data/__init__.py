"""Data sets for active learning: every builder returns an ``ALData`` (see ``base.py``).

Importing this package registers every data set in ``tavaal.registry.DATASETS``; ``build_dataset`` turns a
``DataConfig`` into the pool (train split) and the held-out test split of one run.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from tavaal.config import DataConfig
from tavaal.data import (  # noqa: F401 (registration)
    caltech101,
    cifar,
    cityscapes,
    fashionmnist,
    imagefolder,
    parquet,
    shapes,
    svhn,
    synthetic,
    toy2d,
)
from tavaal.data.base import ALData, Split
from tavaal.data.imbalance import make_imbalanced
from tavaal.errors import ConfigError
from tavaal.registry import DATASETS

__all__ = ["ALData", "Split", "build_dataset", "make_imbalanced", "subsample"]

# Independent random streams per step, so that e.g. setting num_test does not change the train subset.
_TRAIN_STREAM, _TEST_STREAM = 0, 1


def subsample(split: Split, n: int | None, rng: np.random.Generator) -> Split:
    """A uniformly random subset of ``n`` samples in their original order (sorted indices); all if n is None.

    A lazy image source stays lazy (``Split.subset``): nothing is rendered here.
    """
    if n is None or n >= len(split):
        return split
    idx = torch.from_numpy(np.sort(rng.choice(len(split), size=n, replace=False)))
    return split.subset(idx)


def build_dataset(cfg: DataConfig, seed: int) -> ALData:
    """Load ``cfg.name`` and shape it for one run: ``num_train``/``num_test`` subsets, then the imbalance.

    Order: (1) the seeded uniform subsets of the train and test splits come first, so ``num_train`` sets the
    size of a class-balanced source pool (as balanced as the data set); (2) the imbalance is applied to that
    subset, so the ratio of largest to smallest class holds exactly for the pool the run sees. The other
    order would draw a uniform subset of an already imbalanced pool: the ratio would drift and a minority
    class could vanish. Both steps use ``seed`` (separate streams); the test split is never imbalanced.
    """
    data: ALData = DATASETS.get(cfg.name)(cfg)
    data = dataclasses.replace(
        data,
        train=subsample(data.train, cfg.num_train, np.random.default_rng([seed, _TRAIN_STREAM])),
        test=subsample(data.test, cfg.num_test, np.random.default_rng([seed, _TEST_STREAM])),
    )
    if cfg.imbalance_ratio > 1:
        if (data.train.y < 0).any():
            raise ConfigError(
                "config field 'data.imbalance_ratio' needs every pool label; this pool has rows "
                "without one: leave it at 1"
            )
        data = make_imbalanced(data, cfg.imbalance_ratio, cfg.minority_classes, seed)
    return data
