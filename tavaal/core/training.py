"""Stage training of the task model and its ranker (loss-prediction module), and test evaluation.

One short trainer that knows nothing of strategies: ``ranker_loss`` says whether a ranker is trained
beside the task model ("rank": TA-VAAL's eq. 1; "margin": LL4AL; None: no ranker, as for the
baselines that do not use one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch

from tavaal.config import TrainConfig
from tavaal.core.batches import iter_batches
from tavaal.core.metrics import classification_metrics, confusion_matrix, segmentation_metrics
from tavaal.core.precision import autocast, memory_format, resolve_precision, to_device
from tavaal.core.seeding import derive_seed, torch_generator
from tavaal.data.base import ALData
from tavaal.losses import margin_loss, per_sample_task_loss, ranking_loss
from tavaal.models import LossNet, build_task_model


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the task model and ranker from weights (picklable for Ray)."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    ranker_hidden: int = 128

    def build(self, with_ranker: bool, seed: int | None = None) -> tuple[torch.nn.Module, torch.nn.Module | None]:
        if seed is not None:
            torch.manual_seed(seed)  # model init draws from the global generator
        model = build_task_model(self.name, self.input_shape, self.num_classes)
        channels = cast("Sequence[int]", model.feature_channels)  # every task model has them (models/base.py)
        ranker = LossNet(channels, self.ranker_hidden) if with_ranker else None
        return model, ranker


@dataclass(frozen=True)
class TaskJob:
    """One stage of task training: train ``spec`` on ``labeled`` for ``train.epochs`` epochs."""

    spec: ModelSpec
    train: TrainConfig
    labeled: np.ndarray  # absolute indices of the labeled set
    ranker_loss: str | None  # "rank" | "margin" | None
    seed: int  # the stage's seed: init, shuffling and augmentation derive from it


@dataclass
class TaskResult:
    model_state: dict
    ranker_state: dict | None
    history: list[dict] = field(default_factory=list)

    def states(self) -> dict[str, dict]:
        """The weights a checkpoint keeps: the task model's, and the ranker's when there is one."""
        return {"model": self.model_state} | ({"ranker": self.ranker_state} if self.ranker_state else {})


Snapshot = Callable[[], dict]  # the state a job resumes from, built only when a runner asks for it


@dataclass(frozen=True)
class Hooks:
    """What a distributed runner (Ray Train) adds to the core training loops; a local run needs none of it.

    ``shard`` (rank, world): this worker's share of each epoch (task) or batch (VAE). ``prepare`` wraps a model,
    already on the device, for data-parallel training (DDP). ``sync_grads`` averages a module's gradients across
    the workers before each optimizer step (the VAE job: its two forward passes per step do not fit DDP's
    one-forward-one-backward contract). ``state``: a snapshot to resume from. ``report(step, stats, snapshot)``
    runs after every task epoch and every ``every`` VAE iterations, with a function that returns the resumable
    state (so that only a runner that checkpoints pays for building it).
    """

    shard: tuple[int, int] = (0, 1)
    prepare: Callable[[torch.nn.Module], torch.nn.Module] | None = None
    sync_grads: Callable[[torch.nn.Module], None] | None = None
    state: dict | None = None
    report: Callable[[int, dict, Snapshot], None] | None = None
    every: int | None = None  # VAE iterations between reports (None: the loop's own log interval)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The model inside a data-parallel wrapper (``DistributedDataParallel.module``), else the model itself."""
    return getattr(module, "module", module)


