"""Pool scoring straight from a Parquet pool: ``ray.data.read_parquet`` in, decoding and scoring in the actors.

For ``data.name: parquet`` the pool's images never pass through the driver: Ray Data reads the files in
blocks where the cluster runs, a stateless step keeps the candidates' rows (matched by the stable id column),
and a fixed pool of actors decodes them (``encoded.decode_image``, as the local loop does), normalizes them
with ``ALData.batch`` and runs the strategy's scorer. Same decode, same normalization, same scorer: the
numbers equal ``core.scoring.score_pool`` on the lazily decoded pool (tests/test_own_data.py, to 1e-5).
A column of vectors (``data/vectors.py``) is read the same way, whether the driver holds the vectors or only a
copy on disk: the actors convert the file's cells to float32 as the loader does, and the selection equals
the local one (tests/test_embeddings.py).

Ray touch points are numbered ``# [n]``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import cast

import numpy as np
import ray
import torch

from tavaal.backends.ray.data import collect_by_position, keep_freed_memory_per_actor, passive_omp, wait_until_freed
from tavaal.config import DataConfig
from tavaal.core.scoring import Scorer
from tavaal.data.base import ALData, Split
from tavaal.data.encoded import EncodedImages, decode_image, read_bytes, resolve_path
from tavaal.data.parquet import base_dir
from tavaal.data.vector_pool import is_vectors
from tavaal.data.vectors import vectors_from_values

_POSITION, _INDEX, _IMAGE = "__position", "__index", "__image"


@dataclass(frozen=True)
class DecodeSpec:
    """How an actor turns a Parquet row into the model's input (what ``parquet.py`` + ``ALData.batch`` do)."""

    kind: str  # "bytes", "path" or "vector"
    size: int
    channels: int
    base_dir: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int

    def batch(self, values: list) -> torch.Tensor:
        """float32 ``[B, C, S, S]`` (vectors: ``[B, D]``), normalized as ``ALData.batch(..., augment=False)`` does."""
        if self.kind == "vector":
            x = torch.from_numpy(vectors_from_values(values))
            data = ALData("batch", Split(x, torch.zeros(len(values), dtype=torch.int64)), Split(x[:0], x[:0]), 1)
            return data.batch("train", np.arange(len(values)))[0]
        raw = [v if self.kind == "bytes" else read_bytes(resolve_path(v, self.base_dir)) for v in values]
        x = torch.from_numpy(np.stack([decode_image(b, self.size, self.channels) for b in raw]))
        y = torch.zeros(len(values), dtype=torch.int64)
        data = ALData("batch", Split(x, y), Split(x[:0], y[:0]), self.num_classes, self.mean, self.std)
        return data.batch("train", np.arange(len(values)))[0]


@dataclass(frozen=True)
class Wanted:
    """The candidates, as a keep step looks them up: ``keys`` their ids sorted (int64, or text as numpy strings),
    ``positions`` and ``indices`` their output position and pool index in the same order. Three arrays rather
    than a dict keyed by id: a million candidates cost the driver tens of megabytes instead of hundreds."""

    keys: np.ndarray
    positions: np.ndarray
    indices: np.ndarray

    @classmethod
    def of(cls, ids: np.ndarray, indices: np.ndarray) -> Wanted:
        keys = ids.astype(np.int64) if ids.dtype.kind in "iu" else ids.astype(str)
        order = np.argsort(keys, kind="stable")
        return cls(keys[order], np.arange(ids.size, dtype=np.int64)[order], indices[order])

    def find(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows of ``ids`` that are candidates, their places in the sorted keys)."""
        ids = np.asarray(ids).astype(str if self.keys.dtype.kind == "U" else np.int64)  # the id column's kind
        at = np.minimum(np.searchsorted(self.keys, ids), self.keys.size - 1)
        rows = np.flatnonzero(self.keys[at] == ids)
        return rows, at[rows]


def keep_candidates(batch: dict[str, np.ndarray], id_column: str, image_column: str, wanted: Wanted) -> dict:
    """The rows whose id is a candidate, with their output position and pool index."""
    rows, at = wanted.find(batch[id_column])
    images = np.empty(rows.size, dtype=object)
    for j, k in enumerate(rows):  # one by one: a slice assignment would broadcast equal-length vectors as 2-D
        images[j] = batch[image_column][k]
    return {_POSITION: wanted.positions[at], _INDEX: wanted.indices[at], _IMAGE: images}


class ScoreParquetPerActor:
    """Callable class Ray Data instantiates once per actor: the scorer's models are built once."""

    def __init__(self, scorer: Scorer, decode: DecodeSpec, threads: int, use_gpu: bool) -> None:
        torch.set_num_threads(threads)
        keep_freed_memory_per_actor()
        self.device = torch.device("cuda" if use_gpu and ray.get_gpu_ids() else "cpu")
        self.decode, self.scorer = decode, scorer
        self.scorer.setup(self.device)

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        idx = np.array(batch[_INDEX], dtype=np.int64)
        if idx.size == 0:
            return {_POSITION: np.empty(0, dtype=np.int64)}
        x = self.decode.batch(list(batch[_IMAGE]))
        out = {_POSITION: np.asarray(batch[_POSITION])}
        for name, value in self.scorer(x.to(self.device), idx).items():
            out[name] = value.detach().float().cpu().numpy()
        return out


