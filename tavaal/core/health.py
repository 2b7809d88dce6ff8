"""Health of the adversarial game (VAAL, TA-VAAL) in one stage: is the discriminator doing better than chance,
does r̂ tell the labeled set from the candidates, and does the query follow r̂?

All numbers are plain functions of arrays, so a stage record (and MLflow) can show a collapsed game: a
discriminator loss at 2 ln 2 and a discriminator AUROC at 0.5 mean it learned nothing of labeled vs unlabeled.
"""

from __future__ import annotations

import math

import numpy as np

CHANCE_DISC_LOSS = 2 * math.log(2)  # BCE on labeled (target 1) + BCE on unlabeled (target 0) at p = 1/2


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting 1/2 (Mann-Whitney U / (n_pos · n_neg)); nan if
    either side is empty."""
    pos, neg = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    from scipy import stats  # here, not at the top: every run imports this module, and scipy.stats is slow to load

    # U of the first sample; "asymptotic" because only the statistic is used, not the (costly exact) p-value
    u = stats.mannwhitneyu(pos, neg, alternative="two-sided", method="asymptotic").statistic
    return float(u / (pos.size * neg.size))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two equal-length arrays (nan when either is constant or shorter than 2)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size != b.size:
        raise ValueError(f"spearman needs arrays of one length, got {a.size} and {b.size}")
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")  # undefined, and scipy would warn about it on every stage
    from scipy import stats

    return float(stats.spearmanr(a, b).statistic)


def game_health(
    disc_loss_tail: float | None,
    logit_labeled: np.ndarray,
    logit_candidates: np.ndarray,
    pick_counts: np.ndarray,
    rhat_labeled: np.ndarray | None = None,
    rhat_candidates: np.ndarray | None = None,
) -> dict:
    """One stage's health numbers (a StageRecord's ``health``).

    - ``disc_loss_tail``: the discriminator loss averaged over the last tenth of the iterations (chance:
      ``CHANCE_DISC_LOSS``, 1.386); ``disc_gap`` = chance minus it (0: the discriminator learned nothing).
    - ``disc_auroc``: P(D's logit of a labeled sample > a candidate's) with the scoring model (0.5: chance).
    - ``rhat_auroc`` (TA-VAAL): P(r̂ of a candidate > r̂ of a labeled sample): does the ranker tell them apart?
    - ``score_rhat_spearman`` (TA-VAAL): Spearman of the query score (−logit, higher = query first) with r̂ over
      the candidates: 1 means the query is the ranker's, 0 that r̂ plays no part.
    - ``pick_counts``: the picks' class counts ``[C]`` (segmentation: their pixels').
    """
    out: dict = {"disc_loss_tail": None if disc_loss_tail is None else float(disc_loss_tail)}
    out["disc_gap"] = None if disc_loss_tail is None else CHANCE_DISC_LOSS - float(disc_loss_tail)
    out["disc_auroc"] = auroc(logit_labeled, logit_candidates)
    if rhat_labeled is not None and rhat_candidates is not None:
        out["rhat_auroc"] = auroc(rhat_candidates, rhat_labeled)
        out["score_rhat_spearman"] = spearman(-np.asarray(logit_candidates, dtype=np.float64), rhat_candidates)
    out["pick_counts"] = [int(c) for c in pick_counts]
    return out


def format_health(h: dict) -> str:
    """The ``--verbose`` progress line of a stage's game health."""
    parts = []
    if h.get("disc_loss_tail") is not None:
        parts.append(f"disc_loss(last 10%) {h['disc_loss_tail']:.3f} (chance {CHANCE_DISC_LOSS:.3f})")
    parts.append(f"disc_auroc {h['disc_auroc']:.3f}")
    if "rhat_auroc" in h:
        parts.append(f"rhat_auroc {h['rhat_auroc']:.3f}  spearman(score, rhat) {h['score_rhat_spearman']:.3f}")
    parts.append(f"picks per class {h['pick_counts']}")
    return "  game: " + "  ".join(parts)
