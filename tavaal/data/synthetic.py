"""A tiny learnable image set for tests and smoke runs: 4 classes of 1x16x16 uint8 images.

Class c is a bright blob centred in quadrant c (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right),
jittered by a pixel, on a noisy background; the blob survives the training crop (pad 2), so a small CNN
separates the classes after an epoch or two. Generation is vectorized numpy: a few milliseconds.

``synthetic_large`` is the same kind of image in a pool too big to hold (1,000,000 by default): its train
images are a ``LazyImages`` source that renders each requested image from its index and a fixed seed (a
counter-based hash, so any subset renders alone, in any process), for memory and scaling tests.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import torch

from tavaal.config import DataConfig
from tavaal.data.base import ALData, Split
from tavaal.errors import ConfigError
from tavaal.registry import DATASETS

NUM_CLASSES = 4
MAX_IN_MEMORY = 2_000_000  # images of one split held as a tensor (16x16: 512 MB)
SIZE = 16
_SEED = 1234  # fixed: the same images in every run; the run seed picks labels and augmentation
MEAN, STD = (0.2296,), (0.1742,)  # measured on the generated pixels (/255); fixed so they never depend on n
_CENTERS = np.array([[4, 4], [4, 11], [11, 4], [11, 11]], dtype=np.float64)  # (row, col) per class


def synthetic_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """x uint8 ``[n, 1, 16, 16]`` and y int64 ``[n]`` with classes balanced (``arange(n) % 4``, shuffled)."""
    y = rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.int64)
    jitter = rng.integers(-1, 2, size=(n, 2))
    noise = rng.normal(40.0, 20.0, size=(n, SIZE, SIZE))
    return _render(y, jitter, noise), y


def _render(y: np.ndarray, jitter: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """uint8 ``[n, 1, 16, 16]``: class y's blob moved by ``jitter`` ``[n, 2]`` on ``noise`` ``[n, 16, 16]``."""
    n = y.shape[0]
    centers = _CENTERS[y] + jitter
    grid = np.arange(SIZE, dtype=np.float64)
    d2 = (grid.reshape(1, SIZE, 1) - centers[:, 0].reshape(n, 1, 1)) ** 2 + (
        grid.reshape(1, 1, SIZE) - centers[:, 1].reshape(n, 1, 1)
    ) ** 2
    blob = 200.0 * np.exp(-d2 / (2 * 2.0**2))  # Gaussian blob, sigma 2 px
    return np.clip(blob + noise, 0, 255).astype(np.uint8)[:, None]


def _split(n: int, rng: np.random.Generator) -> Split:
    x, y = synthetic_images(n, rng)
    return Split(torch.from_numpy(x), torch.from_numpy(y))


@DATASETS.register("synthetic")
def synthetic(cfg: DataConfig) -> ALData:
    """``cfg.num_train or 512`` train / ``cfg.num_test or 256`` test images, deterministic."""
    for key, n in (("data.num_train", cfg.num_train), ("data.num_test", cfg.num_test)):
        if n is not None and n > MAX_IN_MEMORY:
            raise ConfigError(
                f"config field '{key}' is {n}, but 'synthetic' holds at most {MAX_IN_MEMORY:,} images "
                "in memory; use data.name=synthetic_large for bigger pools"
            )
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


