"""Pool scoring as a Ray Data pipeline: the same ``Scorer`` as the local loop, sharded over Ray workers.

What is where:
  ``score_with_ray_data``   the driver side: candidate positions + indices in (the driver never holds an
                            image), one streaming ``map_batches`` over tasks or an actor pool, results
                            written by position into preallocated arrays (aligned with ``indices``, as
                            ``tavaal.core.scoring.score_pool`` returns them).
  ``score_batch_in_worker`` the worker side on CPUs (tasks): Ray reuses its worker processes, which keep
                            the data set and the stage's scorer they resolved (``scorer.setup`` once per
                            process and stage), then per batch: indices -> ``data.batch("train", idx)``
                            (unaugmented) -> ``scorer(x, idx)`` -> numpy columns.
  ``ScoreBatchesPerActor``  the same on a fixed actor pool made per call (GPUs: models moved once per actor).

Ray touch points are numbered ``# [n]``. The maths lives in the scorer and ``ALData.batch``: nothing here
changes a number, so both backends agree to float rounding (tests/test_ray_data.py holds them to 1e-5).
"""

from __future__ import annotations

import ctypes
import gc
import os
import time

import numpy as np
import pyarrow as pa
import ray
import torch

from tavaal.core.scoring import Scorer
from tavaal.data.base import ALData

_POSITION, _INDEX = "position", "index"  # pipeline columns next to the scorer's outputs
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)
# Input blocks (one Ray Data task each): tasks get as few as there are workers, because a task worker that
# finishes waits for Ray Data to see it and send the next one, and with several blocks per worker those waits add
# up to a large share of a task's time on busy cores (benchmarks/results/scoring-2026-12-01.md). Actors get several,
# queued at each actor (no wait), so one that starts late takes fewer. Each block is at most this many batches,
# to bound what a retried task redoes.
_TASK_BLOCKS_PER_WORKER, _ACTOR_BLOCKS_PER_WORKER, _MAX_BATCHES_PER_BLOCK = 1, 4, 64


