"""VAAL / TA-VAAL adversarial training of the VAE and discriminator on labeled vs candidate data.

The task model and ranker are frozen and the inputs are not augmented, so the ranker's prediction r̂ of
every sample is a fixed number for the stage: the caller computes it once (``rhat``, absolute-index
aligned) and it is looked up here instead of re-running the task model every iteration (exact).

With ``vae.input_size`` set, images are resized (bilinear, antialiased) to that square before the VAE sees
them, in training and in scoring alike (segmentation images are often too large for the published VAE).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from tavaal.config import VAEConfig
from tavaal.core.batches import endless_batches
from tavaal.core.precision import autocast, memory_format, resolve_precision, to_device
from tavaal.core.seeding import derive_seed, torch_generator
from tavaal.core.training import Hooks, cpu_state
from tavaal.data.base import ALData
from tavaal.losses import discriminator_loss, vae_adversarial_loss, vae_loss
from tavaal.models import VAE, Discriminator

PixelStats = tuple[tuple[float, ...], tuple[float, ...]]  # per-channel (mean, std) of a data set's normalization


def vae_input_shape(data_shape: tuple[int, ...], size: int | None) -> tuple[int, ...]:
    """The VAE's input shape: ``(C, size, size)`` for images when ``size`` is set, else the data's shape."""
    if size is None or len(data_shape) != 3:
        return tuple(data_shape)
    return (data_shape[0], size, size)


def fit_to_vae(x: torch.Tensor, size: int | None, pixel_stats: PixelStats | None = None) -> torch.Tensor:
    """Resize an image batch ``[B, C, H, W]`` to ``[B, C, size, size]`` (no-op when ``size`` is None or met), after
    undoing the data's normalization when ``pixel_stats`` (mean, std per channel) is given (``vae.normalize``
    false: the VAE sees [0, 1] pixels)."""
    if pixel_stats is not None and x.dim() == 4:
        mean, std = (torch.tensor(s, dtype=x.dtype, device=x.device).view(1, -1, 1, 1) for s in pixel_stats)
        x = x * std + mean
    if size is None or x.dim() != 4 or tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


@dataclass(frozen=True)
class VAEJob:
    """One stage of VAE + discriminator training (``conditional``: TA-VAAL's r̂ as an extra input)."""

    input_shape: tuple[int, ...]  # the VAE's (``vae_input_shape``): images arrive resized to it
    vae: VAEConfig  # with vae_steps and kl_reduction resolved (not None)
    labeled: np.ndarray
    unlabeled: np.ndarray  # the stage's candidate subset
    iterations: int
    seed: int
    conditional: bool
    precision: str = "fp32"  # fp32, bf16 or auto (train.precision)
    rhat: np.ndarray | None = None  # float32 [N]: r̂ per absolute index (NaN where not computed)
    channels_last: bool = False  # images and the conv VAE in NHWC (train.channels_last)
    pixel_stats: PixelStats | None = None  # the data's (mean, std) to undo before the VAE (vae.normalize false)

    def __post_init__(self) -> None:
        # checked where a job is made, so no backend starts work (or a Ray job) that cannot run
        if self.conditional and self.rhat is None:
            raise ValueError("a conditional (TA-VAAL) VAE job needs rhat")

    def build(self, seed: int | None = None) -> tuple[VAE, Discriminator]:
        if seed is not None:
            torch.manual_seed(seed)
        cond = 1 if self.conditional else 0
        v = self.vae
        return (
            VAE(self.input_shape, v.latent_dim, v.base_channels, cond),
            Discriminator(v.latent_dim, cond, v.disc_hidden),
        )


@dataclass
class VAEResult:
    vae_state: dict
    disc_state: dict
    history: list[dict] = field(default_factory=list)
    disc_loss_tail: float | None = None  # discriminator loss averaged over the last tenth of the iterations


def vae_iterations(v: VAEConfig, num_labeled: int, num_candidates: int) -> int:
    """Official formula: int((|L| + M) · 100 / batch) unless ``vae.iterations`` is set."""
    if v.iterations is not None:
        return v.iterations
    return max(1, int((num_labeled + num_candidates) * v.iteration_epochs / v.batch_size))


def _r(job: VAEJob, idx: np.ndarray, device: torch.device, noise: torch.Generator | None) -> torch.Tensor | None:
    if not job.conditional:
        return None
    if noise is not None:  # official TA-VAAL quirk at iteration 0: U(0, 1) instead of r̂
        return torch.rand(len(idx), generator=noise).to(device)
    assert job.rhat is not None  # VAEJob.__post_init__: a conditional job has rhat
    return torch.from_numpy(job.rhat[idx]).float().to(device)


class VAETraining:
    """The VAE + discriminator of one job with their Adam optimizers; resumable and shardable.

    ``shard = (rank, world)``: each worker draws its own batches of ``batch_size // world`` (its own
    generator streams) and ``sync_grads`` averages gradients across workers before each step, so
    ``world`` workers make the same kind of step as one worker with the whole batch.
    """

    def __init__(self, job: VAEJob, device: torch.device, shard: tuple[int, int] = (0, 1)) -> None:
        self.job, self.device, self.shard = job, device, shard
        v = job.vae
        self.vae, self.disc = job.build(seed=derive_seed(job.seed, "vae-init"))
        self.vae.to(device, memory_format=memory_format(job.channels_last)).train()  # type: ignore[call-overload]  # torch's stubs lack Module.to(device, memory_format=...)
        self.precision = resolve_precision(job.precision, device)
        self.disc.to(device).train()
        self.opt_v = torch.optim.Adam(self.vae.parameters(), lr=v.lr)
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=v.disc_lr)
        self.iteration = 0
        # the discriminator loss of the last tenth of the iterations (the game's health: chance is 2 ln 2)
        self._tail_from = job.iterations - max(1, math.ceil(job.iterations / 10))
        self._tail = [0.0, 0]  # sum, count
        rank, world = shard
        self._bs = max(1, v.batch_size // world)
        self._gen_keys: tuple = () if world == 1 else (rank, 0)

    def bind(self, data: ALData) -> VAETraining:
        g, keys, bs = self.job.seed, self._gen_keys, self._bs
        self.lab = endless_batches(data, self.job.labeled, bs, torch_generator(g, "vae-labeled", *keys))
        self.unl = endless_batches(data, self.job.unlabeled, bs, torch_generator(g, "vae-unlabeled", *keys))
        self.noise = torch_generator(g, "vae-noise") if self.job.vae.first_iter_noise else None
        return self

    def state_dict(self) -> dict:
        return {
            "vae": self.vae.state_dict(),
            "disc": self.disc.state_dict(),
            "opt_v": self.opt_v.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "iteration": self.iteration,
            "disc_tail": list(self._tail),
        }

    def load_state_dict(self, d: dict, data: ALData) -> None:
        self.vae.load_state_dict(d["vae"])
        self.disc.load_state_dict(d["disc"])
        self.opt_v.load_state_dict(d["opt_v"])
        self.opt_d.load_state_dict(d["opt_d"])
        self.iteration = int(d["iteration"])
        self._tail = list(d.get("disc_tail", [0.0, 0]))
        # a resumed job re-seeds its batch streams at the resume iteration: its later batches differ from
        # an uninterrupted job's, and the job is still a valid draw of the same procedure
        self._gen_keys = (self.shard[0], self.iteration)
        self.bind(data)

    def step(self, sync_grads: Callable[[torch.nn.Module], None] | None = None) -> dict:
        """One iteration: ``vae_steps`` VAE steps, then one discriminator step."""
        job, v, dev = self.job, self.job.vae, self.device
        noise = self.noise if self.iteration == 0 else None
        assert v.vae_steps is not None  # resolved where the job is made (VAEJob.vae)
        for _ in range(v.vae_steps):
            (xl, il), (xu, iu) = next(self.lab), next(self.unl)
            xl, xu = self._batch(xl), self._batch(xu)
            rl, ru = _r(job, il, dev, noise), _r(job, iu, dev, noise)
            with autocast(dev, self.precision):
                loss_v = _vae_step_loss(self.vae, self.disc, xl, xu, rl, ru, v)
            self.opt_v.zero_grad(set_to_none=True)
            loss_v.backward()
            if sync_grads is not None:
                sync_grads(self.vae)
            self.opt_v.step()
        with torch.no_grad(), autocast(dev, self.precision):
            mu_l, mu_u = self.vae.encode(xl)[0], self.vae.encode(xu)[0]
        with autocast(dev, self.precision):
            loss_d = discriminator_loss(self.disc(mu_l.float(), rl).float(), self.disc(mu_u.float(), ru).float())
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        if sync_grads is not None:
            sync_grads(self.disc)
        self.opt_d.step()
        self.iteration += 1
        disc_loss = float(loss_d.detach())
        if self.iteration > self._tail_from:
            self._tail = [self._tail[0] + disc_loss, self._tail[1] + 1]
        return {"iteration": self.iteration, "vae_loss": float(loss_v.detach()), "disc_loss": disc_loss}

    def _batch(self, x: torch.Tensor) -> torch.Tensor:
        """An image batch on the device, resized for the VAE (``vae.input_size``), in the job's memory format."""
        return to_device(
            fit_to_vae(x.to(self.device), self.job.vae.input_size, self.job.pixel_stats),
            self.device,
            self.job.channels_last,
        )

    def disc_loss_tail(self) -> float | None:
        """The discriminator loss averaged over the last tenth of the job's iterations (None before them)."""
        return self._tail[0] / self._tail[1] if self._tail[1] else None

    def result(self, history: list[dict]) -> VAEResult:
        return VAEResult(cpu_state(self.vae), cpu_state(self.disc), history, self.disc_loss_tail())


def train_vae(
    job: VAEJob,
    data: ALData,
    device: torch.device,
    on_progress: Callable[[dict], None] | None = None,
    log_every: int = 100,
    hooks: Hooks | None = None,
) -> VAEResult:
    """Per iteration: ``vae_steps`` VAE steps then one discriminator step (eq. of VAAL / TA-VAAL).

    VAE loss = Σ_{L,U} [MSE + β·KL] + λ_adv·[BCE(D(μ_L, r_L), 1) + BCE(D(μ_U, r_U), 1)];
    discriminator loss = BCE(D(μ_L, r_L), 1) + BCE(D(μ_U, r_U), 0) with μ under no-grad.
    The decoder gets σ(r̂), the discriminator the raw r̂.

    ``hooks`` (a distributed runner's): this worker's batches, gradients averaged across workers, resume from a
    snapshot (``{"training", "history", ...}``) and report one every ``hooks.every`` iterations (which then
    also spaces the history instead of ``log_every``).
    """
    hooks = hooks or Hooks()
    trainer = VAETraining(job, device, shard=hooks.shard).bind(data)
    history: list[dict] = []
    if hooks.state is not None:
        trainer.load_state_dict(hooks.state["training"], data)
        history = list(hooks.state["history"])
    every = hooks.every or log_every

    def snapshot() -> dict:
        r = trainer.result(list(history))
        return {"vae": r.vae_state, "disc": r.disc_state, "history": r.history, "disc_loss_tail": r.disc_loss_tail} | {
            "training": trainer.state_dict()
        }

    while trainer.iteration < job.iterations:
        rec = trainer.step(sync_grads=hooks.sync_grads)
        if rec["iteration"] % every == 0 or rec["iteration"] == job.iterations:
            history.append(rec)
            if on_progress is not None:
                on_progress(rec)
            if hooks.report is not None:
                hooks.report(rec["iteration"], rec, snapshot)
    return trainer.result(history)


def _vae_step_loss(vae, disc, xl, xu, rl, ru, v: VAEConfig) -> torch.Tensor:
    sl = torch.sigmoid(rl) if rl is not None else None
    su = torch.sigmoid(ru) if ru is not None else None
    recon_l, _, mu_l, logvar_l = vae(xl, sl)
    recon_u, _, mu_u, logvar_u = vae(xu, su)
    assert v.kl_reduction is not None  # resolved where the job is made (VAEJob.vae)
    unsup = vae_loss(xl, recon_l.float(), mu_l.float(), logvar_l.float(), v.beta, v.kl_reduction)
    trans = vae_loss(xu, recon_u.float(), mu_u.float(), logvar_u.float(), v.beta, v.kl_reduction)
    adv = vae_adversarial_loss(disc(mu_l, rl).float(), disc(mu_u, ru).float())
    return unsup + trans + v.adv_weight * adv