class StageOptim:
    """SGD + MultiStepLR for the task model and (same hyperparameters, as the official code) the ranker."""

    def __init__(self, model: torch.nn.Module, ranker: torch.nn.Module | None, t: TrainConfig) -> None:
        params = [{"params": model.parameters()}]
        if ranker is not None:
            params.append({"params": ranker.parameters()})
        self.opt = torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        self.sched = torch.optim.lr_scheduler.MultiStepLR(self.opt, milestones=list(t.milestones), gamma=t.gamma)

    def state_dict(self) -> dict:
        return {"opt": self.opt.state_dict(), "sched": self.sched.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        self.opt.load_state_dict(d["opt"])
        self.sched.load_state_dict(d["sched"])


def task_loss(
    model: torch.nn.Module,
    ranker: torch.nn.Module | None,
    x: torch.Tensor,
    y: torch.Tensor,
    t: TrainConfig,
    ranker_loss: str | None,
    epoch: int,
) -> tuple[torch.Tensor, dict]:
    """L = mean CE + η · L_rank (eq. 2); the per-sample CE is the ranker's (detached) target.

    Segmentation: a sample's CE is its image's mean pixel CE (ignore pixels left out), L averages the images.
    """
    out = model(x)
    ce = per_sample_task_loss(out.logits.float(), y)
    loss = ce.mean()
    stats = {"ce": float(loss.detach())}
    if ranker is not None:
        feats = out.features
        if epoch > t.ranker_stop_grad_epoch:  # official code: `if epoch > epoch_loss`, features detached
            feats = [f.detach() for f in feats]
        pred = ranker(feats).float()
        if ranker_loss == "rank":
            lr_loss = ranking_loss(pred, ce.detach())
        else:
            lr_loss = margin_loss(pred, ce.detach(), t.margin)
        loss = loss + t.eta * lr_loss
        stats["ranker_loss"] = float(lr_loss.detach())
    return loss, stats


def train_epoch(
    model: torch.nn.Module,
    ranker: torch.nn.Module | None,
    optim: StageOptim,
    data: ALData,
    job: TaskJob,
    epoch: int,
    device: torch.device,
    shard: tuple[int, int] = (0, 1),
) -> dict:
    """One epoch over this worker's shard ``(rank, world_size)`` of the labeled set; returns mean stats.

    With a ranker, an odd-sized batch drops its last sample (the ranking loss pairs the two halves) and a
    batch of one is skipped.
    """
    model.train()
    if ranker is not None:
        ranker.train()
    gen = torch_generator(job.seed, "epoch", epoch)
    rank, world = shard
    order = job.labeled[torch.randperm(job.labeled.size, generator=gen).numpy()]
    # DDP needs the same number of steps on every worker: equal shards (the few samples left over go
    # to no worker this epoch; the next shuffle differs) and batches of batch_size // world per worker
    per = order.size // world
    mine = order[rank * per : (rank + 1) * per]
    batch_size = max(2, job.train.batch_size // world)
    aug = gen if world == 1 else torch_generator(job.seed, "epoch", epoch, "rank", rank)  # same shuffle, own crops
    precision = resolve_precision(job.train.precision, device)
    sums: dict[str, float] = {}
    n_batches = 0
    for x, y, _ in iter_batches(data, "train", mine, batch_size, aug, augment=True):
        if ranker is not None and x.shape[0] % 2:
            x, y = x[:-1], y[:-1]
        if x.shape[0] < 2:
            continue
        x, y = to_device(x, device, job.train.channels_last), y.to(device, non_blocking=True)
        with autocast(device, precision):
            loss, stats = task_loss(model, ranker, x, y, job.train, job.ranker_loss, epoch)
        optim.opt.zero_grad(set_to_none=True)
        loss.backward()
        optim.opt.step()
        n_batches += 1
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + v
    optim.sched.step()
    return {k: v / max(n_batches, 1) for k, v in sums.items()} | {"epoch": epoch}


def train_task(
    job: TaskJob,
    data: ALData,
    device: torch.device,
    on_epoch_end: Callable[[dict], None] | None = None,
    hooks: Hooks | None = None,
) -> TaskResult:
    """Build (seeded), train for ``job.train.epochs`` epochs, return CPU state dicts and the history.

    ``hooks`` (a distributed runner's): train this worker's shard, wrap the models, resume from a snapshot
    (``{"model", "ranker", "history", "optim", "epoch"}``) and report one after every epoch.
    """
    hooks = hooks or Hooks()
    model, ranker = job.spec.build(job.ranker_loss is not None, seed=derive_seed(job.seed, "init"))
    if hooks.state is not None:
        model.load_state_dict(hooks.state["model"])
        if ranker is not None:
            ranker.load_state_dict(hooks.state["ranker"])
    model.to(device, memory_format=memory_format(job.train.channels_last))  # type: ignore[call-overload]  # torch's stubs lack Module.to(device, memory_format=...)
    if ranker is not None:
        ranker.to(device)
    if hooks.prepare is not None:
        model = hooks.prepare(model)
        ranker = hooks.prepare(ranker) if ranker is not None else None
    optim = StageOptim(model, ranker, job.train)
    history: list[dict] = []
    start = 0
    if hooks.state is not None:
        optim.load_state_dict(hooks.state["optim"])
        history, start = list(hooks.state["history"]), int(hooks.state["epoch"]) + 1

    def result() -> TaskResult:
        return TaskResult(cpu_state(unwrap(model)), cpu_state(unwrap(ranker)) if ranker is not None else None, history)

    for epoch in range(start, job.train.epochs):
        stats = train_epoch(model, ranker, optim, data, job, epoch, device, shard=hooks.shard)
        history.append(stats)
        if on_epoch_end is not None:
            on_epoch_end(stats)
        if hooks.report is not None:

            def snapshot(epoch: int = epoch) -> dict:
                r = result()
                return {"model": r.model_state, "ranker": r.ranker_state, "history": list(r.history)} | {
                    "optim": optim.state_dict(),
                    "epoch": epoch,
                }

            hooks.report(epoch, stats, snapshot)
    return result()


def cpu_state(module: torch.nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    data: ALData,
    device: torch.device,
    batch_size: int = 512,
    precision: str = "fp32",
    split: str = "test",
    indices: np.ndarray | None = None,
    channels_last: bool = False,
) -> dict:
    """Accuracy, balanced accuracy and per-class accuracy on ``split`` (its ``indices``; default the whole test
    split), in eval mode without augmentation.

    Segmentation: pixel accuracy as ``accuracy``, mean class (pixel) accuracy as ``balanced_accuracy``, plus
    ``miou`` and ``per_class_iou``, from one confusion matrix over every pixel that is not ignored.
    """
    model.to(memory_format=memory_format(channels_last)).eval()
    precision = resolve_precision(precision, device)
    preds = []
    cm = np.zeros((data.num_classes, data.num_classes), dtype=np.int64)
    idx = np.arange(len(getattr(data, split))) if indices is None else np.asarray(indices, dtype=np.int64)
    for x, y, _ in iter_batches(data, split, idx, batch_size):
        with autocast(device, precision):
            pred = model(to_device(x, device, channels_last)).logits.argmax(1).cpu()
        if data.is_segmentation:  # accumulated per batch: a split's pixels need not fit in memory twice
            cm += confusion_matrix(pred.numpy(), y.numpy(), data.num_classes)
        else:
            preds.append(pred)
    if data.is_segmentation:
        m = segmentation_metrics(cm)
        return {
            "accuracy": m["pixel_accuracy"],
            "balanced_accuracy": m["mean_class_accuracy"],
            "per_class_accuracy": m["per_class_accuracy"],
            "miou": m["miou"],
            "per_class_iou": m["per_class_iou"],
        }
    pred = torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)
    return classification_metrics(pred, getattr(data, split).y.numpy()[idx], data.num_classes)
