"""Feature vectors in a Parquet column: embeddings a user computed with any model, one fixed-length vector a row.

Three cell formats hold the same float32 ``[N, D]`` array: ``fixed_size_list<float>`` (what pyarrow writes
for a 2-D numpy array), ``list<float>`` with one length in every row (what pandas writes for a column of
arrays), and ``binary`` cells each holding D little-endian float32 values (``array.astype('<f4').tobytes()``;
binary is also what encoded images are, so this one needs ``data.features: vector``). Integer and
float16/float64 values are converted to float32.

The column is checked batch by batch when the data set is built (``load_vectors``), in memory bounded by one
batch: a null row or element, a NaN or infinity, lists of differing lengths, or a binary cell whose length is
not a multiple of 4 or differs from the first row's is a DataError naming the row (and its id). A pool whose
vectors fit in ``IN_MEMORY_BYTES`` is then held as one float32 tensor; a larger one stays out of the driver's
memory (``ParquetVectors``): the checked values go to a float32 file in the temporary folder, and a batch reads
its rows from it; a process on another machine writes its own copy from the Parquet files.

Vectors are used as they are (``ALData.batch`` neither normalizes nor augments vectors): the task model and
the VAE see the numbers the file holds, so scale them (e.g. standardize each dimension) before writing them if
they are far from order 1.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from tavaal.errors import DataError

FEATURES = ("image", "vector")  # data.features
# Vectors up to this size are held as one tensor: small pools gain nothing from a file, and a tensor is the
# fastest to index. Larger ones stay in a file on disk, so the driver holds only the rows a batch asks for.
IN_MEMORY_BYTES = 256 * 2**20
BATCH_BYTES = 16 * 2**20  # about one batch of the checking pass: its memory bound
COPY_PREFIX = "tavaal-vectors-"  # the on-disk copies' file names, in the temporary folder


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


def load_vectors(
    batches: Callable[[], Iterable[pa.Array]], n: int, where: str, ids: np.ndarray | None = None
) -> torch.Tensor | ParquetVectors:
    """The ``n`` vectors of a column, read and checked batch by batch: a float32 tensor ``[n, D]`` when they fit
    in ``IN_MEMORY_BYTES``, else a ``ParquetVectors`` over a copy on disk. ``batches()`` yields the
    column's cells in row order; it is picklable (a ``ParquetVectors`` on another machine calls it again)."""
    check = VectorChecker(where, ids)
    memory: np.ndarray | None = None
    copy: _Copy | None = None
    try:
        for arr in batches():
            start = check.start
            x = check(arr)
            if memory is None and copy is None and x.shape[0]:
                if n * x.shape[1] * 4 <= IN_MEMORY_BYTES:
                    memory = np.empty((n, x.shape[1]), np.float32)
                else:
                    copy = _Copy.create(n, x.shape[1])
            if check.start > n:
                break
            if memory is not None:
                memory[start : check.start] = x
            elif copy is not None:
                copy.write(x)
    except BaseException:
        if copy is not None:
            copy.discard()
        raise
    if check.start != n:
        if copy is not None:
            copy.discard()
        raise DataError(f"{where} has {check.start} rows but its id column {n}; rewrite the file")
    if copy is not None:
        copy.finish()
        return ParquetVectors(batches, n, copy.dim, copy.path, where, owner=copy)
    return torch.from_numpy(memory if memory is not None else np.empty((0, 0), np.float32))


class _Copy:
    """A float32 ``[n, D]`` file of checked vectors in the temporary folder, removed when the process that wrote it
    no longer needs it (its last ``ParquetVectors`` is gone, or the process ends). Its name carries the process id,
    so that the copies of a process that was killed are removed by the next one (``sweep_copies``)."""

    def __init__(self, path: str, n: int, dim: int) -> None:
        self.path, self.n, self.dim = path, n, dim
        self._file = open(path + ".part", "wb")  # noqa: SIM115 - closed by finish or discard
        self._finalizer = weakref.finalize(self, _remove, path)

    @classmethod
    def create(cls, n: int, dim: int) -> _Copy:
        folder = tempfile.gettempdir()
        sweep_copies(folder)
        return cls(os.path.join(folder, f"{COPY_PREFIX}{os.getpid()}-{uuid.uuid4().hex}.f32"), n, dim)

    def write(self, x: np.ndarray) -> None:
        self._file.write(np.ascontiguousarray(x, dtype="<f4").tobytes())

    def finish(self) -> None:
        self._file.close()
        os.replace(self.path + ".part", self.path)

    def discard(self) -> None:
        self._file.close()
        _remove(self.path + ".part")
        self._finalizer()


STALE_PART_S = 3600.0  # a partly written copy this old, of a process that is gone, is no one's


