"""A tiny learnable image set for tests and smoke runs: 4 classes of 1x16x16 uint8 images.

Class c is a bright blob centred in quadrant c (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right),
jittered by a pixel, on a noisy background; the blob survives the training crop (pad 2), so a small CNN
separates the classes after an epoch or two. Generation is vectorized numpy: a few milliseconds.
"""
from __future__ import annotations

import numpy as np
import torch

from tavaal.config import DataConfig
from tavaal.data.base import ALData, Split
from tavaal.registry import DATASETS

NUM_CLASSES = 4
SIZE = 16
_SEED = 1234  # fixed: the same images in every run; the run seed picks labels and augmentation
MEAN, STD = (0.2296,), (0.1742,)  # measured on the generated pixels (/255); fixed so they never depend on n
_CENTERS = np.array([[4, 4], [4, 11], [11, 4], [11, 11]], dtype=np.float64)  # (row, col) per class


def synthetic_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """x uint8 ``[n, 1, 16, 16]`` and y int64 ``[n]`` with classes balanced (``arange(n) % 4``, shuffled)."""
    y = rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.int64)
    centers = _CENTERS[y] + rng.integers(-1, 2, size=(n, 2))
    grid = np.arange(SIZE, dtype=np.float64)
    d2 = (grid.reshape(1, SIZE, 1) - centers[:, 0].reshape(n, 1, 1)) ** 2 \
        + (grid.reshape(1, 1, SIZE) - centers[:, 1].reshape(n, 1, 1)) ** 2
    blob = 200.0 * np.exp(-d2 / (2 * 2.0 ** 2))  # Gaussian blob, sigma 2 px
    noise = rng.normal(40.0, 20.0, size=(n, SIZE, SIZE))
    x = np.clip(blob + noise, 0, 255).astype(np.uint8)
    return x[:, None], y


def _split(n: int, rng: np.random.Generator) -> Split:
    x, y = synthetic_images(n, rng)
    return Split(torch.from_numpy(x), torch.from_numpy(y))


@DATASETS.register("synthetic")
def synthetic(cfg: DataConfig) -> ALData:
    """``cfg.num_train or 512`` train / ``cfg.num_test or 256`` test images, deterministic."""
    train_rng, test_rng = (np.random.default_rng([_SEED, k]) for k in (0, 1))
    return ALData(
        name="synthetic",
        train=_split(cfg.num_train or 512, train_rng),
        test=_split(cfg.num_test or 256, test_rng),
        num_classes=NUM_CLASSES,
        mean=MEAN,
        std=STD,
        crop_pad=2,
        flip=False,  # a flip would move the blob into another class's quadrant
        class_names=("top-left", "top-right", "bottom-left", "bottom-right"),
    )
