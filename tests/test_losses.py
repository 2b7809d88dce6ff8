"""Known-answer tests for tavaal.losses: expected values are derived by hand with math.log/exp."""

import math

import pytest
import torch

from tavaal.losses import (
    discriminator_loss,
    kl_divergence,
    margin_loss,
    ranking_loss,
    vae_adversarial_loss,
    vae_loss,
)


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


# B = 4: pairs (0, 3) and (1, 2).
# pair (0, 3): d = 2 - (-1) = 3,    target 3.0 > 0.5 -> y = 1 (pred agrees)
# pair (1, 2): d = 0.5 - 1 = -0.5,  target 2.5 > 2.0 -> y = 1 (pred disagrees)
PRED = torch.tensor([2.0, 0.5, 1.0, -1.0])
TARGET = torch.tensor([3.0, 2.5, 2.0, 0.5])


def test_ranking_loss_known_answer():
    # BCE(sigmoid(d), 1) = -log sigmoid(d) = softplus(-d)
    expected = (softplus(-3.0) + softplus(0.5)) / 2
    assert ranking_loss(PRED, TARGET).item() == pytest.approx(expected, rel=1e-6)


def test_ranking_loss_label_zero_and_ties():
    # target_i < target_j -> y = 0: BCE(sigmoid(d), 0) = softplus(d); a tie also gives y = 0
    pred = torch.tensor([1.0, 0.25, 0.0, -2.0])
    target = torch.tensor([0.1, 1.0, 1.0, 0.7])  # pair (0,3): 0.1 < 0.7; pair (1,2): tie
    expected = (softplus(3.0) + softplus(0.25)) / 2
    assert ranking_loss(pred, target).item() == pytest.approx(expected, rel=1e-6)


def test_margin_loss_known_answer():
    # one = +1 for both pairs; hinge max(0, 1 - d): pair (0,3) -> 0, pair (1,2) -> 1.5
    assert margin_loss(PRED, TARGET).item() == pytest.approx(0.75, rel=1e-6)
    assert margin_loss(PRED, TARGET, margin=2.0).item() == pytest.approx((0.0 + 2.5) / 2, rel=1e-6)


def test_margin_loss_tie_counts_as_negative_like_ll4al():
    # LL4AL: one = 2 * sign(clamp(0, min=0)) - 1 = -1 on a tie -> hinge max(0, 1 + d)
    pred = torch.tensor([0.5, 9.0, -9.0, 0.0])
    target = torch.tensor([1.0, 5.0, 0.0, 1.0])  # pair (0,3): tie; pair (1,2): 5 > 0, d = 18
    assert margin_loss(pred, target).item() == pytest.approx((1.5 + 0.0) / 2, rel=1e-6)


@pytest.mark.parametrize("loss_fn", [ranking_loss, margin_loss])
def test_pair_losses_reject_odd_batches(loss_fn):
    with pytest.raises(ValueError, match="even"):
        loss_fn(torch.zeros(5), torch.zeros(5))


@pytest.mark.parametrize("loss_fn", [ranking_loss, margin_loss])
def test_pair_losses_reject_mismatched_shapes(loss_fn):
    with pytest.raises(ValueError, match=r"\[B\]"):
        loss_fn(torch.zeros(4, 1), torch.zeros(4))


@pytest.mark.parametrize("loss_fn", [ranking_loss, margin_loss])
def test_pair_losses_are_lower_when_pred_orders_like_target(loss_fn):
    torch.manual_seed(0)
    target = torch.rand(64) * 3
    assert loss_fn(target, target).item() < loss_fn(-target, target).item()


@pytest.mark.parametrize("loss_fn", [ranking_loss, margin_loss])
def test_pair_losses_detach_the_target(loss_fn):
    pred = PRED.clone().requires_grad_(True)
    target = TARGET.clone().requires_grad_(True)
    loss_fn(pred, target).backward()
    assert target.grad is None
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_ranking_loss_is_stable_for_large_differences():
    pred = torch.tensor([200.0, 0.0, 0.0, -200.0])
    target = torch.tensor([0.0, 1.0, 1.0, 1.0])  # pair (0,3) is wrong by d = 400
    assert ranking_loss(pred, target).item() == pytest.approx((400.0 + math.log(2)) / 2, rel=1e-6)


