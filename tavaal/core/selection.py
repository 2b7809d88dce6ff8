"""Turn per-candidate scores into a query: top-k (higher score = query first) or k-center greedy."""

from __future__ import annotations

import numpy as np
import torch


def select_top_k(scores: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` candidates with the highest scores; ties go to the lower index (deterministic).

    scores: float ``[M]`` aligned with ``candidates`` (absolute indices ``[M]``). Returns ``[k]`` indices.
    """
    scores = np.asarray(scores, dtype=np.float64)
    candidates = np.asarray(candidates)
    if scores.shape != candidates.shape:
        raise ValueError(f"scores {scores.shape} and candidates {candidates.shape} differ in shape")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinity")
    k = min(k, candidates.size)
    order = np.lexsort((candidates, -scores))  # last key is primary: score descending, then index
    return candidates[order[:k]]


def k_center_greedy(labeled: np.ndarray, candidates: np.ndarray, k: int, chunk: int = 4096) -> np.ndarray:
    """Core-set (Sener & Savarese): greedily pick the candidate farthest from all chosen centers.

    labeled: ``[L, D]`` embeddings of the labeled set (the initial centers); candidates: ``[M, D]``.
    Returns positions into ``candidates`` (``[k]``, in pick order).
    """
    cand = torch.as_tensor(np.asarray(candidates), dtype=torch.float32)
    lab = torch.as_tensor(np.asarray(labeled), dtype=torch.float32)
    k = min(k, cand.shape[0])
    min_dist = torch.full((cand.shape[0],), float("inf"))
    for start in range(0, lab.shape[0], chunk):
        min_dist = torch.minimum(min_dist, torch.cdist(cand, lab[start : start + chunk]).min(dim=1).values)
    picked = []
    for _ in range(k):
        j = int(torch.argmax(min_dist))  # first maximum: lowest position on ties
        picked.append(j)
        min_dist = torch.minimum(min_dist, torch.cdist(cand, cand[j : j + 1]).squeeze(1))
        min_dist[j] = -1.0
    return np.asarray(picked, dtype=np.int64)
