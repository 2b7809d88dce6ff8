"""Images that stay encoded until a batch needs them: PNG/JPEG bytes or image file paths, decoded with PIL.

``EncodedImages`` stands in for a uint8 tensor ``[N, C, S, S]`` (as ``synthetic.LazyImages`` does): ``x[idx]``
decodes the requested rows only, ``x.subset(idx)`` is a lazy view. Its column of encoded values is read by a
picklable ``load`` function the first time a process needs it and is never pickled, so putting the data set in
Ray's object store ships a file path, and each worker reads the column itself.
"""

from __future__ import annotations

import io
import os
import posixpath
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import torch
from PIL import Image, UnidentifiedImageError

from tavaal.errors import DataError

PNG_MAGIC, JPEG_MAGIC = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"


def read_bytes(path: str) -> bytes:
    """The bytes of a local file or of a URI pyarrow can open (s3://, gs://, hdfs://)."""
    if "://" in path:
        from pyarrow import fs

        filesystem, inner = fs.FileSystem.from_uri(path)
        with filesystem.open_input_stream(inner) as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def inside(value: str, base_dir: str) -> str | None:
    """``value`` (a relative or absolute path, or a URI) resolved against ``base_dir``; None when it leads
    outside ``base_dir``.

    Resolution is by the path's text alone (``..`` taken out, no file opened), so it is the same in every
    process; a symbolic link inside ``base_dir`` is followed when the image is read, as the folder's owner made it.
    """
    if "://" in base_dir:
        scheme, _, rest = base_dir.partition("://")
        base = posixpath.normpath("/" + rest)
        if "://" in value:
            value_scheme, _, value_rest = value.partition("://")
            if value_scheme != scheme:
                return None
            target = posixpath.normpath("/" + value_rest)
        elif value.startswith("/"):
            return None
        else:
            target = posixpath.normpath(posixpath.join(base, value))
        within = target.startswith(base.rstrip("/") + "/")
        return f"{scheme}:/{target}" if within else None
    if "://" in value:
        return None
    base = os.path.normpath(os.path.abspath(base_dir))
    target = os.path.normpath(os.path.join(base, value))
    return target if target != base and os.path.commonpath([base, target]) == base else None


def resolve_path(value: str, base_dir: str | None) -> str:
    """A path from an image column, resolved against ``base_dir``; one that leads outside ``base_dir`` (``..``,
    an absolute path elsewhere, another URI) is a DataError: a data file must not point people or workers at
    files it does not hold. ``base_dir`` None: the path as it is (an image folder's own files)."""
    if base_dir is None:
        return value
    target = inside(value, base_dir)
    if target is None:
        raise DataError(
            f"image path {value[:200]!r} leads outside '{base_dir}'; images must lie under the folder of the "
            "Parquet data: move them there and give paths relative to it"
        )
    return target


def decode_image(encoded: bytes, size: int, channels: int) -> np.ndarray:
    """uint8 ``[C, size, size]``: PIL decode, convert to L (C=1) or RGB (C=3), bilinear resize if needed."""
    with Image.open(io.BytesIO(encoded)) as opened:
        im = opened.convert("L" if channels == 1 else "RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BILINEAR)
        a = np.asarray(im, dtype=np.uint8)
    return a[None] if channels == 1 else a.transpose(2, 0, 1)


def image_suffix(encoded: bytes) -> str:
    return ".png" if encoded.startswith(PNG_MAGIC) else ".jpg" if encoded.startswith(JPEG_MAGIC) else ".img"


class EncodedImages:
    """A lazily decoded image column: ``kind`` "bytes" (encoded images) or "path" (files, resolved against
    ``base_dir``); ``rows`` maps positions of this view to rows of the column (None: identity)."""

    def __init__(
        self,
        load: Callable[[], pa.Array],
        length: int,
        kind: str,
        size: int,
        channels: int,
        base_dir: str | None = None,
        where: str = "",
        rows: np.ndarray | None = None,
    ) -> None:
        self.load, self.length, self.kind = load, length, kind
        self.size, self.channels, self.base_dir, self.where = size, channels, base_dir, where
        self.rows = rows
        self._column: pa.Array | None = None

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_column": None}  # a worker reads the column itself, from the same place

    def __len__(self) -> int:
        return self.length if self.rows is None else int(self.rows.shape[0])

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), self.channels, self.size, self.size))

    def dim(self) -> int:
        return 4

    def column(self) -> pa.Array:
        if self._column is None:
            self._column = self.load()
        return self._column

    def source_rows(self, idx) -> np.ndarray:
        """Rows of the underlying column for positions ``idx`` (an integer array or a slice)."""
        pos = np.arange(len(self))[idx] if isinstance(idx, slice) else np.asarray(idx, dtype=np.int64)
        if pos.size and (pos.min() < 0 or pos.max() >= len(self)):
            raise IndexError(
                f"index {int(pos.max() if pos.max() >= len(self) else pos.min())} is out of bounds "
                f"for EncodedImages of size {len(self)}"
            )
        return pos if self.rows is None else self.rows[pos]

    def paths(self, idx) -> list[str] | None:
        """The image paths of positions ``idx`` (None when the column holds the encoded bytes)."""
        if self.kind != "path":
            return None
        return [resolve_path(v, self.base_dir) for v in self._values(self.source_rows(idx).reshape(-1))]

    def encoded(self, idx) -> list[bytes]:
        """The encoded bytes of positions ``idx`` (files are read for a path column)."""
        values = self._values(self.source_rows(idx).reshape(-1))
        return values if self.kind == "bytes" else [read_bytes(resolve_path(v, self.base_dir)) for v in values]

    def _values(self, rows: np.ndarray) -> list:
        return self.column().take(pa.array(rows, type=pa.int64())).to_pylist()

    def __getitem__(self, idx) -> torch.Tensor:
        """uint8 ``[B, C, S, S]`` for positions ``idx`` (``[C, S, S]`` for one integer)."""
        rows = self.source_rows(idx)
        flat = rows.reshape(-1)
        x = np.empty((flat.size, self.channels, self.size, self.size), dtype=np.uint8)
        for i, (row, value) in enumerate(zip(flat, self._values(flat))):
            try:
                b = value if self.kind == "bytes" else read_bytes(resolve_path(value, self.base_dir))
                x[i] = decode_image(b, self.size, self.channels)
            except (UnidentifiedImageError, OSError, ValueError, TypeError) as e:
                raise DataError(
                    f"row {int(row)} of {self.where} is not a readable image "
                    f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); fix or drop "
                    "that row"
                ) from None
        return torch.from_numpy(x[0] if rows.ndim == 0 else x)

    def subset(self, idx) -> EncodedImages:
        view = EncodedImages(
            self.load,
            self.length,
            self.kind,
            self.size,
            self.channels,
            self.base_dir,
            self.where,
            self.source_rows(idx).reshape(-1),
        )
        view._column = self._column
        return view