MU = torch.tensor([[1.0, 0.0], [0.5, -1.0]])
LOGVAR = torch.tensor([[0.0, math.log(2.0)], [-1.0, 0.0]])


def kl_elements() -> list[float]:
    return [
        -0.5 * (1 + lv - m * m - math.exp(lv)) for m, lv in [(1.0, 0.0), (0.0, math.log(2.0)), (0.5, -1.0), (-1.0, 0.0)]
    ]


def test_kl_divergence_known_answer_mean_and_sum():
    elems = kl_elements()  # 0.5, (2 - 1 - log 2) / 2, (0.25 + e^-1) / 2, 0.5
    assert kl_divergence(MU, LOGVAR, "sum").item() == pytest.approx(sum(elems), rel=1e-6)
    assert kl_divergence(MU, LOGVAR, "mean").item() == pytest.approx(sum(elems) / 4, rel=1e-6)


def test_kl_sum_is_mean_times_element_count():
    torch.manual_seed(0)
    mu, logvar = torch.randn(8, 32), torch.randn(8, 32)
    total = kl_divergence(mu, logvar, "sum")
    assert total.item() == pytest.approx(kl_divergence(mu, logvar, "mean").item() * 8 * 32, rel=1e-5)
    assert kl_divergence(torch.zeros(3, 4), torch.zeros(3, 4), "sum").item() == 0.0  # KL(N(0,1) || N(0,1))


def test_kl_rejects_unknown_reduction():
    with pytest.raises(ValueError, match="kl_reduction"):
        kl_divergence(MU, LOGVAR, "batchmean")


def test_vae_loss_known_answer():
    x = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    recon = torch.tensor([[1.5, 2.0], [1.0, -1.0]])  # squared errors 0.25, 0, 1, 0 -> MSE 0.3125
    mse = 1.25 / 4
    elems = kl_elements()
    assert vae_loss(x, recon, MU, LOGVAR).item() == pytest.approx(mse + sum(elems) / 4, rel=1e-6)
    got = vae_loss(x, recon, MU, LOGVAR, beta=2.0, kl_reduction="sum").item()
    assert got == pytest.approx(mse + 2.0 * sum(elems), rel=1e-6)


LOGITS_L = torch.tensor([0.0, 2.0])
LOGITS_U = torch.tensor([-1.0, 3.0])


def test_vae_adversarial_loss_known_answer():
    # BCE(sigmoid(l), 1) = softplus(-l): the VAE wants both batches to look labeled
    expected = (softplus(0.0) + softplus(-2.0)) / 2 + (softplus(1.0) + softplus(-3.0)) / 2
    assert vae_adversarial_loss(LOGITS_L, LOGITS_U).item() == pytest.approx(expected, rel=1e-6)


def test_discriminator_loss_known_answer():
    # labeled -> 1: softplus(-l); unlabeled -> 0: BCE(sigmoid(u), 0) = softplus(u)
    expected = (softplus(0.0) + softplus(-2.0)) / 2 + (softplus(-1.0) + softplus(3.0)) / 2
    assert discriminator_loss(LOGITS_L, LOGITS_U).item() == pytest.approx(expected, rel=1e-6)


def test_adversarial_losses_pull_in_opposite_directions_on_unlabeled_logits():
    u = LOGITS_U.clone().requires_grad_(True)
    vae_adversarial_loss(LOGITS_L, u).backward()
    vae_grad = u.grad.clone()
    u.grad = None
    discriminator_loss(LOGITS_L, u).backward()
    assert (vae_grad < 0).all() and (u.grad > 0).all()  # VAE raises P(labeled) of U, D lowers it


def test_adversarial_losses_are_finite_for_saturated_logits():
    big = torch.tensor([100.0, -100.0])
    assert torch.isfinite(discriminator_loss(big, big)) and torch.isfinite(vae_adversarial_loss(big, big))
    assert discriminator_loss(big, big).item() == pytest.approx((100.0 + 100.0) / 2, rel=1e-6)
