"""Random sampling: K candidates uniformly at random, without replacement (the official code draws
with replacement, which can pick a sample twice: a bug we do not copy)."""

from __future__ import annotations

from tavaal.core.seeding import numpy_rng
from tavaal.registry import STRATEGIES
from tavaal.strategies.base import QueryContext, QueryResult, Strategy


@STRATEGIES.register("random")
class RandomStrategy(Strategy):
    name = "random"
    direction = "uniform at random, without replacement"

    def query(self, ctx: QueryContext) -> QueryResult:
        rng = numpy_rng(ctx.seed, "random-query")
        k = min(ctx.budget, ctx.candidates.size)
        return QueryResult(rng.choice(ctx.candidates, size=k, replace=False))
