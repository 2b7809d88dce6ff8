"""VAAL / TA-VAAL adversarial training of the VAE and discriminator on labeled vs candidate data.

The task model and ranker are frozen and the inputs are not augmented, so the ranker's prediction r̂ of
every sample is a fixed number for the stage: the caller computes it once (``rhat``, absolute-index
aligned) and it is looked up here instead of re-running the task model every iteration (exact).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from tavaal.config import VAEConfig
from tavaal.core.batches import endless_batches
from tavaal.core.precision import autocast
from tavaal.core.seeding import derive_seed, torch_generator
from tavaal.core.training import cpu_state
from tavaal.data.base import ALData
from tavaal.losses import discriminator_loss, vae_adversarial_loss, vae_loss
from tavaal.models import VAE, Discriminator


@dataclass(frozen=True)
class VAEJob:
    """One stage of VAE + discriminator training (``conditional``: TA-VAAL's r̂ as an extra input)."""

    input_shape: tuple[int, ...]
    vae: VAEConfig  # with vae_steps and kl_reduction resolved (not None)
    labeled: np.ndarray
    unlabeled: np.ndarray  # the stage's candidate subset
    iterations: int
    seed: int
    conditional: bool
    precision: str = "fp32"
    rhat: np.ndarray | None = None  # float32 [N]: r̂ per absolute index (NaN where not computed)

    def build(self, seed: int | None = None) -> tuple[VAE, Discriminator]:
        if seed is not None:
            torch.manual_seed(seed)
        cond = 1 if self.conditional else 0
        v = self.vae
        return (VAE(self.input_shape, v.latent_dim, v.base_channels, cond),
                Discriminator(v.latent_dim, cond, v.disc_hidden))


@dataclass
class VAEResult:
    vae_state: dict
    disc_state: dict
    history: list[dict] = field(default_factory=list)


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
    return torch.from_numpy(job.rhat[idx]).float().to(device)


def train_vae(
    job: VAEJob,
    data: ALData,
    device: torch.device,
    on_progress: Callable[[dict], None] | None = None,
    log_every: int = 100,
) -> VAEResult:
    """Per iteration: ``vae_steps`` VAE steps then one discriminator step (eq. of VAAL / TA-VAAL).

    VAE loss = Σ_{L,U} [MSE + β·KL] + λ_adv·[BCE(D(μ_L, r_L), 1) + BCE(D(μ_U, r_U), 1)];
    discriminator loss = BCE(D(μ_L, r_L), 1) + BCE(D(μ_U, r_U), 0) with μ under no-grad.
    The decoder gets σ(r̂), the discriminator the raw r̂.
    """
    if job.conditional and job.rhat is None:
        raise ValueError("a conditional (TA-VAAL) VAE job needs rhat")
    v = job.vae
    vae, disc = job.build(seed=derive_seed(job.seed, "vae-init"))
    vae.to(device).train()
    disc.to(device).train()
    opt_v = torch.optim.Adam(vae.parameters(), lr=v.lr)
    opt_d = torch.optim.Adam(disc.parameters(), lr=v.disc_lr)
    lab = endless_batches(data, job.labeled, v.batch_size, torch_generator(job.seed, "vae-labeled"))
    unl = endless_batches(data, job.unlabeled, v.batch_size, torch_generator(job.seed, "vae-unlabeled"))
    noise = torch_generator(job.seed, "vae-noise") if v.first_iter_noise else None
    history = []
    for it in range(job.iterations):
        for step in range(v.vae_steps):
            (xl, il), (xu, iu) = next(lab), next(unl)
            xl, xu = xl.to(device), xu.to(device)
            rl = _r(job, il, device, noise if it == 0 else None)
            ru = _r(job, iu, device, noise if it == 0 else None)
            with autocast(device, job.precision):
                loss_v = _vae_step_loss(vae, disc, xl, xu, rl, ru, v)
            opt_v.zero_grad(set_to_none=True)
            loss_v.backward()
            opt_v.step()
        with torch.no_grad(), autocast(device, job.precision):
            mu_l, mu_u = vae.encode(xl)[0], vae.encode(xu)[0]
        with autocast(device, job.precision):
            loss_d = discriminator_loss(disc(mu_l.float(), rl).float(), disc(mu_u.float(), ru).float())
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        if (it + 1) % log_every == 0 or it + 1 == job.iterations:
            rec = {"iteration": it + 1, "vae_loss": float(loss_v.detach()), "disc_loss": float(loss_d.detach())}
            history.append(rec)
            if on_progress is not None:
                on_progress(rec)
    return VAEResult(cpu_state(vae), cpu_state(disc), history)


def _vae_step_loss(vae, disc, xl, xu, rl, ru, v: VAEConfig) -> torch.Tensor:
    sl = torch.sigmoid(rl) if rl is not None else None
    su = torch.sigmoid(ru) if ru is not None else None
    recon_l, _, mu_l, logvar_l = vae(xl, sl)
    recon_u, _, mu_u, logvar_u = vae(xu, su)
    unsup = vae_loss(xl, recon_l.float(), mu_l.float(), logvar_l.float(), v.beta, v.kl_reduction)
    trans = vae_loss(xu, recon_u.float(), mu_u.float(), logvar_u.float(), v.beta, v.kl_reduction)
    adv = vae_adversarial_loss(disc(mu_l, rl).float(), disc(mu_u, ru).float())
    return unsup + trans + v.adv_weight * adv
