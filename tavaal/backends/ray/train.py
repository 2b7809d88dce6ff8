"""Ray Train adapter: task training and VAE/discriminator training as ``TorchTrainer`` jobs.

The per-worker functions run the same core loops as the local backend (``train_task``, ``train_vae``) and hand
them the Ray touch points as ``Hooks``:

  [1] data: the stage's ``ALData`` reaches each worker as one object-store reference (``ray.put`` once per
      experiment by the driver); each worker reads its shard of the labeled set from it by index.
  [2] model: ``prepare_model`` (DDP: gloo on CPU, nccl on GPU) for the task model and ranker; the VAE and
      discriminator average their gradients with one all-reduce per step (two forward passes per step
      do not fit DDP's one-forward-one-backward contract).
  [3] report + checkpoint: rank 0 checkpoints after every epoch (every ``checkpoint_every`` VAE
      iterations); after a worker failure, Ray restarts the group (``FailureConfig``) and every worker
      resumes from ``ray.train.get_checkpoint()``, losing at most the work since that checkpoint.

Each job is one ``TorchTrainer.fit()``, or (``backend.keep_workers``) all jobs of an experiment run on one kept
worker group, ``TrainSession``, which saves Ray Train's start-up per job.
"""

from __future__ import annotations

import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tavaal import faults
from tavaal.config import BackendConfig
from tavaal.core.training import Hooks, Snapshot, TaskJob, TaskResult, train_task
from tavaal.core.vae_training import VAEJob, VAEResult, train_vae


def _setup_worker(config: dict) -> tuple[Any, int, int, torch.device]:
    import ray
    import ray.train
    import ray.train.torch

    torch.set_num_threads(config["threads"])
    data = ray.get(config["data_ref"])  # [1] zero extra copies through the driver per stage
    ctx = ray.train.get_context()
    return data, ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device()


def _report(metrics: dict, rank: int, payload: Callable[[], dict] | None) -> None:
    """[3] every worker reports; rank 0 attaches a checkpoint of ``payload()``.

    The upload runs in Ray Train's background thread (``CheckpointUploadMode.ASYNC``, which also deletes the
    local copy afterwards): a synchronous report waits for the controller to take the previous one off its
    queue of one, i.e. up to a health-check interval per epoch, where the asynchronous upload costs the worker
    almost nothing. A worker killed meanwhile loses at most that one not yet uploaded checkpoint too.
    """
    import ray.train

    checkpoint = None
    if rank == 0 and payload is not None:
        d = tempfile.mkdtemp(prefix="tavaal-ckpt-")
        torch.save(payload(), Path(d) / "state.pt")
        checkpoint = ray.train.Checkpoint.from_directory(d)
    ray.train.report(metrics, checkpoint=checkpoint, checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC)


def _restore() -> dict | None:
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)


def worker_hooks(
    kind: str, rank: int, world: int, state: dict | None, report: Callable[[dict, Snapshot], None], every: int | None
) -> Hooks:
    """[2] and [3] for the core loops: DDP for the task model and ranker, one all-reduce per step for the VAE and
    discriminator, resume from ``state``, and ``report`` after every epoch (every ``every`` VAE iterations)."""
    import ray.train.torch

    def on_report(step: int, stats: dict, snapshot: Snapshot) -> None:
        faults.point(kind, step)  # tests: a worker dies here, before its checkpoint of this step
        report(stats, snapshot)

    return Hooks(
        shard=(rank, world),
        prepare=ray.train.torch.prepare_model,
        sync_grads=lambda m: _allreduce_mean(m, world),
        state=state,
        report=on_report,
        every=every,
    )


def train_task_per_worker(config: dict) -> None:
    """One Ray Train worker of a task-training job (task model + optional ranker), epoch by epoch."""
    data, rank, world, device = _setup_worker(config)
    hooks = worker_hooks("task", rank, world, _restore(), lambda m, p: _report(m, rank, p), None)
    train_task(config["job"], data, device, hooks=hooks)


def _allreduce_mean(module: torch.nn.Module, world: int) -> None:
    import torch.distributed as dist

    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if world == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def train_vae_per_worker(config: dict) -> None:
    """One Ray Train worker of a VAE/discriminator job, checkpointing every ``checkpoint_every`` iterations."""
    data, rank, world, device = _setup_worker(config)
    hooks = worker_hooks("vae", rank, world, _restore(), lambda m, p: _report(m, rank, p), config["checkpoint_every"])
    train_vae(config["job"], data, device, hooks=hooks)


def make_trainer(
    per_worker: Callable[[dict], None], config: dict, bcfg: BackendConfig, storage_path: str | None, name: str
) -> Any:
    """A ``TorchTrainer`` over ``bcfg.num_workers`` workers running ``per_worker(config)``."""
    import ray.train
    from ray.train.torch import TorchTrainer

    threads = bcfg.threads_per_worker or max(1, int(bcfg.cpus_per_worker))
    use_gpu = bcfg.gpus_per_worker > 0
    resources = {"CPU": bcfg.cpus_per_worker} | ({"GPU": bcfg.gpus_per_worker} if use_gpu else {})
    return TorchTrainer(
        per_worker,
        train_loop_config=config | {"threads": threads},
        scaling_config=ray.train.ScalingConfig(
            num_workers=bcfg.num_workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=f"{name}-{uuid.uuid4().hex[:8]}",
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=bcfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )


def fit_on_ray(
    per_worker: Callable[[dict], None], config: dict, bcfg: BackendConfig, storage_path: str | None, name: str
) -> dict:
    """Run one ``TorchTrainer`` job and return the payload of its last checkpoint."""
    result = make_trainer(per_worker, config, bcfg, storage_path, name).fit()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train job {name} finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        return torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)