class ScoreBatchesPerActor:
    """Callable class that Ray Data instantiates once per actor: models and data are set up once."""

    def __init__(self, scorer: Scorer, data: ALData | ray.ObjectRef, threads: int, use_gpu: bool) -> None:
        # [3] per actor, once: resolve the data set from the object store (ray.put once by the caller)
        self.data: ALData = ray.get(data) if isinstance(data, ray.ObjectRef) else data
        torch.set_num_threads(threads)
        keep_freed_memory_per_actor()
        self.device = _device(use_gpu)
        self.scorer = scorer
        self.scorer.setup(self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _score_batch(self.scorer, self.data, self.device, batch)


_PROCESS_CACHE: dict[str, tuple[str, object]] = {}  # slot -> (object ref hex, value): the latest of each


def score_batch_in_worker(batch: dict[str, np.ndarray], refs: tuple, threads: int, use_gpu: bool) -> dict:
    """Task-based ``map_batches`` function: Ray reuses its worker processes across tasks and calls, and each
    process keeps the latest scorer and data set it resolved, so models are set up once per process and
    stage, and torch is imported once per process, not once per call (actors: a fresh process per call).

    refs: ``(scorer_ref, data_ref)`` inside a tuple, so Ray hands the refs over instead of resolving (and
    copying) them for every task.
    """
    scorer_ref, data_ref = refs
    torch.set_num_threads(threads)
    device = _device(use_gpu)
    data = _cached("data", data_ref, lambda d: d)  # [3] once per process and experiment
    scorer = _cached("scorer", scorer_ref, lambda s: (s.setup(device), s)[1])  # once per process and stage
    return _score_batch(scorer, data, device, batch)


def _cached(slot: str, ref: ray.ObjectRef, build):
    key, value = _PROCESS_CACHE.get(slot, (None, None))
    if key != ref.hex():
        _PROCESS_CACHE.pop(slot, None)  # drop the previous stage's models before building the new ones
        if not _PROCESS_CACHE:
            keep_freed_memory_per_actor()
        value = build(ray.get(ref))
        _PROCESS_CACHE[slot] = (ref.hex(), value)
    return value


def _device(use_gpu: bool) -> torch.device:
    return torch.device("cuda" if use_gpu and ray.get_gpu_ids() else "cpu")


@torch.no_grad()
def _score_batch(scorer: Scorer, data: ALData, device: torch.device, batch: dict[str, np.ndarray]) -> dict:
    idx = np.array(batch[_INDEX])  # zero-copy batches are read-only views; torch wants writable memory
    pool_size = len(data.train)
    if idx.size and idx.max() >= pool_size:
        bad = int(idx[idx >= pool_size][0])
        raise IndexError(f"pool index {bad} is out of range: the train split has {pool_size} samples")
    x, _ = data.batch("train", idx)
    out = {_POSITION: batch[_POSITION], _INDEX: idx}
    for name, value in scorer(x.to(device), idx).items():
        if name in out:
            raise ValueError(f"scorer output {name!r} clashes with a pipeline column; rename it")
        out[name] = value.detach().float().cpu().numpy()
    return out


def keep_freed_memory_per_actor(trim_threshold: int = 256 * 2**20, mmap_threshold: int = 32 * 2**20) -> bool:
    """glibc malloc: recycle each batch's activations instead of handing them back to the OS.

    Ray Data calls the UDF from a thread other than the actor's main one; that thread's malloc arena
    returns freed memory to the OS after every batch, so the next batch page-faults it all back, and scoring runs
    markedly slower than the same loop in a main thread (benchmarks/README.md, pool scoring).
    A fixed mmap threshold (``mmap_threshold``: allocations below it come from the heap; 32 MiB is the largest the
    dynamic threshold would reach) and a trim threshold of ``trim_threshold`` bytes make the actor as fast as the
    local loop, for at most that much extra resident memory. Returns whether glibc took both (False without glibc:
    scoring is then only slower).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) and libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold))


COMPUTE = ("auto", "tasks", "actors")


def score_with_ray_data(
    scorer: Scorer,
    data_ref: ray.ObjectRef | ALData,
    indices: np.ndarray,
    batch_size: int,
    concurrency: int = 1,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    threads_per_actor: int | None = None,
    pool_size: int | None = None,
    compute: str = "auto",
) -> dict[str, np.ndarray]:
    """Score train-split ``indices`` with ``scorer`` on ``concurrency`` Ray Data workers.

    data_ref: ``ray.put(data)`` of the experiment's ``ALData``, done once by the caller (a plain ``ALData``
    is put here, once per call). indices: int ``[M]`` absolute pool indices. Returns ``{name: [M, ...]}``
    for every scorer output, row i belonging to ``indices[i]`` (as ``score_pool``); ``{}`` for no indices.
    Each worker reserves ``cpus_per_actor`` CPUs and ``gpus_per_actor`` GPUs (cuda when > 0) and runs
    ``threads_per_actor`` torch threads (None: ``max(1, int(cpus_per_actor))``). pool_size: the train
    split's length, to reject out-of-range indices here with an IndexError before any worker starts (a
    worker that meets one fails the run with Ray's error wrapping the same message).
    compute: ``"actors"`` a fixed pool of ``concurrency`` actors made for this call, each building the
    models once (start-up: a process and a torch import per actor, seconds each; right for GPUs,
    where models move to the device once); ``"tasks"`` Ray's reusable worker processes, which keep the
    models per process and stage (start-up only on the first call of a process); ``"auto"``: actors when
    ``gpus_per_actor > 0`` (Ray does not reuse GPU task processes), else tasks.
    """
    if not isinstance(data_ref, ray.ObjectRef):
        pool_size = len(data_ref.train)
    indices = _check_indices(indices, pool_size)
    _check_resources(batch_size, concurrency, cpus_per_actor, gpus_per_actor, threads_per_actor)
    if compute not in COMPUTE:
        raise ValueError(f"compute must be one of {', '.join(COMPUTE)}, got {compute!r}")
    if indices.size == 0:
        return {}
    if not isinstance(data_ref, ray.ObjectRef):
        data_ref = ray.put(data_ref)  # once per call; the backend puts it once per experiment instead
    free = ray.available_resources()
    threads = threads_per_actor or max(1, int(cpus_per_actor))
    use_gpu = gpus_per_actor > 0
    # [1] input: only (position, index) pairs, in blocks of whole batches, so every batch a worker sees is
    # exactly one batch of the local loop; images are made in the workers from the shared data set
    actors = compute == "actors" or (compute == "auto" and use_gpu)
    ds: ray.data.Dataset = ray.data.from_arrow(
        _index_blocks(indices, batch_size, concurrency, _ACTOR_BLOCKS_PER_WORKER if actors else _TASK_BLOCKS_PER_WORKER)
    )
    ds.context.enable_progress_bars = False
    # Ray Data's per-operator reservation reads the resources it may use from its autoscaling coordinator,
    # which answers only at the next refresh, a second later: until then it runs one task. This pipeline has a
    # single operator over in-memory index blocks, so there is nothing to divide between operators
    ds.context.op_resource_reservation_enabled = False
    common = dict(
        batch_size=batch_size,
        batch_format="numpy",
        zero_copy_batch=True,
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor,
        **passive_omp(),
    )  # OMP passive waiting as in tavaal/__init__.py
    if actors:
        # [2a] a fixed pool of actors, each building the models once
        ds = ds.map_batches(
            ScoreBatchesPerActor,
            fn_constructor_args=(scorer, data_ref, threads, use_gpu),
            compute=ray.data.ActorPoolStrategy(size=concurrency),
            **common,
        )
    else:
        # [2b] at most `concurrency` tasks at a time on reused worker processes, models cached per process
        refs = (ray.put(scorer), data_ref)
        ds = ds.map_batches(
            score_batch_in_worker,  # type: ignore[arg-type]  # Ray types fn as one-argument; fn_args supplies the rest
            fn_args=(refs, threads, use_gpu),
            compute=ray.data.TaskPoolStrategy(size=concurrency),
            **common,
        )
    out = _collect(ds, indices)
    wait_until_freed(free)
    return out


def wait_until_freed(before: dict[str, float], timeout: float = 30.0) -> None:
    """[5] Wait until the CPUs and GPUs that were free before a pipeline (``before``: ``ray.available_resources()``)
    are free again, at most ``timeout`` seconds.

    Ray Data lets a pipeline's actors go by dropping their handles, and Ray frees their resources only once their
    processes have exited, a moment after the last batch reached the driver. The next step of a stage is often a Ray
    Train job that needs those CPUs: without the wait it may find them still taken. A handle held by a reference
    cycle is let go by a garbage collection. The wait is bounded because on a shared cluster another job may take
    the CPUs meanwhile; the next job then waits for its own.
    """
    start = time.monotonic()
    collected = False
    while time.monotonic() - start < timeout:
        free = ray.available_resources()
        if all(free.get(k, 0.0) >= v - 1e-9 for k, v in before.items() if k in ("CPU", "GPU")):
            return
        if not collected and time.monotonic() - start > 1.0:
            gc.collect()
            collected = True
        time.sleep(0.02)


def passive_omp() -> dict:
    """``runtime_env`` setting OMP passive waiting in the actors, unless the job's own runtime env does
    already (then Ray can host the actors in the job's prestarted workers instead of fresh processes)."""
    if "OMP_WAIT_POLICY" in (ray.get_runtime_context().runtime_env.get("env_vars") or {}):
        return {}
    return {"runtime_env": {"env_vars": {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}}}


def _index_blocks(indices: np.ndarray, batch_size: int, concurrency: int, per_worker: int) -> list[pa.Table]:
    """Arrow tables of ``(position, index)``, each a whole number of batches (the last may be short):
    ``per_worker`` blocks per worker, or more when a block would exceed ``_MAX_BATCHES_PER_BLOCK``, always
    planned as a multiple of ``concurrency`` so the workers get equal shares (rounding to whole batches can
    leave fewer blocks when the batches are few)."""
    n = indices.size
    batches = -(-n // batch_size)
    blocks = concurrency * max(per_worker, -(-batches // (concurrency * _MAX_BATCHES_PER_BLOCK)))
    per_block = batch_size * max(1, -(-batches // blocks))
    return [
        pa.table(
            {
                _POSITION: np.arange(start, min(start + per_block, n), dtype=np.int64),
                _INDEX: indices[start : start + per_block],
            }
        )
        for start in range(0, n, per_block)
    ]


def _collect(ds: ray.data.Dataset, indices: np.ndarray) -> dict[str, np.ndarray]:
    """Stream the scored blocks (completion order) into arrays aligned with ``indices``."""

    def check(batch: dict[str, np.ndarray], pos: np.ndarray) -> None:
        if not np.array_equal(batch.pop(_INDEX), indices[pos]):
            raise RuntimeError("Ray Data returned rows whose index does not match their position")

    out, seen = collect_by_position(ds, indices.size, _POSITION, check)
    if not seen.all():
        raise RuntimeError(f"Ray Data returned {int(seen.sum())} of {indices.size} scored rows")
    return out


def collect_by_position(ds: ray.data.Dataset, n: int, position: str, check=None) -> tuple[dict, np.ndarray]:
    """Stream scored blocks into ``{name: [n, ...]}`` arrays, row by the ``position`` column; returns them and
    the mask of rows seen. ``check(batch, pos)`` may inspect (and pop) columns of each block first."""
    out: dict[str, np.ndarray] = {}
    seen = np.zeros(n, dtype=bool)
    # [4] streaming: one scored block at a time reaches the driver, never the whole table at once
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        pos = batch.pop(position)
        if check is not None:
            check(batch, pos)
        for name, col in batch.items():
            if name not in out:
                out[name] = np.empty((n, *col.shape[1:]), dtype=col.dtype)
            out[name][pos] = col
        seen[pos] = True
    return out, seen


def _check_indices(indices: np.ndarray, pool_size: int | None) -> np.ndarray:
    arr = np.asarray(indices)
    if arr.ndim != 1 or not (arr.dtype.kind in "iu" or arr.size == 0):
        raise ValueError(
            f"indices must be a 1-D integer array of pool indices, got shape {arr.shape} dtype {arr.dtype}"
        )
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError(f"indices must be >= 0 (absolute pool indices), got {int(arr.min())}")
    if arr.size and pool_size is not None and arr.max() >= pool_size:
        raise IndexError(f"pool index {int(arr.max())} is out of range: the train split has {pool_size} samples")
    return arr


def _check_resources(batch_size: int, concurrency: int, cpus: float, gpus: float, threads: int | None) -> None:
    for name, value, ok, expected in [
        ("batch_size", batch_size, batch_size >= 1, ">= 1"),
        ("concurrency", concurrency, concurrency >= 1, ">= 1"),
        ("cpus_per_actor", cpus, cpus > 0, "> 0"),
        ("gpus_per_actor", gpus, gpus >= 0, ">= 0"),
        ("threads_per_actor", threads, threads is None or threads >= 1, ">= 1 or None"),
    ]:
        if not ok:
            raise ValueError(f"{name} must be {expected}, got {value!r}")
