"""Core-set (Sener & Savarese 2018): k-center greedy on the task model's embedding, starting from the
labeled set's embeddings; each pick is the candidate farthest from every chosen center."""

from __future__ import annotations

from tavaal.core.selection import k_center_greedy
from tavaal.registry import STRATEGIES
from tavaal.strategies.base import QueryContext, QueryResult, Strategy
from tavaal.strategies.scorers import task_scorer


@STRATEGIES.register("coreset")
class CoresetStrategy(Strategy):
    name = "coreset"
    direction = "farthest from the labeled set and earlier picks (k-center greedy on embeddings)"

    def query(self, ctx: QueryContext) -> QueryResult:
        scorer = task_scorer(ctx, "embedding")
        bs = ctx.score_batch_size
        lab = ctx.backend.score(scorer, ctx.labeled, bs)["embedding"]
        cand = ctx.backend.score(scorer, ctx.candidates, bs)["embedding"]
        picks = k_center_greedy(lab, cand, ctx.budget)
        return QueryResult(ctx.candidates[picks])
