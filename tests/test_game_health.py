"""The adversarial game's health numbers on hand-made inputs, the two BatchNorm modes of VAE scoring, the
discriminator-loss tail of a VAE job, and the health in a stage record and in MLflow's metric names."""

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tavaal.config import load_config
from tavaal.core.health import CHANCE_DISC_LOSS, auroc, game_health, spearman
from tavaal.core.vae_training import VAEJob, VAEResult, VAETraining, train_vae
from tavaal.models import VAE
from tavaal.strategies import QueryContext, build_strategy
from tavaal.strategies.scorers import DiscriminatorScorer, batch_statistics
from tavaal.tracking.metrics import stage_metrics

from conftest import trained_stage

ROOT = Path(__file__).resolve().parents[1]
CFG = load_config("configs/smoke.yaml", ["train.epochs=1", "vae.iterations=10"])


# ---------------------------------------------------------------- known answers


def test_auroc_with_ties_counts_each_tied_pair_half():
    # ranks with ties are scipy's now (the hand-written average_ranks is gone): a tied pair counts 1/2
    assert auroc(np.array([3.0, 1.0]), np.array([3.0, 2.0])) == pytest.approx((0.5 + 1 + 0 + 0) / 4)


@pytest.mark.parametrize(
    "pos,neg,expected",
    [
        ([3, 4, 5], [0, 1, 2], 1.0),  # every positive above every negative
        ([0, 1], [2, 3], 0.0),
        ([1, 1], [1, 1], 0.5),  # all ties: chance
        ([2, 0], [1], 0.5),  # one pair above, one below
        ([1, 3], [1, 2], 0.625),  # pairs: (1,1) tie 1/2, (1,2) 0, (3,1) 1, (3,2) 1 -> 2.5 / 4
    ],
)
def test_auroc_known_values(pos, neg, expected):
    assert auroc(np.array(pos), np.array(neg)) == pytest.approx(expected)


def test_auroc_of_an_empty_side_is_nan():
    assert math.isnan(auroc(np.array([]), np.array([1.0])))


@pytest.mark.parametrize(
    "a,b,expected",
    [
        ([1, 2, 3, 4], [10, 20, 30, 40], 1.0),
        ([1, 2, 3, 4], [4, 3, 2, 1], -1.0),
        ([1, 2, 3, 4, 5], [5, 6, 7, 8, 7], 0.8207826816681233),  # tie in b: scipy.stats.spearmanr's value
        ([1, 2, 3], [2, 2, 2], float("nan")),  # constant: undefined
    ],
)
def test_spearman_known_values(a, b, expected):
    got = spearman(np.array(a, dtype=float), np.array(b, dtype=float))
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


def test_game_health_from_hand_made_scores():
    h = game_health(
        1.0,
        logit_labeled=np.array([2.0, 3.0]),
        logit_candidates=np.array([0.0, 1.0, 4.0]),
        pick_counts=np.array([1, 0, 2]),
        rhat_labeled=np.array([0.0, 0.1]),
        rhat_candidates=np.array([1.0, 0.5, 0.05]),
    )
    assert h["disc_loss_tail"] == 1.0 and h["disc_gap"] == pytest.approx(CHANCE_DISC_LOSS - 1.0)
    assert h["disc_auroc"] == pytest.approx(4 / 6)  # labeled above candidates in 4 of 6 pairs
    assert h["rhat_auroc"] == pytest.approx(5 / 6)  # candidates' r̂ above the labeled set's in 5 of 6
    # query score = -logit: [0, -1, -4]; r̂ [1, 0.5, 0.05]: the same order -> 1
    assert h["score_rhat_spearman"] == pytest.approx(1.0)
    assert h["pick_counts"] == [1, 0, 2]
    vaal = game_health(None, np.array([1.0]), np.array([0.0]), np.array([1]))
    assert "rhat_auroc" not in vaal and vaal["disc_loss_tail"] is None and vaal["disc_auroc"] == 1.0


