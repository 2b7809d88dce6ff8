"""Caltech-101 (Fei-Fei, Fergus, Perona 2004) in torchvision's on-disk layout: 101 object categories.

``<data_dir>/caltech101/101_ObjectCategories/<category>/image_NNNN.jpg`` (what torchvision's ``Caltech101``
downloads and extracts), or ``data_dir`` pointing straight at the folder holding ``101_ObjectCategories``.

Categories are the sub-folders except ``BACKGROUND_Google`` (torchvision removes it too: "not a real class"),
sorted by name, so the real data has 101 classes (31 to 800 images each: its natural imbalance is kept); the
count comes from the folders. Images are converted to RGB (some are grayscale) and resized bilinearly to
``data.image_size`` x ``data.image_size`` (aspect ratio not kept, as torchvision's ``Resize((S, S))``).

There is no official test split: ``data.test_fraction`` of each class is held out, the images chosen by a
permutation seeded with ``_SEED`` and the class name only, never the run seed, so every run and every strategy
sees the same pool and test set. A class of n >= 2 images puts ``test_fraction * n`` (rounded) of them, clipped
to 1..n-1, in the test split (one image of each class in each split at least); a class of one image stays in
the pool. Training augmentation: random crop with padding ``image_size // 8`` (4 at 32 px, as CIFAR's) and
horizontal flip (natural photos). Normalization: ImageNet's mean/std.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tavaal.config import DataConfig
from tavaal.core.memory import check_fits
from tavaal.data.base import ALData, Split
from tavaal.errors import ConfigError, DataError
from tavaal.registry import DATASETS

CACHE_DIR = Path("~/.cache/tavaal/data").expanduser()
FOLDER = "101_ObjectCategories"
BACKGROUND = "BACKGROUND_Google"  # clutter images, not a class (torchvision drops it)
EXTENSIONS = {".jpg", ".jpeg", ".png"}  # the real data is all .jpg
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_SEED = 101  # fixed: the held-out test images are the same in every run
HINT = (
    f"extract 101_ObjectCategories.tar.gz (https://data.caltech.edu/records/20086) so that "
    f"'<data_dir>/caltech101/{FOLDER}/<category>/' holds the images"
)


def _find(cfg: DataConfig) -> Path:
    """The ``101_ObjectCategories`` folder under ``<root>/caltech101`` or ``<root>``; downloads if allowed."""
    root = Path(cfg.data_dir).expanduser() if cfg.data_dir is not None else CACHE_DIR
    for d in (root / "caltech101" / FOLDER, root / FOLDER):
        if d.is_dir():
            return d
    where = root / "caltech101" / FOLDER
    if cfg.data_dir is not None and not root.is_dir():
        raise DataError(
            f"data directory '{root}' does not exist; point data.data_dir at the folder holding "
            f"caltech101/{FOLDER}/ or omit it"
        )
    if not cfg.download:
        raise DataError(
            f"Caltech-101 files not found in '{where}' and data.download is false; {HINT}, pass "
            f"--data-dir, or set data.download=true"
        )
    try:
        from torchvision.datasets import Caltech101

        Caltech101(root=str(root), download=True)
    except Exception as e:  # network, gdown missing, disk, checksum: all end the same way for the user
        msg = (str(e).strip().splitlines() or [""])[0]
        raise DataError(f"could not download Caltech-101 into '{root}' ({type(e).__name__}: {msg}); {HINT}") from None
    if not where.is_dir():
        raise DataError(f"the Caltech-101 download left no '{where}'; delete '{root / 'caltech101'}' and retry")
    return where


def _list(folder: Path) -> tuple[tuple[str, ...], list[list[Path]]]:
    """Category names (sorted) and each category's image paths (sorted by file name)."""
    names = tuple(sorted(d.name for d in folder.iterdir() if d.is_dir() and d.name != BACKGROUND))
    if not names:
        raise DataError(f"Caltech-101 folder '{folder}' holds no category folders; {HINT}")
    files = [sorted(p for p in (folder / n).iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS) for n in names]
    for name, paths in zip(names, files):
        if not paths:
            raise DataError(
                f"Caltech-101 category folder '{folder / name}' holds no images "
                f"({', '.join(sorted(EXTENSIONS))}); remove it or restore its images"
            )
    return names, files


def _decode(path: Path, size: int) -> np.ndarray:
    """uint8 ``[3, size, size]``: RGB, bilinear resize; an unreadable file is a one-line DataError."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    except Exception as e:  # UnidentifiedImageError, OSError (truncated), ...: a bad file
        raise DataError(
            f"cannot read Caltech-101 image '{path}' ({type(e).__name__}); replace it with a good copy or delete it"
        ) from None


def held_out(name: str, n: int, fraction: float) -> np.ndarray:
    """Sorted positions (of a class's n sorted images) held out as test images: seeded by ``_SEED`` and the
    class name only, ``fraction * n`` rounded half up and clipped to 1..n-1 (none when n == 1)."""
    if n < 2:
        return np.zeros(0, dtype=np.int64)
    k = min(max(int(fraction * n + 0.5), 1), n - 1)  # rounded half up
    rng = np.random.default_rng([_SEED, zlib.crc32(name.encode())])
    return np.sort(rng.permutation(n)[:k])


def _read(rows: list[tuple[Path, int]], size: int) -> Split:
    """x uint8 ``[N, 3, size, size]``, y int64 ``[N]`` of ``(path, class)`` rows, allocated once."""
    x = np.empty((len(rows), 3, size, size), dtype=np.uint8)
    for i, (path, _) in enumerate(rows):
        x[i] = _decode(path, size)
    return Split(torch.from_numpy(x), torch.tensor([c for _, c in rows], dtype=torch.int64))


@DATASETS.register("caltech101")
def caltech101(cfg: DataConfig) -> ALData:
    """Caltech-101: x uint8 ``[N, 3, S, S]``, y int64 ``[N]`` (S = data.image_size), a fixed stratified split."""
    if cfg.channels != 3:
        raise ConfigError(f"config field 'data.channels' must be 3 for caltech101 (RGB), got {cfg.channels}")
    if cfg.test_fraction <= 0:
        raise ConfigError(
            "config field 'data.test_fraction' must be > 0 for caltech101 (it has no official test "
            f"split; the default 0.2 holds out a fifth of each class), got {cfg.test_fraction}"
        )
    names, files = _list(_find(cfg))
    rows: dict[bool, list[tuple[Path, int]]] = {False: [], True: []}  # is_test -> (path, class), sorted order
    for c, (name, paths) in enumerate(zip(names, files)):
        held = set(held_out(name, len(paths), cfg.test_fraction).tolist())
        for i, path in enumerate(paths):
            rows[i in held].append((path, c))
    need = 3 * cfg.image_size**2 * (len(rows[False]) + len(rows[True]))  # both splits held decoded, uint8
    check_fits(
        need,
        torch.device("cpu"),
        f"caltech101's {len(rows[False]) + len(rows[True])} images decoded at {cfg.image_size}x{cfg.image_size}",
        "lower data.image_size",
    )
    train, test = (_read(rows[t], cfg.image_size) for t in (False, True))
    return ALData(
        name="caltech101",
        train=train,
        test=test,
        num_classes=len(names),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        crop_pad=cfg.image_size // 8,  # 4 at 32 px: the CIFAR protocol's padding, scaled with the image side
        flip=True,
        class_names=names,
    )
