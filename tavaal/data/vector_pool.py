"""A vector column too large for memory: checked batch by batch into a float32 copy on disk, read row by row.

``load_vectors`` reads a column's vectors through ``vectors.VectorChecker`` (every check, batch by batch) and
keeps them as one tensor when they fit in ``vectors.IN_MEMORY_BYTES``; a larger column is written, as it is
checked, to a float32 file in the temporary folder, and ``ParquetVectors`` reads the rows a batch asks for from
it. The file is removed when the process no longer needs it; its name carries the process id, so that the copies
of a killed run are removed by the next (``sweep_copies``). A process on another machine writes its own copy
from the Parquet files.
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
import torch

from tavaal.data import vectors
from tavaal.data.vectors import VectorChecker
from tavaal.errors import DataError

COPY_PREFIX = "tavaal-vectors-"  # the on-disk copies' file names, in the temporary folder


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
                if n * x.shape[1] * 4 <= vectors.IN_MEMORY_BYTES:
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