def score_parquet_with_ray_data(
    scorer: Scorer,
    data: ALData,
    cfg: DataConfig,
    indices: np.ndarray,
    batch_size: int,
    concurrency: int = 1,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    threads_per_actor: int | None = None,
) -> dict[str, np.ndarray]:
    """Score pool ``indices`` (distinct) of a ``parquet`` data set by reading ``cfg.path`` with Ray Data.

    data: the run's ``ALData`` (only its ids, normalization and class count are used here); returns
    ``{name: [M, ...]}`` with row i for ``indices[i]``, as ``score_pool`` and ``score_with_ray_data``.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if np.unique(indices).size != indices.size:
        raise ValueError("indices must be distinct pool indices")
    if indices.size == 0:
        return {}
    total = ray.cluster_resources().get("CPU", 0)
    if concurrency * cpus_per_actor >= total:  # measured: the read tasks then never start, and the run hangs
        raise ValueError(
            f"{concurrency} scoring actors x {cpus_per_actor} CPUs leave none of the cluster's "
            f"{total:g} CPUs for reading the Parquet files; lower backend.score_concurrency"
        )
    assert data.train.ids is not None and cfg.path is not None  # a parquet pool: own rows, read from cfg.path
    ids = data.train.ids[indices]
    wanted = Wanted.of(np.asarray(ids), indices)
    # the pool's image column, or its vectors (a tensor or a copy on disk: the actors read the Parquet file itself)
    kind = "vector" if is_vectors(data.train.x) else cast(EncodedImages, data.train.x).kind
    decode = DecodeSpec(kind, cfg.image_size, cfg.channels, base_dir(cfg.path), data.mean, data.std, data.num_classes)
    free = ray.available_resources()
    # [1] the files are read where the cluster runs (read tasks need a CPU the actors leave free), only the
    # id and image columns
    ds = read_columns(cfg.path, [cfg.id_column, cfg.image_column])
    ds.context.enable_progress_bars = False
    # [2] a cheap stateless step keeps the candidates (the actors then see whole batches of them)
    ds = ds.map_batches(
        keep_candidates,  # type: ignore[arg-type]  # Ray types fn as one-argument; fn_args supplies the rest
        fn_args=(cfg.id_column, cfg.image_column, wanted),
        batch_format="numpy",
        batch_size=None,
    )
    # [3] a fixed pool of actors, each building the scorer's models once
    ds = ds.map_batches(
        ScoreParquetPerActor,
        fn_constructor_args=(scorer, decode, threads_per_actor or max(1, int(cpus_per_actor)), gpus_per_actor > 0),
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor,
        **passive_omp(),
    )
    out = _collect(ds, indices.size)
    wait_until_freed(free)  # [5] the actors' CPUs are free again before the next job asks for them
    return out


FOOTER_ACTORS = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"


def read_columns(path: str, columns: list[str]) -> ray.data.Dataset:
    """``columns`` of the Parquet data at ``path`` as a Ray Dataset.

    Ray Data's Parquet reader lists the files through a pool of footer-reading actors that it starts for every read,
    32 unless ``RAY_DATA_PARQUET_FOOTER_NUM_ACTORS`` says otherwise: on a small machine starting those processes
    costs more than the scoring itself, and under load they compete with the scoring actor and the next Ray Train
    job's workers for the CPUs. One reads the footers of a pool's few files well, so that is what this read asks
    for unless the variable is set. (The older reader, ``DataContext.use_datasource_v2 = False``, starts no actor
    but reads each file whole in one task: a worker then holds a large pool's whole file.)
    """
    if FOOTER_ACTORS in os.environ:
        return ray.data.read_parquet(path, columns=columns)
    os.environ[FOOTER_ACTORS] = "1"  # read when the read is planned, here in the driver
    try:
        return ray.data.read_parquet(path, columns=columns)
    finally:
        os.environ.pop(FOOTER_ACTORS, None)


def _collect(ds, n: int) -> dict[str, np.ndarray]:
    """[4] stream the scored blocks into arrays aligned with the candidates' positions."""
    out, seen = collect_by_position(ds, n, _POSITION)
    if not seen.all():
        raise RuntimeError(
            f"{n - int(seen.sum())} of {n} candidates were not found in the Parquet data (ids "
            "changed since the run started?)"
        )
    return out
