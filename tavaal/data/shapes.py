"""``shapes_seg``: a synthetic segmentation set for CPU runs and tests, RGB images of shapes on textures.

Each image is a random texture (two dark colours blended along low-frequency stripes of random direction,
frequency and phase, plus uniform pixel noise) with 1-4 bright shapes painted on it in order, each a disc, an axis-
aligned square, an upward equilateral triangle or a ring, with a random centre (fully inside the image), radius
``side/8 .. side/4`` and colour. Later shapes occlude earlier ones and the mask is painted in the same order, so
it is exact. Masks are uint8 ``[N, S, S]`` with 0 background, 1 disc, 2 square, 3 triangle, 4 ring; there are no
ignore (255) pixels. Shape classes are drawn with deliberately unequal probabilities (``SHAPE_PROBS``: discs
and squares common, triangles and rings rare) and their areas differ too (ring 0.75 pi r^2, triangle 1.3 r^2),
so the pixel-class distribution of a labeled set is skewed: about 80 % background, 10 % disc, 7 % square,
1.8 % triangle, 1.2 % ring at every size (measured on the default pool).

Shapes are flat bright colours (every channel >= 130) on a dark texture (every channel <= 110 + noise), and
large, so a small conv net learns them in a few epochs. Generation is vectorized numpy (about 0.1 s per 1,000
images of 32x32 on one core) in chunks of ``_CHUNK`` images, chunk k drawn from ``default_rng([_SEED, split, k])``:
image i depends only on (split, i), so a smaller ``num_train`` gives a prefix of the larger pool, and every run
sees the same images (the run seed picks labels and augmentation).
"""

from __future__ import annotations

import numpy as np
import torch

from tavaal.config import DataConfig
from tavaal.data.base import ALData, Split
from tavaal.errors import ConfigError
from tavaal.registry import DATASETS

CLASS_NAMES = ("background", "disc", "square", "triangle", "ring")
SHAPE_PROBS = (0.42, 0.33, 0.18, 0.07)  # disc, square, triangle, ring: unequal on purpose
MAX_SHAPES = 4  # shapes per image: uniform in 1..MAX_SHAPES
MIN_SIZE, MAX_SIZE = 16, 128  # image side (data.image_size); below 16 px a ring is thinner than a pixel
MAX_PIXELS = 2**29  # pixels of one split held in memory (images + masks: 4 bytes a pixel, 2 GiB)
_SEED = 4321  # fixed: the same images in every run
_CHUNK = 256  # images generated at a time (bounded temporaries: ~20 arrays of 256 x S x S)
NOISE = 12  # texture noise: uniform in -NOISE..NOISE grey levels
# Measured on the 2,000 default pool images (pixels / 255), fixed so they never depend on n or the size.
MEAN, STD = (0.3204, 0.3214, 0.3222), (0.2466, 0.2456, 0.2461)


def _texture(rng: np.random.Generator, n: int, side: int) -> np.ndarray:
    """uint8 ``[n, 3, S, S]``: two dark colours blended along a sinusoid, plus uniform pixel noise."""
    c1, c2 = (rng.uniform(0, 110, size=(n, 3, 1, 1)).astype(np.float32) for _ in range(2))
    theta = rng.uniform(0, np.pi, size=(n, 1, 1)).astype(np.float32)
    cycles = rng.uniform(0.5, 3.0, size=(n, 1, 1)).astype(np.float32)  # low frequency: 0.5..3 periods
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1)).astype(np.float32)
    g = np.arange(side, dtype=np.float32) / side
    along = np.cos(theta) * g.reshape(1, 1, side) + np.sin(theta) * g.reshape(1, side, 1)
    t = (0.5 + 0.5 * np.sin(2 * np.pi * cycles * along + phase))[:, None]
    noise = rng.integers(-NOISE, NOISE + 1, size=(n, 3, side, side), dtype=np.int8)  # uniform: 5x cheaper
    return np.clip(c1 + (c2 - c1) * t + noise, 0, 255).astype(np.uint8)  # than normals, as good a texture


