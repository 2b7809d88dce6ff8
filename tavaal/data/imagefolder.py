"""Your own images as a folder tree: ``ROOT/<class>/*.png`` are labeled, ``ROOT/unlabeled/**`` is the pool.

Every class subfolder declares a class (an empty one too: a class no image has yet); files straight under ROOT
are ignored. A row's id is its path relative to ROOT (``cat/001.png``), stable as long as the file stays. The
test set is ``data.test_path`` (a tree of class folders) or a held-out share of the labeled images, as for
Parquet pools (``parquet.own_data``).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pyarrow as pa

from tavaal.config import DataConfig
from tavaal.data.base import ALData
from tavaal.data.encoded import EncodedImages
from tavaal.data.parquet import OwnRows, own_data
from tavaal.errors import ConfigError, DataError
from tavaal.registry import DATASETS

UNLABELED = "unlabeled"
EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _constant(values: pa.Array) -> pa.Array:
    return values


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)


def read_folder_rows(root: str, cfg: DataConfig) -> tuple[OwnRows, list[str]]:
    """Rows of every image under ``root`` (class folders in name order, then ``unlabeled/``) and the class
    folders found."""
    top = Path(root)
    if not top.is_dir():
        raise DataError(
            f"image folder '{root}' not found; set data.path to a folder of class subfolders "
            f"(and an '{UNLABELED}/' subfolder for the pool)"
        )
    folders = sorted(d.name for d in top.iterdir() if d.is_dir() and d.name != UNLABELED)
    ids, labels, paths = [], [], []
    for name in folders + ([UNLABELED] if (top / UNLABELED).is_dir() else []):
        for p in _images(top / name):
            ids.append(p.relative_to(top).as_posix())
            labels.append(None if name == UNLABELED else name)
            paths.append(str(p.resolve()))
    if not ids:
        raise DataError(f"image folder '{root}' holds no images ({', '.join(sorted(EXTENSIONS))}) in its subfolders")
    load = functools.partial(_constant, pa.array(paths, type=pa.string()))
    images = EncodedImages(load, len(ids), "path", cfg.image_size, cfg.channels, None, f"'{root}'")
    return OwnRows(np.asarray(ids, dtype=object), labels, images, f"'{root}'"), folders


@DATASETS.register("imagefolder")
def imagefolder(cfg: DataConfig) -> ALData:
    """Class subfolders of ``data.path`` = labeled images, its ``unlabeled/`` subfolder = the pool to label."""
    if not cfg.path:
        raise ConfigError("config field 'data.path' must name the image folder for data.name=imagefolder")
    pool, folders = read_folder_rows(cfg.path, cfg)
    test, test_folders = read_folder_rows(cfg.test_path, cfg) if cfg.test_path else (None, [])
    if not cfg.classes:  # every class folder declares a class, an empty one too
        cfg = dataclasses.replace(cfg, classes=tuple(sorted(set(folders) | set(test_folders))))
    return own_data("imagefolder", cfg, pool, test)
