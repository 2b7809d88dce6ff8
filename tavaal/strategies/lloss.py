"""Learning loss (Yoo & Kweon 2019): a ranker trained beside the task model predicts each sample's loss;
query the highest predicted loss. ``lloss`` trains it with LL4AL's margin loss, ``lloss_rank`` with
TA-VAAL's ranking loss (eq. 1; the paper's "learning loss v2")."""

from __future__ import annotations

from tavaal.core.selection import select_top_k
from tavaal.registry import STRATEGIES
from tavaal.strategies.base import QueryContext, QueryResult, Strategy
from tavaal.strategies.scorers import task_scorer


class _PredictedLoss(Strategy):
    direction = "highest predicted loss first"

    def query(self, ctx: QueryContext) -> QueryResult:
        out = ctx.backend.score(task_scorer(ctx, "rhat"), ctx.candidates, ctx.score_batch_size)
        scores = out["rhat"]
        return QueryResult(select_top_k(scores, ctx.candidates, ctx.budget), scores)


@STRATEGIES.register("lloss")
class LearningLossStrategy(_PredictedLoss):
    name = "lloss"
    ranker_loss = "margin"


@STRATEGIES.register("lloss_rank")
class LearningLossRankStrategy(_PredictedLoss):
    name = "lloss_rank"
    ranker_loss = "rank"