# ---------------------------------------------------------------- a pool too big to hold: synthetic_large


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer on uint64 arrays (wrapping arithmetic): a counter-based random stream."""
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _uniforms(seed: int, src: np.ndarray, k: int) -> np.ndarray:
    """float64 ``[n, k]`` in (0, 1): draw j of image ``src[i]`` depends on (seed, src[i], j) only."""
    key = _splitmix64(src.astype(np.uint64) + np.uint64(seed) * np.uint64(0x100000001B3))
    h = _splitmix64(key[:, None] * np.uint64(1024) + np.arange(k, dtype=np.uint64)[None, :])
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


@functools.cache
def _blob_table() -> np.ndarray:
    """float32 ``[4, 3, 3, 16, 16]``: the blob of class c jittered by (dy - 1, dx - 1), as ``_render`` draws it."""
    y = np.repeat(np.arange(NUM_CLASSES), 9)
    jitter = np.tile(np.stack(np.meshgrid([-1, 0, 1], [-1, 0, 1], indexing="ij"), -1).reshape(9, 2), (NUM_CLASSES, 1))
    centers = _CENTERS[y] + jitter
    grid = np.arange(SIZE, dtype=np.float64)
    d2 = (grid.reshape(1, SIZE, 1) - centers[:, 0].reshape(-1, 1, 1)) ** 2 + (
        grid.reshape(1, 1, SIZE) - centers[:, 1].reshape(-1, 1, 1)
    ) ** 2
    return (200.0 * np.exp(-d2 / (2 * 2.0**2))).astype(np.float32).reshape(NUM_CLASSES, 3, 3, SIZE, SIZE)


_RENDER_CHUNK = 8192  # images rendered at a time by LazyImages


class LazyImages:
    """A procedural image source standing in for a uint8 tensor ``[N, 1, 16, 16]`` (``synthetic`` images).

    Indexing (``x[idx]``: a LongTensor, an integer array or a slice) renders the requested images only;
    image i is a deterministic function of (seed, its source index, its class), so any subset renders the
    same pixels in any process, and the object pickles to its label array (1 byte per image).
    ``subset(idx)`` is a lazy view (what subsampling uses instead of ``x[idx]``).
    """

    def __init__(self, labels: np.ndarray, seed: int, rows: np.ndarray | None = None) -> None:
        self.labels = np.asarray(labels, dtype=np.int8)  # class per source index
        self.seed = seed
        self.rows = rows  # view: position -> source index (None: identity)

    def __len__(self) -> int:
        return int(self.labels.shape[0] if self.rows is None else self.rows.shape[0])

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), 1, SIZE, SIZE))

    def dim(self) -> int:
        return 4

    def _positions(self, idx) -> np.ndarray:
        n = len(self)
        if isinstance(idx, slice):
            return np.arange(n)[idx]
        pos = np.asarray(idx)
        if pos.dtype.kind not in "iu":
            raise TypeError(f"LazyImages takes integer indices or a slice, got dtype {pos.dtype}")
        pos = pos.astype(np.int64)
        if pos.size and (pos.min() < -n or pos.max() >= n):
            bad = pos[(pos < -n) | (pos >= n)][0]
            raise IndexError(f"index {bad} is out of bounds for LazyImages of size {n}")
        return np.where(pos < 0, pos + n, pos)

    def __getitem__(self, idx) -> torch.Tensor:
        """uint8 ``[B, 1, 16, 16]`` for positions ``idx`` (``[1, 16, 16]`` for one integer)."""
        pos = self._positions(idx)
        src = (pos if self.rows is None else self.rows[pos]).reshape(-1)
        x = np.empty((src.size, 1, SIZE, SIZE), dtype=np.uint8)
        for start in range(0, src.size, _RENDER_CHUNK):  # bounded temporaries (~2 KB of floats per image)
            x[start : start + _RENDER_CHUNK, 0] = self._render(src[start : start + _RENDER_CHUNK])
        return torch.from_numpy(x[0] if pos.ndim == 0 else x)

    def _render(self, src: np.ndarray) -> np.ndarray:
        """uint8 ``[n, 16, 16]`` for source indices ``src``."""
        u = _uniforms(self.seed, src, SIZE * SIZE + 2).astype(np.float32)
        # Box-Muller on 128 uniform pairs -> 256 normals per image: the N(40, 20) background of synthetic
        radius, angle = np.sqrt(-2.0 * np.log(u[:, :128])), np.float32(2 * np.pi) * u[:, 128:256]
        noise = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)], axis=1) * 20.0 + 40.0
        shift = np.floor(u[:, 256:] * 3).astype(np.int64)  # jitter + 1: -1, 0 or 1 pixel, as in synthetic
        blob = _blob_table()[self.labels[src], shift[:, 0], shift[:, 1]]  # [n, 16, 16] float32
        return np.clip(blob + noise.reshape(-1, SIZE, SIZE), 0, 255).astype(np.uint8)

    def subset(self, idx) -> LazyImages:
        pos = self._positions(idx).reshape(-1)
        return LazyImages(self.labels, self.seed, pos if self.rows is None else self.rows[pos])


@DATASETS.register("synthetic_large")
def synthetic_large(cfg: DataConfig) -> ALData:
    """``cfg.num_train or 1_000_000`` lazily rendered train images (classes balanced and shuffled as in
    ``synthetic``), ``cfg.num_test or 256`` ordinary test images; normalization as ``synthetic``."""
    n = cfg.num_train or 1_000_000
    y = np.random.default_rng([_SEED, 2]).permutation(np.arange(n) % NUM_CLASSES)
    small = synthetic(dataclasses.replace(cfg, num_train=1))
    return dataclasses.replace(
        small,
        name="synthetic_large",
        train=Split(LazyImages(y, _SEED), torch.from_numpy(y.astype(np.int64))),
    )
