"""Every registered strategy on a really trained tiny model, and the query direction of each."""

import dataclasses

import numpy as np
import pytest
import torch

from tavaal.config import load_config
from tavaal.core.vae_training import VAEResult
from tavaal.registry import STRATEGIES
from tavaal.strategies import QueryContext, build_strategy
from tavaal.strategies.scorers import TaskScorer

from conftest import trained_stage

CFG = load_config("configs/smoke.yaml", ["train.epochs=1", "vae.iterations=3"])


@pytest.fixture(scope="module")
def setup():
    return trained_stage(CFG, 120)


def _ctx(setup, strategy, backend=None, budget=16):
    data, pool, cand, spec, local, tasks = setup
    return QueryContext(
        CFG,
        data,
        backend or local,
        spec,
        tasks[strategy.ranker_loss],
        pool.labeled_indices(),
        cand,
        budget,
        stage=0,
        seed=5,
    )


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_strategy_selects_distinct_candidates_of_budget_size(setup, name):
    strategy = build_strategy(name)
    result = strategy.query(_ctx(setup, strategy))
    cand = setup[2]
    assert result.selected.size == 16
    assert np.unique(result.selected).size == 16
    assert np.isin(result.selected, cand).all()
    if result.scores is not None:
        assert result.scores.shape == cand.shape and np.isfinite(result.scores).all()
    again = strategy.query(_ctx(setup, strategy))
    assert again.selected.tolist() == result.selected.tolist()  # deterministic for a seed


class FakeBackend:
    """Scores every sample as its index (``rhat``, ``entropy``) or its index as discriminator logit."""

    def train_vae(self, job, on_progress=None):
        return VAEResult({}, {}, [])

    def score(self, scorer, indices, batch_size):
        idx = np.asarray(indices, dtype=np.float32)
        if isinstance(scorer, TaskScorer):
            return {scorer.kind: idx if scorer.kind != "embedding" else idx[:, None]}
        return {"logit": idx, "p_labeled": 1 / (1 + np.exp(-idx))}


@pytest.mark.parametrize(
    "name,expect",
    [
        ("entropy", "highest"),
        ("lloss", "highest"),
        ("lloss_rank", "highest"),
        ("vaal", "lowest"),
        ("tavaal", "lowest"),
    ],
)
def test_query_direction(setup, name, expect):
    """With score = index: entropy and learning loss take the highest, (TA-)VAAL the lowest P(labeled)."""
    strategy = build_strategy(name)
    cand = setup[2]
    sel = np.sort(strategy.query(_ctx(setup, strategy, FakeBackend(), budget=5)).selected)
    want = np.sort(cand)[-5:] if expect == "highest" else np.sort(cand)[:5]
    assert sel.tolist() == want.tolist()


def test_coreset_direction_picks_far_points_first(setup):
    """With 1-D embeddings = index, the first pick is the candidate farthest from the labeled set."""
    strategy = build_strategy("coreset")
    data, pool, cand, *_ = setup
    sel = strategy.query(_ctx(setup, strategy, FakeBackend(), budget=3)).selected
    lab = pool.labeled_indices()
    dist = np.abs(cand[:, None] - lab[None, :]).min(1)
    assert sel[0] == cand[np.argmax(dist)]


def test_random_is_without_replacement_and_seeded(setup):
    strategy = build_strategy("random")
    cand = setup[2]
    a = strategy.query(_ctx(setup, strategy, budget=120)).selected
    assert sorted(a.tolist()) == sorted(cand.tolist())  # all of them, none twice
    b = strategy.query(dataclasses.replace(_ctx(setup, strategy, budget=10), seed=6)).selected
    assert b.tolist() != a[:10].tolist()


def test_entropy_scorer_matches_softmax_entropy(setup):
    data, pool, cand, spec, backend, tasks = setup
    out = backend.score(TaskScorer(spec, tasks[None], "entropy"), cand[:8], 4)
    logits = backend.score(TaskScorer(spec, tasks[None], "logits"), cand[:8], 8)["logits"]
    p = torch.softmax(torch.from_numpy(logits).double(), 1)
    expected = -(p * p.log()).sum(1).numpy()
    np.testing.assert_allclose(out["entropy"], expected, rtol=1e-4, atol=1e-5)


def test_tavaal_conditions_on_rhat(setup):
    """The conditional discriminator's scores change when r̂ changes (r̂ is really an input)."""
    from tavaal.core.vae_training import VAEJob, train_vae
    from tavaal.strategies.scorers import DiscriminatorScorer

    data, pool, cand, spec, backend, tasks = setup
    v = dataclasses.replace(CFG.vae, vae_steps=1, kl_reduction="mean")
    rhat = np.zeros(len(data.train), dtype=np.float32)
    job = VAEJob(data.input_shape, v, pool.labeled_indices(), cand, 3, 0, True, rhat=rhat)
    res = train_vae(job, data, torch.device("cpu"))
    s0 = backend.score(DiscriminatorScorer(job, res), cand[:16], 16)["logit"]
    job2 = dataclasses.replace(job, rhat=rhat + 5.0)
    s1 = backend.score(DiscriminatorScorer(job2, res), cand[:16], 16)["logit"]
    assert not np.allclose(s0, s1)
