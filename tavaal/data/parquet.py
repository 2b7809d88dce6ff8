"""Your own images as a Parquet pool: one row per image, an id, the image (bytes or a path), maybe a label.

``data.path`` is a ``.parquet`` file, a directory of them, or a URI pyarrow reads (s3://...). Columns
(names in ``data.id_column``/``image_column``/``label_column``): a stable unique id; the image as encoded
PNG/JPEG bytes or as a path (relative paths resolve against the Parquet's folder); an optional label (a class
name or an integer; null = not labeled yet). Only the id and label columns are read to build the data set;
the image column is read and decoded lazily (``encoded.EncodedImages``).

``own_data`` turns rows into an ``ALData`` for both own-data formats (``imagefolder.py`` uses it too): the
class list, labels as class indices (-1 = unknown), and the test split (``data.test_path``, or a held-out
``data.test_fraction`` of the labeled rows chosen by a hash of the id, so a row's side never changes).
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from tavaal.config import DataConfig
from tavaal.data.base import ALData, Split
from tavaal.data.encoded import EncodedImages
from tavaal.errors import ConfigError, DataError
from tavaal.registry import DATASETS

MEAN, STD = 0.5, 0.25  # fixed per-channel normalization of [0, 1] pixels: statistics of unseen data are unknown


@dataclass(frozen=True)
class OwnRows:
    """Rows of one own-data source: ids ``[N]``, labels (str or None) ``[N]``, lazily decoded images."""

    ids: np.ndarray
    labels: list[str | None]
    images: EncodedImages
    where: str  # the file or folder, for messages


def open_parquet(path: str):
    import pyarrow.dataset as pads

    try:
        return pads.dataset(path, format="parquet")
    except (OSError, ValueError, pa.ArrowException) as e:
        raise DataError(
            f"cannot read Parquet data at '{path}' ({str(e).splitlines()[0]}); set data.path to a "
            ".parquet file, a directory of them or an s3:// URI"
        ) from None


def load_column(path: str, column: str) -> pa.ChunkedArray:
    """One column of the Parquet data at ``path`` (what ``EncodedImages.load`` calls, in any process)."""
    return open_parquet(path).to_table(columns=[column]).column(column)


def base_dir(path: str) -> str:
    """The folder relative image paths resolve against: the Parquet file's folder, or the directory itself."""
    return path.rsplit("/", 1)[0] if path.rstrip("/").endswith(".parquet") else path


def label_strings(col: pa.ChunkedArray) -> list[str | None]:
    """Labels as class-name strings (integers, also float-typed ones from pandas, as their decimal form)."""
    values = col.to_pylist()
    return [
        None if v is None or v != v else str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
        for v in values
    ]


def read_parquet_rows(path: str, cfg: DataConfig) -> OwnRows:
    path = path if "://" in path else str(Path(path).resolve())  # workers may run elsewhere than the driver's cwd
    ds = open_parquet(path)
    names = ds.schema.names
    for key, col in (("data.id_column", cfg.id_column), ("data.image_column", cfg.image_column)):
        if col not in names:
            raise DataError(
                f"Parquet data at '{path}' has no column '{col}' ({key}); its columns are {', '.join(names)}"
            )
    image_type = ds.schema.field(cfg.image_column).type
    if pa.types.is_binary(image_type) or pa.types.is_large_binary(image_type):
        kind = "bytes"
    elif pa.types.is_string(image_type) or pa.types.is_large_string(image_type):
        kind = "path"
    else:
        raise DataError(
            f"column '{cfg.image_column}' of '{path}' is {image_type}; expected encoded image bytes "
            "(binary) or image paths (string)"
        )
    has_label = cfg.label_column in names
    table = ds.to_table(columns=[cfg.id_column] + ([cfg.label_column] if has_label else []))
    ids = np.asarray(table.column(cfg.id_column).to_pylist(), dtype=object)
    labels: list[str | None] = label_strings(table.column(cfg.label_column)) if has_label else [None] * len(ids)
    images = EncodedImages(
        functools.partial(load_column, path, cfg.image_column),
        len(ids),
        kind,
        cfg.image_size,
        cfg.channels,
        base_dir(path),
        f"'{path}'",
    )
    return OwnRows(_checked_ids(ids, path), labels, images, f"'{path}'")


