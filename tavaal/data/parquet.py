"""Your own images as a Parquet pool: one row per image, an id, the image (bytes or a path), maybe a label.

``data.path`` is a ``.parquet`` file, a directory of them, or a URI pyarrow reads (s3://...). Columns
(names in ``data.id_column``/``image_column``/``label_column``): a stable unique id (an integer or a string
column, no nulls); the image as encoded PNG/JPEG bytes or as a path inside the Parquet's folder (relative
paths resolve against it); an optional label (a class name, an integer or a boolean; null = not labeled yet).
The id and label columns, and an image column of paths, are read and checked to build the data set; images
are decoded lazily (``encoded.EncodedImages``). The file comes from outside the project, so a column of the
wrong kind is refused with one line rather than turned into strings: a list label would become a class of
its own, a NaN id the id 'nan', and a path such as ``../../etc/passwd`` a file offered to annotators.

The same column may instead hold feature vectors (embeddings; ``vectors.py``, ``vector_pool.py``): a list column,
or binary cells with ``data.features: vector``. It is then read and checked batch by batch, and held as a float32
tensor ``[N, D]`` or, for a large pool, as a copy on disk read row by row (``vector_pool.ParquetVectors``);
vectors are used as they are (no normalization, no augmentation); the task model must take vectors (``mlp``).

``own_data`` turns rows into an ``ALData`` for both own-data formats (``imagefolder.py`` uses it too): the
class list, labels as class indices (-1 = unknown), and the test split (``data.test_path``, or a held-out
``data.test_fraction`` of the labeled rows chosen by a hash of the id, so a row's side never changes).
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from tavaal.config import DataConfig
from tavaal.data.base import ALData, Split
from tavaal.data.encoded import EncodedImages, inside
from tavaal.data.vector_pool import ParquetVectors, is_vectors, load_vectors
from tavaal.data.vectors import batch_rows, is_vector_column
from tavaal.errors import ConfigError, DataError
from tavaal.redact import redact
from tavaal.registry import DATASETS

READ_BUFFER = 2**20  # bytes read from a Parquet file at a time when a column is streamed (column_batches)
MEAN, STD = 0.5, 0.25  # fixed per-channel normalization of [0, 1] pixels: statistics of unseen data are unknown


@dataclass(frozen=True)
class OwnRows:
    """Rows of one own-data source: ids ``[N]``, labels (str or None) ``[N]``, lazily decoded images or float32
    vectors ``[N, D]``."""

    ids: np.ndarray
    labels: list[str | None]
    images: EncodedImages | ParquetVectors | torch.Tensor
    where: str  # the file or folder, for messages


def open_parquet(path: str):
    import pyarrow.dataset as pads

    try:
        return pads.dataset(path, format="parquet")
    except (OSError, ValueError, pa.ArrowException) as e:
        raise DataError(
            f"cannot read Parquet data at '{redact(path)}' ({str(e).splitlines()[0]}); set data.path to a "
            ".parquet file, a directory of them or an s3:// URI"
        ) from None


def load_column(path: str, column: str) -> pa.ChunkedArray:
    """One column of the Parquet data at ``path`` (what ``EncodedImages.load`` calls, in any process)."""
    return open_parquet(path).to_table(columns=[column]).column(column)


def column_batches(path: str, column: str, rows: int) -> Iterator[pa.Array]:
    """One column of the Parquet data at ``path``, ``rows`` at a time in the order ``to_table`` reads the rows
    (what ``ParquetVectors`` reads its vectors from, in any process). File by file, page by page: a dataset scan
    would hold whole row groups (often the whole file, as pyarrow and pandas write them) however small its batches."""
    import pyarrow.parquet as pq

    ds = open_parquet(path)
    for name in ds.files:
        with ds.filesystem.open_input_file(name) as f:
            reader = pq.ParquetFile(f, pre_buffer=False, buffer_size=READ_BUFFER)
            for batch in reader.iter_batches(batch_size=rows, columns=[column], use_threads=False):
                yield batch.column(0)


def base_dir(path: str) -> str:
    """The folder relative image paths resolve against: the Parquet file's folder, or the directory itself."""
    return path.rsplit("/", 1)[0] if path.rstrip("/").endswith(".parquet") else path


