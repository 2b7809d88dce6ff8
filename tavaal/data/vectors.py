"""Feature vectors in a Parquet column: embeddings a user computed with any model, one fixed-length vector a row.

Three cell formats hold the same float32 ``[N, D]`` array: ``fixed_size_list<float>`` (what pyarrow writes
for a 2-D numpy array), ``list<float>`` with one length in every row (what pandas writes for a column of
arrays), and ``binary`` cells each holding D little-endian float32 values (``array.astype('<f4').tobytes()``;
binary is also what encoded images are, so this one needs ``data.features: vector``). The column is read and
checked whole when the data set is built: a null row or element, a NaN or infinity, lists of differing
lengths, or a binary cell whose length is not a multiple of 4 or differs from the first row's is a DataError
naming the row (and its id). Integer and float16/float64 values are converted to float32.

Vectors are used as they are (``ALData.batch`` neither normalizes nor augments vectors): the task model and
the VAE see the numbers the file holds, so scale them (e.g. standardize each dimension) before writing them if
they are far from order 1.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tavaal.errors import DataError

FEATURES = ("image", "vector")  # data.features


def _row(row: int, ids: np.ndarray | None) -> str:
    return f"row {row}" if ids is None else f"row {row} (id {repr(ids[row : row + 1].tolist()[0])[:80]})"


def is_list(t: pa.DataType) -> bool:
    return pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t)


def is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def is_vector_column(t: pa.DataType, features: str) -> bool:
    """Whether a column of type ``t`` holds vectors: a list column always, a binary one when told so."""
    return is_list(t) or (features == "vector" and is_binary(t))


def vector_array(col: pa.ChunkedArray | pa.Array, where: str, ids: np.ndarray | None = None) -> np.ndarray:
    """float32 ``[N, D]`` of a list or binary column, checked: every row one vector of the same length D >= 1,
    no null and no NaN or infinity. ``where`` names the column and file for messages."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    hint = "fix or drop that row"
    if arr.null_count:
        row = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{where} has no vector at {_row(row, ids)}; every row needs one: {hint}")
    if is_binary(arr.type):
        out = _binary_vectors(arr, where, ids)
    elif is_list(arr.type):
        out = _list_vectors(arr, where, ids)
    else:
        raise DataError(
            f"{where} is {arr.type}; a vector column is fixed_size_list<float32>, list<float32> or binary "
            "(D little-endian float32 values a row)"
        )
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        value = out[row][~np.isfinite(out[row])][0]
        raise DataError(f"{where} has the value {value} in the vector at {_row(row, ids)}; {hint}")
    return out


def _first_other(lengths: np.ndarray) -> int | None:
    differ = np.flatnonzero(lengths != lengths[0]) if lengths.size else np.empty(0, np.int64)
    return int(differ[0]) if differ.size else None


def _list_vectors(arr: pa.Array, where: str, ids: np.ndarray | None) -> np.ndarray:
    value_type = arr.type.value_type
    if not (pa.types.is_floating(value_type) or pa.types.is_integer(value_type)):
        raise DataError(f"{where} holds lists of {value_type}; a vector is a list of float32 (or float64) values")
    n = len(arr)
    if pa.types.is_fixed_size_list(arr.type):
        d = arr.type.list_size
    else:
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        other = _first_other(lengths)
        if other is not None:
            raise DataError(
                f"{where} has a vector of length {lengths[other]} at {_row(other, ids)}, but {lengths[0]} at "
                f"{_row(0, ids)}; every vector has the same length: fix or drop that row"
            )
        d = int(lengths[0]) if n else 0
    if n and d < 1:
        raise DataError(f"{where} holds empty vectors ({_row(0, ids)}); a vector has at least one value")
    values = pc.list_flatten(arr)
    if values.null_count:
        at = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{where} has a null value in the vector at {_row(at // d, ids)}; fix or drop that row")
    return values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(n, d)  # a copy: writable


def _binary_vectors(arr: pa.Array, where: str, ids: np.ndarray | None) -> np.ndarray:
    lengths = pc.binary_length(arr).to_numpy(zero_copy_only=False)
    odd = np.flatnonzero(lengths % 4 != 0)
    if odd.size:
        row = int(odd[0])
        raise DataError(
            f"{where} has a cell of {lengths[row]} bytes at {_row(row, ids)}, not a whole number of float32 values; "
            "a binary vector is D little-endian float32 values (numpy: v.astype('<f4').tobytes())"
        )
    other = _first_other(lengths)
    if other is not None:
        raise DataError(
            f"{where} has a vector of {lengths[other] // 4} values at {_row(other, ids)}, but {lengths[0] // 4} at "
            f"{_row(0, ids)}; every vector has the same length: fix or drop that row"
        )
    n, d = len(arr), int(lengths[0]) // 4 if len(arr) else 0
    if n and d < 1:
        raise DataError(f"{where} holds empty vectors ({_row(0, ids)}); a vector has at least one value")
    return np.frombuffer(b"".join(arr.to_pylist()), dtype="<f4").astype(np.float32).reshape(n, d)


def vectors_from_values(values: list) -> np.ndarray:
    """float32 ``[B, D]`` from cells as Ray Data hands them to a worker (bytes, or arrays/lists of numbers),
    converted exactly as ``vector_array`` converts them (the column was checked when the data set was built)."""
    rows = [np.frombuffer(v, dtype="<f4") if isinstance(v, bytes) else np.asarray(v) for v in values]
    return np.stack(rows).astype(np.float32, copy=False)
