"""Losses of TA-VAAL and its baselines; every function returns a scalar tensor (``per_sample_task_loss``: ``[B]``).

Pairing (LL4AL and TA-VAAL): a batch of B samples (B even) is split into pairs (i, B-1-i), i < B/2;
with a shuffled loader these are random pairs. Targets (the per-sample task loss) are detached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tavaal.data.base import IGNORE_INDEX


def per_sample_task_loss(logits: Tensor, y: Tensor) -> Tensor:
    """The task loss of each sample ``[B]``: the ranker's target and, averaged, the task model's loss.

    Classification: cross-entropy of ``logits [B, C]`` against ``y [B]``. Segmentation (``logits [B, C, H, W]``,
    ``y [B, H, W]``): the mean pixel cross-entropy over the image's pixels that are not ``IGNORE_INDEX`` (0 for
    an image with none).
    """
    if logits.dim() == 2:
        return F.cross_entropy(logits, y, reduction="none")
    ce = F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX, reduction="none")  # [B, H, W], 0 where ignored
    valid = (y != IGNORE_INDEX).flatten(1).sum(1)
    return ce.flatten(1).sum(1) / valid.clamp(min=1)


def _pair_differences(pred: Tensor, target: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """``(pred_i - pred_j, target_i - target_j)`` for j = B-1-i, i < B/2; target detached."""
    if pred.dim() != 1 or pred.shape != target.shape:
        raise ValueError(f"{name}: pred and target must both be [B], got {tuple(pred.shape)} and {tuple(target.shape)}")
    b = pred.shape[0]
    if b % 2 != 0 or b == 0:
        raise ValueError(
            f"{name}: the batch size must be even and > 0 to form pairs (i, B-1-i), got B={b}; "
            "drop the last sample (drop_last) or use an even batch size"
        )
    target = target.detach()
    return (pred - pred.flip(0))[: b // 2], (target - target.flip(0))[: b // 2]


def ranking_loss(pred: Tensor, target: Tensor) -> Tensor:
    """TA-VAAL's ranking loss (eq. 1): mean BCE(sigmoid(r_i - r_j), 1[l_i > l_j]).

    pred: predicted losses r_hat ``[B]``; target: true per-sample losses l ``[B]`` (detached here).
    """
    d, t = _pair_differences(pred, target, "ranking_loss")
    return F.binary_cross_entropy_with_logits(d, (t > 0).to(d.dtype))


def margin_loss(pred: Tensor, target: Tensor, margin: float = 1.0) -> Tensor:
    """LL4AL's loss-prediction loss: mean max(0, xi - s * (r_i - r_j)), s = +1 if l_i > l_j else -1."""
    d, t = _pair_differences(pred, target, "margin_loss")
    one = 2 * torch.sign(torch.clamp(t, min=0)) - 1
    return torch.clamp(margin - one * d, min=0).mean()


def kl_divergence(mu: Tensor, logvar: Tensor, reduction: str = "mean") -> Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) per element, reduced over all elements.

    ``reduction``: "mean" (official TA-VAAL code) or "sum" (official VAAL code).
    """
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())
    if reduction == "mean":
        return kl.mean()
    if reduction == "sum":
        return kl.sum()
    raise ValueError(f"kl_reduction must be 'mean' or 'sum', got {reduction!r}")


def vae_loss(
    x: Tensor, recon: Tensor, mu: Tensor, logvar: Tensor, beta: float = 1.0, kl_reduction: str = "mean"
) -> Tensor:
    """Reconstruction MSE (mean) + beta * KL (VAAL's transductive VAE loss, one batch)."""
    return F.mse_loss(recon, x) + beta * kl_divergence(mu, logvar, kl_reduction)


def vae_adversarial_loss(logits_labeled: Tensor, logits_unlabeled: Tensor) -> Tensor:
    """The VAE's adversarial term: make both batches look labeled, BCE(D(l), 1) + BCE(D(u), 1)."""
    return F.binary_cross_entropy_with_logits(
        logits_labeled, torch.ones_like(logits_labeled)
    ) + F.binary_cross_entropy_with_logits(logits_unlabeled, torch.ones_like(logits_unlabeled))


def discriminator_loss(logits_labeled: Tensor, logits_unlabeled: Tensor) -> Tensor:
    """The discriminator's loss: BCE(D(l), 1) + BCE(D(u), 0) on logits (P(labeled) = sigmoid)."""
    return F.binary_cross_entropy_with_logits(
        logits_labeled, torch.ones_like(logits_labeled)
    ) + F.binary_cross_entropy_with_logits(logits_unlabeled, torch.zeros_like(logits_unlabeled))