def _inside(cls: np.ndarray, dy: np.ndarray, dx: np.ndarray, r: np.ndarray) -> np.ndarray:
    """bool ``[n, S, S]``: pixels inside shape ``cls`` (1..4) of radius ``r`` at offsets ``dy``, ``dx``."""
    d2 = dy**2 + dx**2
    disc = d2 <= r**2
    square = (np.abs(dy) <= 0.85 * r) & (np.abs(dx) <= 0.85 * r)  # half-side 0.85 r: area ~ the disc's
    # upward equilateral triangle inscribed in the circle: apex at dy = -r, base at dy = r/2
    triangle = (dy <= 0.5 * r) & (np.abs(dx) <= (dy + r) / np.sqrt(3.0))
    ring = disc & (d2 >= (0.5 * r) ** 2)
    return np.select([cls == 1, cls == 2, cls == 3, cls == 4], [disc, square, triangle, ring], False)


def shapes_chunk(rng: np.random.Generator, n: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """x uint8 ``[n, 3, S, S]`` and mask uint8 ``[n, S, S]`` (0..4) of ``n`` images drawn from ``rng``."""
    img = _texture(rng, n, side)
    mask = np.zeros((n, side, side), dtype=np.uint8)
    count = rng.integers(1, MAX_SHAPES + 1, size=n)
    cls = rng.choice(np.arange(1, 5, dtype=np.uint8), size=(n, MAX_SHAPES), p=SHAPE_PROBS)
    radius = rng.uniform(side / 8, side / 4, size=(n, MAX_SHAPES)).astype(np.float32)
    centre = rng.uniform(0, 1, size=(n, MAX_SHAPES, 2)).astype(np.float32)
    colour = rng.integers(130, 256, size=(n, MAX_SHAPES, 3), dtype=np.uint8)  # bright on the dark texture
    grid = np.arange(side, dtype=np.float32)
    for j in range(MAX_SHAPES):  # painting order = mask order: a later shape occludes an earlier one
        r = radius[:, j].reshape(n, 1, 1)
        cy, cx = (r + centre[:, j, k].reshape(n, 1, 1) * (side - 1 - 2 * r) for k in (0, 1))  # fully inside
        dy, dx = grid.reshape(1, side, 1) - cy, grid.reshape(1, 1, side) - cx
        c = np.where(j < count, cls[:, j], 0).astype(np.uint8).reshape(n, 1, 1)  # 0: the slot paints nothing
        hit = _inside(c, dy, dx, r)
        img = np.where(hit[:, None], colour[:, j].reshape(n, 3, 1, 1), img)
        mask = np.where(hit, c, mask)
    return img, mask


def shapes_split(n: int, side: int, split: int) -> Split:
    """``n`` images of split ``split`` (0 train, 1 test): x uint8 ``[n, 3, S, S]``, y uint8 ``[n, S, S]``."""
    x = np.empty((n, 3, side, side), dtype=np.uint8)
    y = np.empty((n, side, side), dtype=np.uint8)
    for k, start in enumerate(range(0, n, _CHUNK)):
        cx, cy = shapes_chunk(np.random.default_rng([_SEED, split, k]), _CHUNK, side)
        stop = min(start + _CHUNK, n)
        x[start:stop], y[start:stop] = cx[: stop - start], cy[: stop - start]
    return Split(torch.from_numpy(x), torch.from_numpy(y))


@DATASETS.register("shapes_seg")
def shapes_seg(cfg: DataConfig) -> ALData:
    """``cfg.num_train or 2000`` pool / ``cfg.num_test or 500`` test images of side ``cfg.image_size``."""
    side = cfg.image_size
    if not MIN_SIZE <= side <= MAX_SIZE:
        raise ConfigError(
            f"config field 'data.image_size' must be in [{MIN_SIZE}, {MAX_SIZE}] for shapes_seg, got {side}"
        )
    limit = MAX_PIXELS // (side * side)
    for key, n in (("data.num_train", cfg.num_train), ("data.num_test", cfg.num_test)):
        if n is not None and n > limit:
            raise ConfigError(
                f"config field '{key}' is {n}, but shapes_seg holds at most {limit:,} images of "
                f"{side}x{side} in memory; lower it or data.image_size"
            )
    return ALData(
        name="shapes_seg",
        train=shapes_split(cfg.num_train or 2000, side, 0),
        test=shapes_split(cfg.num_test or 500, side, 1),
        num_classes=len(CLASS_NAMES),
        mean=MEAN,
        std=STD,
        crop_pad=0,
        flip=True,  # every shape (the upward triangle too) is symmetric under a horizontal flip
        class_names=CLASS_NAMES,
        task="segmentation",
    )
