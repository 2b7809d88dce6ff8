"""Picklable scorers: weights plus how to rebuild the models; ``setup`` builds them once per process."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import numpy as np
import torch

from tavaal.core.precision import autocast, memory_format, resolve_precision, to_device
from tavaal.core.training import ModelSpec, TaskResult
from tavaal.core.vae_training import VAEJob, VAEResult, fit_to_vae
from tavaal.models import VAE, Discriminator

if TYPE_CHECKING:
    from tavaal.strategies.base import QueryContext


class TaskScorer:
    """Runs the frozen task model (eval mode) and returns one output per sample.

    kind: "entropy" (softmax entropy ``[B]``; segmentation: the mean over the image's pixels), "rhat" (ranker's
    predicted loss ``[B]``), "embedding" (``[B, D]``; segmentation: the pooled deepest encoder feature),
    "logits" (``[B, C]``, classification only). ``precision`` and ``channels_last`` as ``train.*`` (the outputs are
    float32 either way).
    """

    def __init__(
        self, spec: ModelSpec, task: TaskResult, kind: str, precision: str = "fp32", channels_last: bool = False
    ) -> None:
        if kind == "rhat" and task.ranker_state is None:
            raise ValueError("scoring r̂ needs a trained ranker")
        self.spec, self.task, self.kind = spec, task, kind
        self.precision, self.channels_last = precision, channels_last
        self._model: torch.nn.Module | None = None
        self._ranker: torch.nn.Module | None = None

    def setup(self, device: torch.device) -> None:
        if self._model is not None:
            return
        model, ranker = self.spec.build(with_ranker=self.kind == "rhat")
        model.load_state_dict(self.task.model_state)
        self._model = model.to(device, memory_format=memory_format(self.channels_last)).eval()  # type: ignore[call-overload]  # torch's stubs lack Module.to(device, memory_format=...)
        if ranker is not None:
            assert self.task.ranker_state is not None  # built only for kind 'rhat', which __init__ checked
            ranker.load_state_dict(self.task.ranker_state)
            self._ranker = ranker.to(device).eval()
        self._device, self._precision = device, resolve_precision(self.precision, device)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, idx: np.ndarray) -> dict[str, torch.Tensor]:
        with autocast(self._device, self._precision):
            return self._outputs(to_device(x, self._device, self.channels_last))

    def _outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        assert self._model is not None, "setup(device) first"
        out = self._model(x)
        if self.kind == "entropy":
            logp = torch.log_softmax(out.logits.float(), dim=1)
            entropy = -(logp.exp() * logp).sum(1)  # [B] or [B, H, W]
            return {"entropy": entropy.flatten(1).mean(1) if entropy.dim() > 1 else entropy}
        if self.kind == "rhat":
            assert self._ranker is not None  # setup built it for kind 'rhat'
            return {"rhat": self._ranker(out.features).float()}
        if self.kind == "embedding":
            return {"embedding": out.embedding.float()}
        return {"logits": out.logits.float()}

    def __getstate__(self) -> dict:
        return {
            "spec": self.spec,
            "task": self.task,
            "kind": self.kind,
            "precision": self.precision,
            "channels_last": self.channels_last,
            "_model": None,
            "_ranker": None,
        }


def task_scorer(ctx: QueryContext, kind: str) -> TaskScorer:
    """The stage's task-model scorer of ``kind`` (a ``QueryContext``'s model), run as ``train.precision`` and
    ``train.channels_last`` say."""
    return TaskScorer(ctx.spec, ctx.task, kind, ctx.cfg.train.precision, ctx.cfg.train.channels_last)


class DiscriminatorScorer:
    """VAAL / TA-VAAL query score: P(labeled) = σ(D(μ, r̂)).

    Returns ``p_labeled`` and ``logit`` ``[B]``; the strategies query the lowest P(labeled).
    For TA-VAAL, r̂ is looked up in the stage's table (computed once from the frozen ranker).

    ``vae.score_bn`` sets the VAE's BatchNorm: ``running`` scores in eval mode (running statistics, which mix
    the labeled and unlabeled batches of training); ``batch`` normalizes each scored batch by its own statistics,
    as every training batch was (the official code's scoring, with the VAE left in train mode; μ stays the
    encoder's deterministic output). In batch mode the caller scores in batches of ``vae.batch_size`` and keeps
    labeled and candidate batches apart; a batch of one sample, which has no batch statistics, is scored with the
    running ones.
    """

    def __init__(self, job: VAEJob, result: VAEResult) -> None:
        self.job, self.result = job, result
        self._vae: VAE | None = None
        self._disc: Discriminator | None = None

    def setup(self, device: torch.device) -> None:
        if self._vae is not None:
            return
        vae, disc = self.job.build()
        vae.load_state_dict(self.result.vae_state)
        disc.load_state_dict(self.result.disc_state)
        self._vae = vae.to(device, memory_format=memory_format(self.job.channels_last)).eval()  # type: ignore[call-overload]  # torch's stubs lack Module.to(device, memory_format=...)
        self._disc = disc.to(device).eval()
        self._device, self._precision = device, resolve_precision(self.job.precision, device)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, idx: np.ndarray) -> dict[str, torch.Tensor]:
        assert self._vae is not None and self._disc is not None, "setup(device) first"
        x = to_device(
            fit_to_vae(x, self.job.vae.input_size, self.job.pixel_stats), self._device, self.job.channels_last
        )
        with (
            batch_statistics(self._vae, self.job.vae.score_bn == "batch" and x.shape[0] > 1),
            autocast(self._device, self._precision),
        ):
            mu, _ = self._vae.encode(x)
        r = None
        if self.job.conditional:
            assert self.job.rhat is not None  # VAEJob.__post_init__: a conditional job has rhat
            r = torch.from_numpy(self.job.rhat[np.asarray(idx)]).float().to(mu.device)
        logit = self._disc(mu.float(), r).float()
        return {"logit": logit, "p_labeled": torch.sigmoid(logit)}

    def __getstate__(self) -> dict:
        return {"job": self.job, "result": self.result, "_vae": None, "_disc": None}


@contextlib.contextmanager
def batch_statistics(model: torch.nn.Module, on: bool):
    """Within the block, ``model``'s BatchNorm layers (when ``on``) normalize by the batch's own statistics and
    leave their running statistics untouched; the rest of the model keeps its mode."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)] if on else []
    saved = [(m.training, m.track_running_stats) for m in bns]
    for m in bns:
        m.train()
        m.track_running_stats = False  # train mode without running buffers: batch statistics, no update
    try:
        yield
    finally:
        for m, (training, track) in zip(bns, saved):
            m.train(training)
            m.track_running_stats = track