# ---------------------------------------------------------------- BatchNorm modes


def _vae_with_running_stats() -> tuple[VAE, torch.Tensor]:
    torch.manual_seed(0)
    vae = VAE((1, 32, 32), latent_dim=4, base_channels=4)
    x = torch.rand(32, 1, 32, 32)
    vae.train()
    with torch.no_grad():
        for _ in range(20):  # running statistics of this data
            vae.encode(x)
    return vae.eval(), x


def test_batch_statistics_are_blind_to_a_shift_that_running_statistics_see():
    """Labeled and candidate batches that differ by a constant: with each batch normalized by its own statistics
    μ barely moves (exactly not at all for a constant gain; a shift is constant after the first convolution except
    where its zero padding reaches, hence "barely"); with the running statistics it moves."""
    vae, x = _vae_with_running_stats()

    def mu(batch, on):
        with torch.no_grad(), batch_statistics(vae, on):
            return vae.encode(batch)[0]

    for other in (x + 2.0, x * 3.0):
        running = (mu(other, False) - mu(x, False)).abs().mean().item()
        batch = (mu(other, True) - mu(x, True)).abs().mean().item()
        assert running > 0.4 and batch < 0.2 * running, (running, batch)
    gain = (mu(x * 3.0, True) - mu(x, True)).abs().max().item()
    assert gain < 1e-4  # conv without bias then BN: a positive gain cancels exactly (up to BN's eps)
    buffers = [m.running_mean.clone() for m in vae.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    mu(x + 5.0, True)  # batch mode leaves the running statistics and the module's mode as they were
    after = [m.running_mean for m in vae.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(buffers, after)) and not vae.training


def test_discriminator_scorer_bn_modes_on_a_shifted_batch():
    vae, x = _vae_with_running_stats()
    v = dataclasses.replace(CFG.vae, latent_dim=4, base_channels=4, vae_steps=2, kl_reduction="sum")
    job = VAEJob((1, 32, 32), v, np.arange(4), np.arange(4), 1, 0, False)
    disc = job.build(seed=1)[1]
    result = VAEResult(vae.state_dict(), disc.state_dict())
    logits = {}
    for mode in ("running", "batch"):
        scorer = DiscriminatorScorer(dataclasses.replace(job, vae=dataclasses.replace(v, score_bn=mode)), result)
        scorer.setup(torch.device("cpu"))
        idx = np.arange(32)
        logits[mode] = (scorer(x, idx)["logit"], scorer(x * 3.0, idx)["logit"])
    run_l, run_u = logits["running"]
    bat_l, bat_u = logits["batch"]
    assert (run_u - run_l).abs().mean() > 0.1
    torch.testing.assert_close(bat_u, bat_l, atol=1e-3, rtol=1e-3)


@pytest.fixture(scope="module")
def stage():
    return trained_stage(CFG, 120)


@pytest.mark.parametrize("name", ["vaal", "tavaal"])
def test_both_bn_modes_select_validly_and_differently(stage, name):
    data, pool, cand, spec, local, tasks = stage
    picks = {}
    for mode in ("running", "batch"):
        cfg = dataclasses.replace(CFG, vae=dataclasses.replace(CFG.vae, score_bn=mode))
        strategy = build_strategy(name)
        result = strategy.query(
            QueryContext(
                cfg, data, local, spec, tasks[strategy.ranker_loss], pool.labeled_indices(), cand, 40, stage=0, seed=5
            )
        )
        assert result.selected.size == 40 and np.unique(result.selected).size == 40
        assert np.isin(result.selected, cand).all()
        h = result.health
        assert sum(h["pick_counts"]) == 40 and 0.0 <= h["disc_auroc"] <= 1.0
        assert h["disc_loss_tail"] is not None and result.info["score_bn"] == mode
        assert ("rhat_auroc" in h) == (name == "tavaal")
        picks[mode] = set(result.selected.tolist())
    assert picks["running"] != picks["batch"]  # the same trained VAE, scored two ways


# ---------------------------------------------------------------- the discriminator-loss tail


def test_disc_loss_tail_is_the_mean_of_the_last_tenth(stage):
    data, pool, cand, *_ = stage
    v = dataclasses.replace(CFG.vae, vae_steps=1, kl_reduction="sum")
    job = VAEJob(data.input_shape, v, pool.labeled_indices(), cand, 25, 0, False)
    result = train_vae(job, data, torch.device("cpu"), log_every=1)
    losses = [r["disc_loss"] for r in result.history]
    assert len(losses) == 25
    assert result.disc_loss_tail == pytest.approx(np.mean(losses[-3:]))  # ceil(25 / 10) = 3 iterations
    # survives a resume: a job stopped after 23 iterations and continued gives the same tail over its last 3
    trainer = VAETraining(job, torch.device("cpu")).bind(data)
    for _ in range(23):
        trainer.step()
    state = trainer.state_dict()
    again = VAETraining(job, torch.device("cpu"))
    again.load_state_dict(state, data)
    tail = [again.step()["disc_loss"] for _ in range(2)]
    assert again.disc_loss_tail() == pytest.approx((state["disc_tail"][0] + sum(tail)) / 3)


# ---------------------------------------------------------------- the record and MLflow


def test_stage_metrics_carry_the_game_under_game_prefix():
    rec = {
        "stage": 1,
        "num_labeled": 10,
        "accuracy": 0.5,
        "balanced_accuracy": 0.5,
        "label_entropy": 1.0,
        "label_entropy_norm": 0.5,
        "train_accuracy": 0.99,
        "health": {
            "disc_loss_tail": 1.38,
            "disc_gap": 0.006,
            "disc_auroc": 0.51,
            "rhat_auroc": 0.6,
            "score_rhat_spearman": 0.2,
            "pick_counts": [3, 0, 7],
        },
    }
    m = stage_metrics(rec)
    assert m["game/disc_loss_tail"] == 1.38 and m["game/disc_auroc"] == 0.51 and m["game/rhat_auroc"] == 0.6
    assert m["game/score_rhat_spearman"] == 0.2 and m["game/disc_gap"] == 0.006
    assert [m[f"game/picks_class_{c}"] for c in range(3)] == [3.0, 0.0, 7.0]
    assert m["train/accuracy"] == 0.99
    assert not any(k.startswith("game/") for k in stage_metrics({**rec, "health": {}}))


@pytest.mark.slow
def test_diagnosis_script_honours_every_set(tmp_path):
    out = tmp_path / "diag.md"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.tavaal_diagnosis",
            "--config",
            "configs/smoke.yaml",
            "--protocol",
            "none",
            "--strategies",
            "tavaal",
            "--set",
            "al.stages=3",
            "--set",
            "vae.iterations=6",
            "--set",
            "vae.vae_steps=3",
            "--set",
            "vae.kl_reduction=sum",
            "--set",
            "train.epochs=1",
            "--set",
            "data.imbalance_ratio=2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = out.read_text()
    for mode in ("running", "batch"):  # both BN modes, each with the --set schedule, not the strategy's default
        part = md.split(f"### tavaal, score_bn {mode}, seed 0", 1)[1].split("###", 1)[0]
        assert "vae_steps 3, kl_reduction sum, 6 iterations, score_bn " + mode in part
        rows = [line for line in part.splitlines() if line.startswith("| ") and line[2].isdigit()]
        assert [r.split(" | ")[0] for r in rows] == ["| 0", "| 1", "| 2"]  # every stage, both query stages filled
        assert all("—" not in r.split(" | ")[4] for r in rows[:2]) and " — " in rows[2]
        share = [float(r.strip(" |").split(" | ")[-1]) for r in rows[:2]]  # the picks' minority share (even classes)
        assert all(0.0 <= v <= 1.0 for v in share)
