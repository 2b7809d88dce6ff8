"""Feature vectors in a Parquet column: embeddings a user computed with any model, one fixed-length vector a row.

Three cell formats hold the same float32 ``[N, D]`` array: ``fixed_size_list<float>`` (what pyarrow writes
for a 2-D numpy array), ``list<float>`` with one length in every row (what pandas writes for a column of
arrays), and ``binary`` cells each holding D little-endian float32 values (``array.astype('<f4').tobytes()``;
binary is also what encoded images are, so this one needs ``data.features: vector``). Integer and
float16/float64 values are converted to float32.

The column is checked batch by batch when the data set is built (``vector_pool.load_vectors``), in memory
bounded by one batch: a null row or element, a NaN or infinity, lists of differing lengths, or a binary cell
whose length is not a multiple of 4 or differs from the first row's is a DataError naming the row (and its id).
A pool whose vectors fit in ``IN_MEMORY_BYTES`` is then held as one float32 tensor; a larger one stays out of
the driver's memory (``vector_pool.ParquetVectors``): the checked values go to a float32 file in the temporary
folder, and a batch reads its rows from it; a process on another machine writes its own copy from the Parquet
files.

Vectors are used as they are (``ALData.batch`` neither normalizes nor augments vectors): the task model and
the VAE see the numbers the file holds, so scale them (e.g. standardize each dimension) before writing them if
they are far from order 1.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tavaal.errors import DataError

FEATURES = ("image", "vector")  # data.features
# Vectors up to this size are held as one tensor: small pools gain nothing from a file, and a tensor is the
# fastest to index. Larger ones stay in a file on disk, so the driver holds only the rows a batch asks for.
IN_MEMORY_BYTES = 256 * 2**20
BATCH_BYTES = 16 * 2**20  # about one batch of the checking pass: its memory bound


def _row(row: int, ids: np.ndarray | None) -> str:
    return f"row {row}" if ids is None else f"row {row} (id {repr(ids[row : row + 1].tolist()[0])[:80]})"


def is_list(t: pa.DataType) -> bool:
    return pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t)


def is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def is_vector_column(t: pa.DataType, features: str) -> bool:
    """Whether a column of type ``t`` holds vectors: a list column always, a binary one when told so."""
    return is_list(t) or (features == "vector" and is_binary(t))


def batch_rows(t: pa.DataType) -> int:
    """Rows per batch of the checking pass for a column of type ``t`` (about ``BATCH_BYTES`` of values)."""
    d = t.list_size if pa.types.is_fixed_size_list(t) else 512  # other types: a guess, the length is per row
    return max(1, BATCH_BYTES // (8 * max(1, d)))


class VectorChecker:
    """Converts a column's batches, in order, to float32 ``[n, D]`` and checks them: the first row sets D.
    ``where`` names the column and file for messages; ``ids`` the rows' ids (None: rows by position)."""

    def __init__(self, where: str, ids: np.ndarray | None = None) -> None:
        self.where, self.ids = where, ids
        self.start = 0  # the column's row of the next batch's first row
        self.first: int | None = None  # the first row's length (list values or bytes)

    def __call__(self, arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
        arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
        hint = "fix or drop that row"
        if arr.null_count:
            row = self.start + int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(f"{self.where} has no vector at {_row(row, self.ids)}; every row needs one: {hint}")
        if is_binary(arr.type):
            out = self._binary(arr)
        elif is_list(arr.type):
            out = self._list(arr)
        else:
            raise DataError(
                f"{self.where} is {arr.type}; a vector column is fixed_size_list<float32>, list<float32> or binary "
                "(D little-endian float32 values a row)"
            )
        bad = ~np.isfinite(out).all(axis=1)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            value = out[k][~np.isfinite(out[k])][0]
            at = _row(self.start + k, self.ids)
            raise DataError(f"{self.where} has the value {value} in the vector at {at}; {hint}")
        self.start += len(arr)
        return out

    def _same_length(self, lengths: np.ndarray, unit: int, what: Callable[[int], str]) -> int:
        """The batch's common length (list values or bytes), checked against the column's first row."""
        if self.first is None and lengths.size:
            self.first = int(lengths[0])
        first = self.first or 0
        differ = np.flatnonzero(lengths != first) if lengths.size else np.empty(0, np.int64)
        if differ.size:
            k = int(differ[0])
            raise DataError(
                f"{self.where} has a vector of {what(int(lengths[k]) // unit)} at {_row(self.start + k, self.ids)}, "
                f"but {first // unit} at {_row(0, self.ids)}; every vector has the same length: fix or drop that row"
            )
        d = first // unit
        if lengths.size and d < 1:
            raise DataError(f"{self.where} holds empty vectors ({_row(0, self.ids)}); a vector has at least one value")
        return d

    def _list(self, arr: pa.Array) -> np.ndarray:
        value_type = arr.type.value_type
        if not (pa.types.is_floating(value_type) or pa.types.is_integer(value_type)):
            raise DataError(
                f"{self.where} holds lists of {value_type}; a vector is a list of float32 (or float64) values"
            )
        n = len(arr)
        if pa.types.is_fixed_size_list(arr.type):
            lengths = np.full(n, arr.type.list_size, dtype=np.int64)
        else:
            lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        d = self._same_length(lengths, 1, lambda k: f"length {k}")
        if n == 0:
            return np.empty((0, d), np.float32)
        values = pc.list_flatten(arr)
        if values.null_count:
            at = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(
                f"{self.where} has a null value in the vector at {_row(self.start + at // d, self.ids)}; fix or drop "
                "that row"
            )
        return values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(n, d)  # a copy: writable

    def _binary(self, arr: pa.Array) -> np.ndarray:
        lengths = pc.binary_length(arr).to_numpy(zero_copy_only=False).astype(np.int64)
        odd = np.flatnonzero(lengths % 4 != 0)
        if odd.size:
            row = self.start + int(odd[0])
            raise DataError(
                f"{self.where} has a cell of {lengths[odd[0]]} bytes at {_row(row, self.ids)}, not a whole number of "
                "float32 values; a binary vector is D little-endian float32 values (numpy: v.astype('<f4').tobytes())"
            )
        d = self._same_length(lengths, 4, lambda k: f"{k} values")
        n = len(arr)
        if n == 0:
            return np.empty((0, d), np.float32)
        # the cells are one run of bytes in the data buffer, between the first and the last offset
        offsets = np.frombuffer(arr.buffers()[1], np.int64 if pa.types.is_large_binary(arr.type) else np.int32)
        lo, hi = int(offsets[arr.offset]), int(offsets[arr.offset + n])
        data = np.frombuffer(arr.buffers()[2], np.uint8)[lo:hi]
        return data.view("<f4").astype(np.float32).reshape(n, d)


def vectors_from_values(values: list) -> np.ndarray:
    """float32 ``[B, D]`` from cells as Ray Data hands them to a worker (bytes, or arrays/lists of numbers),
    converted exactly as ``VectorChecker`` converts them (the column was checked when the data set was built)."""
    rows = [np.frombuffer(v, dtype="<f4") if isinstance(v, bytes) else np.asarray(v) for v in values]
    return np.stack(rows).astype(np.float32, copy=False)