def sweep_copies(folder: str) -> list[str]:
    """Remove the copies in ``folder`` whose writing process no longer runs (a run killed before it could remove its
    own; each may be as large as a pool's vectors); returns their names. A copy still being written on behalf of a
    driver elsewhere (a worker's, named after that driver's process) is left alone until it is an hour old."""
    removed = []
    for name in os.listdir(folder):
        pid = name.removeprefix(COPY_PREFIX).split("-", 1)[0]
        if not name.startswith(COPY_PREFIX) or not pid.isdigit() or _alive(int(pid)):
            continue
        path = os.path.join(folder, name)
        try:
            if name.endswith(".part") and time.time() - os.path.getmtime(path) < STALE_PART_S:
                continue
        except OSError:
            continue
        _remove(path)
        removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _write_copy(batches: Callable[[], Iterable[pa.Array]], path: str, n: int, dim: int) -> None:
    """This machine's copy of the vectors at ``path`` (checked by the driver already; converted the same way)."""
    part = f"{path}.{os.getpid()}.part"
    check = VectorChecker(path)
    with open(part, "wb") as f:
        for arr in batches():
            f.write(np.ascontiguousarray(check(arr), dtype="<f4").tobytes())
    if os.path.getsize(part) != n * dim * 4:
        _remove(part)
        raise RuntimeError(f"the vectors read again for {path} are not {n} x {dim}: the Parquet data changed")
    os.replace(part, path)  # atomic: processes writing the same copy at once each leave a whole file


class ParquetVectors:
    """A float32 ``[N, D]`` vector column that stays out of memory: ``x[idx]`` reads the requested rows from a
    float32 copy on disk (``load_vectors`` writes it while checking the column), ``x.subset(idx)`` is a view.

    Pickled (Ray's object store, a worker), it carries the copy's path and ``batches``, not the vectors: a
    process on the same machine reads the same file; one elsewhere writes its own copy from the Parquet files.
    ``rows`` maps positions of this view to rows of the column (None: identity).
    """

    kind = "vector"

    def __init__(
        self,
        batches: Callable[[], Iterable[pa.Array]],
        length: int,
        dim: int,
        path: str,
        where: str = "",
        rows: np.ndarray | None = None,
        owner: _Copy | None = None,
    ) -> None:
        self.batches, self.length, self.dim_, self.path, self.where, self.rows = batches, length, dim, path, where, rows
        self._owner = owner  # keeps the driver's copy on disk while any view of it is alive
        self._file: BinaryIO | None = None

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_file": None, "_owner": None}

    def __len__(self) -> int:
        return self.length if self.rows is None else int(self.rows.shape[0])

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), self.dim_))

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def dim(self) -> int:
        return 2

    def file(self) -> BinaryIO:
        """This machine's copy of the column, open for reading (written here first when it is not here)."""
        if self._file is None:
            size = self.length * self.dim_ * 4
            path = self.path
            if not (os.path.exists(path) and os.path.getsize(path) == size):
                path = os.path.join(tempfile.gettempdir(), os.path.basename(self.path))  # another machine
                if not (os.path.exists(path) and os.path.getsize(path) == size):
                    _write_copy(self.batches, path, self.length, self.dim_)
            self._file = open(path, "rb")  # noqa: SIM115 - closed when the last view of it is gone
        return self._file

    def read(self, rows: np.ndarray) -> np.ndarray:
        """float32 ``[len(rows), D]``: rows of the column, one positional read per run of consecutive rows (no
        mapping: a memory-mapped file would count the pages the kernel reads around each row in the process's
        memory, several times the rows themselves for random rows)."""
        fd, width = self.file().fileno(), self.dim_ * 4
        unique, inverse = np.unique(rows, return_inverse=True)
        out = np.empty((unique.size, self.dim_), np.float32)
        starts = np.flatnonzero(np.diff(unique, prepend=-2) != 1)
        for lo, hi in zip(starts, np.append(starts[1:], unique.size)):
            data = os.pread(fd, int(hi - lo) * width, int(unique[lo]) * width)
            out[lo:hi] = np.frombuffer(data, "<f4").reshape(-1, self.dim_)
        return out[inverse.reshape(-1)]

    def source_rows(self, idx) -> np.ndarray:
        """Rows of the underlying column for positions ``idx`` (an integer, an integer array or a slice)."""
        pos = np.arange(len(self))[idx] if isinstance(idx, slice) else np.asarray(idx, dtype=np.int64)
        if pos.size and (pos.min() < 0 or pos.max() >= len(self)):
            bad = int(pos.max() if pos.max() >= len(self) else pos.min())
            raise IndexError(f"index {bad} is out of bounds for ParquetVectors of size {len(self)}")
        return pos if self.rows is None else self.rows[pos]

    def __getitem__(self, idx) -> torch.Tensor:
        """float32 ``[B, D]`` for positions ``idx`` (``[D]`` for one integer)."""
        rows = self.source_rows(idx)
        return torch.from_numpy(self.read(rows.reshape(-1)).reshape(*rows.shape, self.dim_))

    def subset(self, idx) -> ParquetVectors:
        view = ParquetVectors(
            self.batches, self.length, self.dim_, self.path, self.where, self.source_rows(idx).reshape(-1), self._owner
        )
        view._file = self._file
        return view


def is_vectors(x: object) -> bool:
    """Whether a split's ``x`` holds vectors (a 2-D tensor or a ``ParquetVectors``), not images."""
    return isinstance(x, ParquetVectors) or (isinstance(x, torch.Tensor) and x.dim() == 2)


def vectors_from_values(values: list) -> np.ndarray:
    """float32 ``[B, D]`` from cells as Ray Data hands them to a worker (bytes, or arrays/lists of numbers),
    converted exactly as ``VectorChecker`` converts them (the column was checked when the data set was built)."""
    rows = [np.frombuffer(v, dtype="<f4") if isinstance(v, bytes) else np.asarray(v) for v in values]
    return np.stack(rows).astype(np.float32, copy=False)
