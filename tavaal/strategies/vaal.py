"""VAAL (Sinha et al. 2019): a VAE and a discriminator trained adversarially on labeled vs unlabeled
data; query the candidates the discriminator finds least likely to be labeled. Defaults from VAAL's
code: two VAE steps per iteration, KL summed."""

from __future__ import annotations

import dataclasses

import numpy as np

from tavaal.config import Config
from tavaal.core.health import format_health, game_health
from tavaal.core.metrics import label_counts
from tavaal.core.selection import select_top_k
from tavaal.core.vae_training import VAEJob, vae_input_shape, vae_iterations
from tavaal.data.base import ALData
from tavaal.models import VAE
from tavaal.registry import STRATEGIES
from tavaal.strategies.base import QueryContext, QueryResult, Strategy
from tavaal.strategies.scorers import DiscriminatorScorer


def adversarial_query(
    ctx: QueryContext, conditional: bool, vae_steps: int, kl: str, rhat: np.ndarray | None
) -> QueryResult:
    """Train VAE + discriminator on labeled vs candidates, then label the lowest P(labeled); the result carries
    the stage's game health (``tavaal.core.health.game_health``)."""
    v = ctx.cfg.vae
    v = dataclasses.replace(v, vae_steps=v.vae_steps or vae_steps, kl_reduction=v.kl_reduction or kl)
    job = VAEJob(
        input_shape=vae_input_shape(ctx.data.input_shape, v.input_size),
        vae=v,
        labeled=ctx.labeled,
        unlabeled=ctx.candidates,
        iterations=vae_iterations(v, ctx.labeled.size, ctx.candidates.size),
        seed=ctx.seed,
        conditional=conditional,
        precision=ctx.cfg.train.precision,
        rhat=rhat,
        channels_last=ctx.cfg.train.channels_last,
        pixel_stats=None if v.normalize or not ctx.data.mean else (tuple(ctx.data.mean), tuple(ctx.data.std)),
    )
    ctx.log(f"  VAE/discriminator: {job.iterations} iterations")
    result = ctx.backend.train_vae(
        job,
        on_progress=lambda r: ctx.log(
            f"  vae it {r['iteration']}/{job.iterations} vae_loss {r['vae_loss']:.4f} disc_loss {r['disc_loss']:.4f}"
        ),
    )
    # batch-statistics scoring normalizes each batch as training did: batches of the training size, labeled
    # and candidates apart
    batch = v.batch_size if v.score_bn == "batch" else ctx.score_batch_size
    scorer = DiscriminatorScorer(job, result)
    logit_c = ctx.backend.score(scorer, ctx.candidates, batch)["logit"].astype(np.float64)
    logit_l = ctx.backend.score(scorer, ctx.labeled, batch)["logit"].astype(np.float64)
    scores = -logit_c  # lowest P(labeled) first
    selected = select_top_k(scores, ctx.candidates, ctx.budget)
    # the schedule as run (strategy defaults resolved), for the record
    info = {
        "vae_steps": v.vae_steps,
        "vae_iterations": job.iterations,
        "kl_reduction": v.kl_reduction,
        "score_bn": v.score_bn,
    }
    if result.history:
        info |= {"vae_loss": result.history[-1]["vae_loss"], "disc_loss": result.history[-1]["disc_loss"]}
    health = game_health(
        result.disc_loss_tail,
        logit_l,
        logit_c,
        label_counts(ctx.data.train_targets, selected, ctx.data.num_classes),
        *((rhat[ctx.labeled], rhat[ctx.candidates]) if conditional and rhat is not None else ()),  # VAEJob: rhat set
    )
    ctx.log(format_health(health))
    return QueryResult(selected, scores, {"vae": result.vae_state, "discriminator": result.disc_state}, info, health)


def build_vae(cfg: Config, data: ALData, conditional: bool) -> VAE:
    """The VAE that ``adversarial_query`` trains, on the data's input shape (conditional: r̂ as one more input)."""
    shape = vae_input_shape(data.input_shape, cfg.vae.input_size)
    return VAE(shape, cfg.vae.latent_dim, cfg.vae.base_channels, cond_dim=int(conditional))


@STRATEGIES.register("vaal")
class VAALStrategy(Strategy):
    name = "vaal"
    direction = "lowest discriminator P(labeled) first"

    def query(self, ctx: QueryContext) -> QueryResult:
        return adversarial_query(ctx, conditional=False, vae_steps=2, kl="sum", rhat=None)

    def build_models(self, cfg: Config, data: ALData) -> None:
        build_vae(cfg, data, conditional=False)
