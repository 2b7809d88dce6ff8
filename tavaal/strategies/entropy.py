"""Max-entropy uncertainty sampling: query the candidates whose softmax entropy is highest."""

from __future__ import annotations

from tavaal.core.selection import select_top_k
from tavaal.registry import STRATEGIES
from tavaal.strategies.base import QueryContext, QueryResult, Strategy
from tavaal.strategies.scorers import task_scorer


@STRATEGIES.register("entropy")
class EntropyStrategy(Strategy):
    name = "entropy"
    direction = "highest predictive entropy first"

    def query(self, ctx: QueryContext) -> QueryResult:
        out = ctx.backend.score(task_scorer(ctx, "entropy"), ctx.candidates, ctx.score_batch_size)
        scores = out["entropy"]
        return QueryResult(select_top_k(scores, ctx.candidates, ctx.budget), scores)
