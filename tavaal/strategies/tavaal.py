"""TA-VAAL (Kim et al. 2021): VAAL whose VAE and discriminator are conditioned on the ranker's predicted
loss r̂ (the ranker trained with the ranking loss, eq. 1–2): σ(r̂) into the decoder, raw r̂ into the
discriminator. Query the lowest P(labeled). Defaults from the official code: one VAE step, KL mean."""

from __future__ import annotations

import numpy as np

from tavaal.config import Config
from tavaal.data.base import ALData
from tavaal.registry import STRATEGIES
from tavaal.strategies.base import QueryContext, QueryResult, Strategy
from tavaal.strategies.scorers import task_scorer
from tavaal.strategies.vaal import adversarial_query, build_vae


@STRATEGIES.register("tavaal")
class TAVAALStrategy(Strategy):
    name = "tavaal"
    ranker_loss = "rank"
    direction = "lowest discriminator P(labeled | μ, r̂) first"

    def query(self, ctx: QueryContext) -> QueryResult:
        # r̂ is fixed for the stage (frozen ranker, unaugmented inputs): compute it once, reuse it in
        # VAE/discriminator training and in scoring.
        both = np.union1d(ctx.labeled, ctx.candidates)
        out = ctx.backend.score(task_scorer(ctx, "rhat"), both, ctx.score_batch_size)
        rhat = np.full(len(ctx.data.train), np.nan, dtype=np.float32)
        rhat[both] = out["rhat"]
        return adversarial_query(ctx, conditional=True, vae_steps=1, kl="mean", rhat=rhat)

    def build_models(self, cfg: Config, data: ALData) -> None:
        build_vae(cfg, data, conditional=True)
