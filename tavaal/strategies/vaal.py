"""VAAL (Sinha et al. 2019): a VAE and a discriminator trained adversarially on labeled vs unlabeled
data; query the candidates the discriminator finds least likely to be labeled. Defaults from VAAL's
code: two VAE steps per iteration, KL summed."""
from __future__ import annotations

import dataclasses

import numpy as np

from tavaal.core.selection import select_top_k
from tavaal.core.vae_training import VAEJob, vae_input_shape, vae_iterations
from tavaal.registry import STRATEGIES
from tavaal.strategies.base import QueryContext, QueryResult, Strategy
from tavaal.strategies.scorers import DiscriminatorScorer


def adversarial_query(ctx: QueryContext, conditional: bool, vae_steps: int, kl: str,
                      rhat: np.ndarray | None) -> QueryResult:
    """Train VAE + discriminator on labeled vs candidates, then label the lowest P(labeled)."""
    v = ctx.cfg.vae
    v = dataclasses.replace(v, vae_steps=v.vae_steps or vae_steps, kl_reduction=v.kl_reduction or kl)
    job = VAEJob(
        input_shape=vae_input_shape(ctx.data.input_shape, v.input_size), vae=v, labeled=ctx.labeled,
        unlabeled=ctx.candidates, iterations=vae_iterations(v, ctx.labeled.size, ctx.candidates.size), seed=ctx.seed,
        conditional=conditional, precision=ctx.cfg.train.precision, rhat=rhat,
    )
    ctx.log(f"  VAE/discriminator: {job.iterations} iterations")
    result = ctx.backend.train_vae(job, on_progress=lambda r: ctx.log(
        f"  vae it {r['iteration']}/{job.iterations} vae_loss {r['vae_loss']:.4f} disc_loss {r['disc_loss']:.4f}"))
    out = ctx.backend.score(DiscriminatorScorer(job, result), ctx.candidates, ctx.cfg.al.score_batch_size)
    scores = -out["logit"].astype(np.float64)  # lowest P(labeled) first
    info = {}
    if result.history:
        info = {"vae_loss": result.history[-1]["vae_loss"], "disc_loss": result.history[-1]["disc_loss"]}
    return QueryResult(select_top_k(scores, ctx.candidates, ctx.budget), scores,
                       {"vae": result.vae_state, "discriminator": result.disc_state}, info)


@STRATEGIES.register("vaal")
class VAALStrategy(Strategy):
    name = "vaal"
    direction = "lowest discriminator P(labeled) first"

    def query(self, ctx: QueryContext) -> QueryResult:
        return adversarial_query(ctx, conditional=False, vae_steps=2, kl="sum", rhat=None)