def _checked_ids(ids: np.ndarray, where: str) -> np.ndarray:
    """Ids as int64 when they are all integers, else strings; null or duplicate ids are a DataError."""
    keys = [None if v is None else str(v) for v in ids]
    seen: dict[str, int] = {}
    for row, k in enumerate(keys):
        if k is None or k == "":
            raise DataError(f"row {row} of {where} has no id; every row needs a unique id")
        if k in seen:
            raise DataError(f"rows {seen[k]} and {row} of {where} have the same id '{k}'; ids must be unique")
        seen[k] = row
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in ids):
        return np.asarray(ids, dtype=np.int64)
    return np.asarray(keys, dtype=object)


def class_list(cfg: DataConfig, *label_lists: list[str | None]) -> tuple[str, ...]:
    """``data.classes``, else the distinct labels found (integers in numeric order, then names sorted)."""
    if cfg.classes:
        return tuple(cfg.classes)
    found = {v for labels in label_lists for v in labels if v is not None}
    return tuple(sorted(found, key=lambda c: (0, int(c), "") if c.lstrip("-").isdigit() else (1, 0, c)))


def class_indices(rows: OwnRows, classes: tuple[str, ...]) -> np.ndarray:
    """int64 ``[N]``: the class index of each label, -1 where there is none."""
    index = {c: i for i, c in enumerate(classes)}
    y = np.full(len(rows.labels), -1, dtype=np.int64)
    for row, label in enumerate(rows.labels):
        if label is None:
            continue
        if label not in index:
            raise DataError(
                f"row {row} of {rows.where} has label '{label}', which is not in data.classes "
                f"({', '.join(classes)}); add it there or fix the row"
            )
        y[row] = index[label]
    return y


def held_out(ids: np.ndarray, fraction: float) -> np.ndarray:
    """bool ``[N]``: rows whose id hashes into the test fraction (stable: depends on the id alone)."""
    h = np.fromiter((zlib.crc32(str(i).encode()) for i in ids), dtype=np.int64, count=len(ids))
    return (h % 10_000) < round(fraction * 10_000)


def _split(rows: OwnRows, y: np.ndarray, keep: np.ndarray) -> Split:
    pos = torch.from_numpy(np.flatnonzero(keep))
    return Split(rows.images.subset(pos), torch.from_numpy(y[keep]), rows.ids[keep])


def own_data(name: str, cfg: DataConfig, pool: OwnRows, test: OwnRows | None) -> ALData:
    """The ``ALData`` of a user's pool (and test set); labels -1 where unknown."""
    classes = class_list(cfg, pool.labels, test.labels if test is not None else [])
    if not classes and not cfg.new_classes:
        raise ConfigError(
            f"no class is known: no row of {pool.where} has a label; name the classes with "
            "data.classes (e.g. --set 'data.classes=[cat, dog]') or set data.new_classes=true"
        )
    y = class_indices(pool, classes)
    if test is not None:
        y_test = class_indices(test, classes)
        if (y_test < 0).any():
            row = int(np.flatnonzero(y_test < 0)[0])
            raise DataError(f"row {row} of the test set {test.where} has no label; every test row needs one")
        train, test_split = _split(pool, y, np.ones(len(y), bool)), _split(test, y_test, np.ones(len(y_test), bool))
    else:
        out = (y >= 0) & held_out(pool.ids, cfg.test_fraction)
        train, test_split = _split(pool, y, ~out), _split(pool, y, out)
    c = cfg.channels
    return ALData(
        name=name,
        train=train,
        test=test_split,
        num_classes=len(classes),
        mean=(MEAN,) * c,
        std=(STD,) * c,
        crop_pad=max(1, cfg.image_size // 8),
        flip=False,
        class_names=classes,
    )


@DATASETS.register("parquet")
def parquet(cfg: DataConfig) -> ALData:
    """A Parquet pool at ``data.path`` (docs/own-data.md); test set at ``data.test_path`` or held out."""
    if not cfg.path:
        raise ConfigError("config field 'data.path' must name the Parquet pool for data.name=parquet")
    test = read_parquet_rows(cfg.test_path, cfg) if cfg.test_path else None
    return own_data("parquet", cfg, read_parquet_rows(cfg.path, cfg), test)