def _task_result(d: dict) -> TaskResult:
    return TaskResult(d["model"], d["ranker"], list(d["history"]))


def _vae_result(d: dict) -> VAEResult:
    return VAEResult(d["vae"], d["disc"], list(d["history"]), d.get("disc_loss_tail"))


def train_task_on_ray(job: TaskJob, data_ref: Any, bcfg: BackendConfig, storage_path: str | None) -> TaskResult:
    return _task_result(
        fit_on_ray(train_task_per_worker, {"job": job, "data_ref": data_ref}, bcfg, storage_path, "task")
    )


def vae_checkpoint_every(job: VAEJob) -> int:
    return max(1, job.iterations // 10)


def train_vae_on_ray(
    job: VAEJob, data_ref: Any, bcfg: BackendConfig, storage_path: str | None, checkpoint_every: int | None = None
) -> VAEResult:
    every = checkpoint_every or vae_checkpoint_every(job)
    return _vae_result(
        fit_on_ray(
            train_vae_per_worker,
            {"job": job, "data_ref": data_ref, "checkpoint_every": every},
            bcfg,
            storage_path,
            "vae",
        )
    )


# ---------------------------------------------------------------- one worker group for a whole experiment


def serve_per_worker(config: dict) -> None:
    """A worker of a kept group: runs the jobs the driver posts on the board, in order, until it posts None.

    Each checkpoint carries the job's number, so a group restarted after a failure (``FailureConfig``) takes up
    the job in progress from its last checkpoint, or redoes nothing of a job already finished there.
    """
    import ray

    data, rank, world, device = _setup_worker(config)
    board = config["board"]
    state = _restore()
    i = state["job"] if state is not None else 0
    while (posted := ray.get(board.job.remote(i))) is not None:
        kind, job = posted
        own = state["state"] if state is not None and state["job"] == i else None

        def report(metrics: dict, payload: Callable[[], dict], i: int = i) -> None:
            _report(metrics | {"job": i}, rank, lambda: {"job": i, "state": payload()})

        result: TaskResult | VAEResult
        if kind == "task":
            result = train_task(job, data, device, hooks=worker_hooks(kind, rank, world, own, report, None))
        else:
            every = vae_checkpoint_every(job)
            result = train_vae(job, data, device, hooks=worker_hooks(kind, rank, world, own, report, every))
        if rank == 0:
            ray.get(board.finish.remote(i, result))
        state, i = None, i + 1


class TrainSession:
    """One Ray Train worker group kept for many jobs (``backend.keep_workers``).

    A ``TorchTrainer`` job pays Ray Train's start-up (controller and worker processes, torch imports, the
    process group: many seconds on a small machine) each time; a stage has one or two. Here ``fit()`` runs once,
    in a thread of the driver, and its workers take the jobs from a ``JobBoard`` actor. The workers keep their
    CPUs/GPUs until ``close()``, and ``backend.max_failures`` counts worker failures over the whole session.
    """

    def __init__(self, data_ref: Any, bcfg: BackendConfig, storage_path: str | None) -> None:
        import ray

        from tavaal.backends.ray.job_board import JobBoard

        # Any: Ray's stubs give an actor handle's methods no .remote
        self.board: Any = ray.remote(num_cpus=0)(JobBoard).remote()
        self._next = 0
        self._error: BaseException | None = None
        trainer = make_trainer(
            serve_per_worker, {"data_ref": data_ref, "board": self.board}, bcfg, storage_path, "session"
        )
        self._thread = threading.Thread(target=self._fit, args=(trainer,), name="tavaal-train-session", daemon=True)
        self._thread.start()

    def _fit(self, trainer: Any) -> None:
        try:
            trainer.fit()
        except BaseException as e:  # noqa: BLE001 - handed to the waiting driver by run()
            self._error = e

    def run(self, kind: str, job: TaskJob | VAEJob) -> Any:
        """Post ``job`` ("task" or "vae") and wait for rank 0's result (a TaskResult or VAEResult)."""
        import ray

        i, self._next = self._next, self._next + 1
        ray.get(self.board.post.remote(i, (kind, job)))
        ref = self.board.result.remote(i)
        while not ray.wait([ref], timeout=0.5)[0]:
            if not self._thread.is_alive():
                raise RuntimeError(
                    f"the kept Ray Train worker group stopped before job {i} ({kind}) finished: {self._error!r}"
                )
        return ray.get(ref)

    def train_task(self, job: TaskJob) -> TaskResult:
        return self.run("task", job)

    def train_vae(self, job: VAEJob) -> VAEResult:
        return self.run("vae", job)

    def close(self, timeout: float = 60.0) -> None:
        import ray

        if self._thread.is_alive():
            ray.get(self.board.post.remote(self._next, None))
            self._thread.join(timeout)
        ray.kill(self.board)
