"""RayBackend: training through Ray Train (``train.py``), pool scoring through Ray Data (``data.py``, ``parquet.py``).

The AL loop stays on the driver; each heavy step of a stage becomes a Ray job. The data set is put in
the object store once per experiment and every training worker and scoring actor reads from it.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import torch

from tavaal.backends.ray.connect import WORKER_ENV, connect_ray, local_system_config  # noqa: F401 (tests, benchmarks)
from tavaal.config import BackendConfig, DataConfig
from tavaal.core.scoring import Scorer
from tavaal.core.training import TaskJob, TaskResult
from tavaal.core.vae_training import VAEJob, VAEResult
from tavaal.data.base import ALData
from tavaal.errors import ConfigError


def check_room_to_score(cfg: BackendConfig, total: dict, parquet: bool = False) -> None:
    """With ``keep_workers`` the training workers hold their resources while the pool is scored: on a Ray that
    cannot hold both, the first scoring would wait forever. A one-line ConfigError instead. A Parquet pool
    (``parquet``) is scored by ``score_concurrency`` actors at once, and its read tasks need one CPU beside them."""
    for res, per_worker, per_scorer in (
        ("CPU", cfg.cpus_per_worker, cfg.score_cpus_per_actor),
        ("GPU", cfg.gpus_per_worker, cfg.score_gpus_per_actor),
    ):
        scorers = cfg.score_concurrency if parquet else 1
        reads = 1.0 if parquet and res == "CPU" else 0.0
        need = cfg.num_workers * per_worker + scorers * per_scorer + reads
        if per_worker + per_scorer > 0 and need > total.get(res, 0.0) + 1e-9:
            also = " and 1 CPU for reading the Parquet files" if reads else ""
            raise ConfigError(
                f"backend.keep_workers: {cfg.num_workers} training workers x {per_worker:g} {res} stay reserved "
                f"while the pool is scored ({scorers} scoring workers x {per_scorer:g} {res}{also}), {need:g} in "
                "all, but this Ray "
                f"has {total.get(res, 0.0):g}; lower backend.cpus_per_worker/gpus_per_worker or "
                f"score_cpus_per_actor/score_gpus_per_actor (threads_per_worker sets the threads), or turn "
                "keep_workers off"
            )


ROOM_WAIT_S = 120.0  # a finished job's CPUs come back within seconds; far longer means something keeps them


def wait_for_room_to_train(cfg: BackendConfig, timeout: float = ROOM_WAIT_S) -> None:
    """Before a Ray Train job on the Ray this run started: wait until the CPUs/GPUs its workers need are free.

    Ray Train waits for its workers' placement without end (it retries after each startup timeout), so a job whose
    CPUs something else still holds would hang the run; on a Ray of its own only the run's jobs can hold them, so after
    ``timeout`` seconds a one-line error says what is missing. A request larger than the whole Ray is left to Ray
    Train, whose own check refuses it at once.
    """
    import ray

    need = {"CPU": cfg.num_workers * cfg.cpus_per_worker, "GPU": cfg.num_workers * cfg.gpus_per_worker}
    total = ray.cluster_resources()
    if any(v > total.get(k, 0.0) + 1e-9 for k, v in need.items()):
        return
    start = time.monotonic()
    while True:
        free = ray.available_resources()
        short = [k for k, v in need.items() if v > free.get(k, 0.0) + 1e-9]
        if not short:
            return
        if time.monotonic() - start > timeout:
            k = short[0]
            raise RuntimeError(
                f"a Ray Train job needs {need[k]:g} {k} but only {free.get(k, 0.0):g} of this Ray's "
                f"{total.get(k, 0.0):g} have been free for {timeout:g} s (an earlier job's workers or actors still "
                "hold them); stop the run and resume it (python -m tavaal.run --resume OUT)"
            )
        time.sleep(0.05)


class RayBackend:
    name = "ray"

    def __init__(self, cfg: BackendConfig, data_cfg: DataConfig | None = None) -> None:
        self.cfg, self.data_cfg = cfg, data_cfg
        self.data: ALData | None = None
        self.data_ref: Any = None
        self._owns_ray = False
        self._tmp_storage: str | None = None
        self._session: Any = None  # train.TrainSession with backend.keep_workers, made at the first job

    def prepare(self, data: ALData, device: torch.device) -> None:
        import ray

        self._owns_ray = connect_ray(self.cfg.address)
        if self.cfg.keep_workers and self._owns_ray:
            try:
                parquet = self.data_cfg is not None and self.data_cfg.name == "parquet"  # scored from its files
                check_room_to_score(self.cfg, ray.cluster_resources(), parquet)
            except ConfigError:
                self.close()
                raise
        self.data = data
        self.data_ref = ray.put(data)  # [1] once per experiment, not once per stage or worker
        self.pool_size = len(data.train)
        if self.cfg.storage_path is None and self._tmp_storage is None:
            self._tmp_storage = tempfile.mkdtemp(prefix="tavaal-ray-train-")

    def relabel(self, data: ALData) -> None:
        """New labels mid-run: the data goes into the object store again, and a kept worker group (which holds
        the old reference) is let go; the next job starts one on the new data."""
        import ray

        self._release_workers()
        self.data, self.data_ref = data, ray.put(data)

    @property
    def storage_path(self) -> str | None:
        """``backend.storage_path``, else the run's temporary folder (None outside prepare..close: Ray's default)."""
        return self.cfg.storage_path or self._tmp_storage

    def train_task(self, job: TaskJob, on_epoch_end: Callable[[dict], None] | None = None) -> TaskResult:
        from tavaal.backends.ray.train import train_task_on_ray

        if self.cfg.keep_workers:
            result = self._kept().train_task(job)
        else:
            self._wait_for_room()
            result = train_task_on_ray(job, self._ref(), self.cfg, self.storage_path)
        if on_epoch_end:
            for stats in result.history:
                on_epoch_end(stats)
        return result

    def train_vae(self, job: VAEJob, on_progress: Callable[[dict], None] | None = None) -> VAEResult:
        from tavaal.backends.ray.train import train_vae_on_ray

        if self.cfg.keep_workers:
            result = self._kept().train_vae(job)
        else:
            self._wait_for_room()
            result = train_vae_on_ray(job, self._ref(), self.cfg, self.storage_path)
        if on_progress:
            for rec in result.history:
                on_progress(rec)
        return result

    def score(self, scorer: Scorer, indices: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
        from tavaal.backends.ray.data import score_with_ray_data

        c = self.cfg
        if self.data_cfg is not None and self.data_cfg.name == "parquet":  # Ray Data reads the files themselves
            from tavaal.backends.ray.parquet import score_parquet_with_ray_data

            return score_parquet_with_ray_data(
                scorer,
                cast(ALData, self.data),  # prepare set it (for no indices the callee returns {} before reading it)
                self.data_cfg,
                np.asarray(indices),
                batch_size,
                concurrency=c.score_concurrency,
                cpus_per_actor=c.score_cpus_per_actor,
                gpus_per_actor=c.score_gpus_per_actor,
                threads_per_actor=c.threads_per_worker,
            )
        return score_with_ray_data(
            scorer,
            self._ref(),
            np.asarray(indices),
            batch_size,
            concurrency=c.score_concurrency,
            cpus_per_actor=c.score_cpus_per_actor,
            gpus_per_actor=c.score_gpus_per_actor,
            threads_per_actor=c.threads_per_worker,
            pool_size=self.pool_size,
            compute=c.score_compute,
        )  # out-of-range indices fail on the driver, clearly

    def _kept(self) -> Any:
        from tavaal.backends.ray.train import TrainSession

        if self._session is None:
            self._wait_for_room()
            self._session = TrainSession(self._ref(), self.cfg, self.storage_path)
        return self._session

    def _wait_for_room(self) -> None:
        if self._owns_ray:  # elsewhere other jobs (a sweep's trials, a cluster's users) may hold CPUs for long
            wait_for_room_to_train(self.cfg)

    def close(self) -> None:
        import ray

        self._release_workers()
        self.data_ref = self.data = None
        if self._tmp_storage:
            shutil.rmtree(self._tmp_storage, ignore_errors=True)
            self._tmp_storage = None
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
            self._owns_ray = False

    def _release_workers(self) -> None:
        """Let the kept worker group go (the next job starts a new one)."""
        if self._session is not None:
            self._session.close()
            self._session = None

    def _ref(self) -> Any:
        if self.data_ref is None:
            raise RuntimeError("RayBackend.prepare(data, device) must be called first")
        return self.data_ref