def _value_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t  # a pandas category column: its values' type


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _shown(value: object) -> str:
    return repr(value)[:80]  # one line, however long or odd the cell


def _row(row: int, ids: np.ndarray | None = None) -> str:
    return f"row {row}" if ids is None else f"row {row} (id {_shown(ids[row : row + 1].tolist()[0])})"


def label_strings(col: pa.ChunkedArray, where: str, ids: np.ndarray | None = None) -> list[str | None]:
    """Labels as class-name strings: names, integers (also float-typed ones from pandas, as their decimal form)
    and booleans; null or NaN = not labeled yet. Any other type (a list, a struct, a fraction) is a DataError
    naming the first such row: it would otherwise become a class of its own and train a meaningless model.
    ``where`` names the column and file for messages."""
    t = _value_type(col.type)
    if pa.types.is_null(t):
        return [None] * len(col)
    values = col.to_pylist()
    if not (_is_text(t) or pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_floating(t)):
        row = next((i for i, v in enumerate(values) if v is not None), 0)
        raise DataError(
            f"{where} holds {col.type} values ({_row(row, ids)}: {_shown(values[row])}); a label is one class name "
            "or integer per row (null = not labeled yet): write the column as string or int64"
        )
    out: list[str | None] = []
    for row, v in enumerate(values):
        if v is None or v != v:
            out.append(None)
        elif isinstance(v, float):
            if not v.is_integer():
                raise DataError(
                    f"{where} has the label {_shown(v)} at {_row(row, ids)}; a label is one class name or integer "
                    "(null or NaN = not labeled yet): fix that row or write the column as string or int64"
                )
            out.append(str(int(v)))
        else:
            out.append(str(v))
    return out


def read_parquet_rows(path: str, cfg: DataConfig) -> OwnRows:
    path = path if "://" in path else str(Path(path).resolve())  # workers may run elsewhere than the driver's cwd
    ds = open_parquet(path)
    names = ds.schema.names
    for key, col in (("data.id_column", cfg.id_column), ("data.image_column", cfg.image_column)):
        if col not in names:
            raise DataError(
                f"Parquet data at '{redact(path)}' has no column '{col}' ({key}); its columns are {', '.join(names)}"
            )
    image_type = ds.schema.field(cfg.image_column).type
    if is_vector_column(image_type, cfg.features):
        kind = "vector"
    elif cfg.features == "vector":
        raise DataError(
            f"column '{cfg.image_column}' of '{redact(path)}' is {image_type}, but data.features is vector; expected "
            "fixed_size_list<float32>, list<float32> or binary (D little-endian float32 values a row)"
        )
    elif pa.types.is_binary(image_type) or pa.types.is_large_binary(image_type):
        kind = "bytes"
    elif _is_text(image_type):
        kind = "path"
    else:
        raise DataError(
            f"column '{cfg.image_column}' of '{redact(path)}' is {image_type}; expected encoded image bytes "
            "(binary) or image paths (string), or vectors (a list column; binary ones with data.features=vector)"
        )
    has_label = cfg.label_column in names
    # a path column is read up front too (text, not images): every path is checked before any is used; a vector
    # column is read and checked batch by batch below
    wanted = [cfg.id_column] + [cfg.label_column] * has_label + [cfg.image_column] * (kind in ("path", "vector"))
    unreadable = f"cannot read columns {', '.join(dict.fromkeys(wanted))} of '{redact(path)}'"
    try:
        table = ds.to_table(columns=list(dict.fromkeys(c for c in wanted if kind != "vector" or c != cfg.image_column)))
    except (OSError, ValueError, pa.ArrowException) as e:
        raise DataError(f"{unreadable} ({_first_line(e)}); rewrite the file") from None
    ids = _checked_ids(table.column(cfg.id_column), f"id column '{cfg.id_column}' of '{redact(path)}'")
    labels: list[str | None] = (
        label_strings(table.column(cfg.label_column), f"label column '{cfg.label_column}' of '{redact(path)}'", ids)
        if has_label
        else [None] * len(ids)
    )
    if kind == "vector":
        where = f"vector column '{cfg.image_column}' of '{redact(path)}'"
        batches = functools.partial(column_batches, path, cfg.image_column, batch_rows(image_type))
        try:
            vectors = load_vectors(batches, len(ids), where, ids)
        except (OSError, ValueError, pa.ArrowException) as e:  # e.g. a fixed-size list column whose null rows are short
            raise DataError(f"{unreadable} ({_first_line(e)}); rewrite the file") from None
        return OwnRows(ids, labels, vectors, f"'{redact(path)}'")
    if kind == "path":
        _check_paths(
            table.column(cfg.image_column),
            base_dir(path),
            f"image column '{cfg.image_column}' of '{redact(path)}'",
            ids,
        )
    images = EncodedImages(
        functools.partial(load_column, path, cfg.image_column),
        len(ids),
        kind,
        cfg.image_size,
        cfg.channels,
        base_dir(path),
        f"column '{cfg.image_column}' of '{redact(path)}'",
    )
    return OwnRows(ids, labels, images, f"'{redact(path)}'")


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _checked_ids(col: pa.ChunkedArray, where: str) -> np.ndarray:
    """Ids as int64 (an integer column) or strings (a string column); any other type, a null or empty id and a
    duplicate id are a DataError. A float id column is refused rather than printed: NaN would become the id
    'nan' and 1.0 the id '1.0', which no one wrote."""
    t = _value_type(col.type)
    values = col.to_pylist()
    if not (pa.types.is_integer(t) or _is_text(t)):
        row = next((i for i, v in enumerate(values) if v is None or v != v), 0)
        raise DataError(
            f"{where} holds {col.type} values (row {row}: {_shown(values[row] if values else None)}); ids must be "
            "integers or strings, one per row: write the column as int64 or string"
        )
    seen: dict[object, int] = {}
    for row, v in enumerate(values):
        if v is None or v == "":
            raise DataError(f"{where} has no id at row {row}; every row needs a unique id: fill it in or drop the row")
        if v in seen:
            raise DataError(
                f"{where} has the same id {_shown(v)} at rows {seen[v]} and {row}; ids must be unique: "
                "give one of them another id or drop it"
            )
        seen[v] = row
    if pa.types.is_integer(t):
        return np.asarray(values, dtype=np.int64)
    return np.asarray(values, dtype=object)


def _check_paths(col: pa.ChunkedArray, base: str, where: str, ids: np.ndarray) -> None:
    """Every image path must name a file inside ``base`` (the Parquet's folder): a path such as
    ``../../etc/passwd`` would be read by workers and offered to annotators in the request."""
    for row, v in enumerate(col.to_pylist()):
        if v is None or v == "":
            raise DataError(f"{where} has no image at {_row(row, ids)}; give every row an image path or drop the row")
        if inside(v, base) is None:
            raise DataError(
                f"{where} points outside the pool's folder '{base}' at {_row(row, ids)}: {_shown(v)}; images must "
                "lie under the folder of the Parquet data: move them there and give paths relative to it"
            )


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
    x = rows.images[pos] if isinstance(rows.images, torch.Tensor) else rows.images.subset(pos)  # lazy stays lazy
    return Split(x, torch.from_numpy(y[keep]), rows.ids[keep])


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
    if is_vectors(pool.images):  # vectors: used as they are (vectors.py)
        if test is not None and tuple(test.images.shape[1:]) != tuple(pool.images.shape[1:]):
            raise DataError(
                f"the test set {test.where} holds inputs of shape {list(test.images.shape[1:])}, the pool "
                f"{pool.where} vectors of {list(pool.images.shape[1:])}; compute both with the same model"
            )
        return ALData(name=name, train=train, test=test_split, num_classes=len(classes), class_names=classes)
    if test is not None and is_vectors(test.images):
        raise DataError(f"the test set {test.where} holds vectors but the pool {pool.where} images; use one kind")
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
