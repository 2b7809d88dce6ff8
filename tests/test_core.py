"""Pool state, selection, metrics, seeding, config: the pieces of the loop, on hand-made inputs."""

import math

import numpy as np
import pytest

from tavaal.config import Config, check_pool_size, load_config, parse_override
from tavaal.core.metrics import classification_metrics, label_counts, label_entropy
from tavaal.core.pool import PoolState, draw_candidates, initial_pool
from tavaal.core.seeding import derive_seed, numpy_rng
from tavaal.core.selection import k_center_greedy, select_top_k
from tavaal.errors import ConfigError


def test_pool_label_returns_new_state_and_refuses_double_labels():
    p0 = PoolState.empty(6)
    p1 = p0.label(np.array([1, 4]), 0)
    assert p0.num_labeled == 0 and p1.num_labeled == 2
    assert p1.labeled_at.tolist() == [-1, 0, -1, -1, 0, -1]
    p2 = p1.label(np.array([0]), 1)
    assert p2.labeled_in(1).tolist() == [0] and p2.unlabeled_indices().tolist() == [2, 3, 5]
    with pytest.raises(ValueError, match="already labeled"):
        p2.label(np.array([4]), 2)
    with pytest.raises(ValueError, match="duplicates"):
        p2.label(np.array([2, 2]), 2)
    with pytest.raises(ValueError):
        p2.label(np.array([6]), 2)
    assert PoolState.from_dict(p2.to_dict()).labeled_at.tolist() == p2.labeled_at.tolist()


def test_initial_pool_and_candidates_are_seeded_and_unlabeled():
    a = initial_pool(100, 10, numpy_rng(3, "initial"))
    b = initial_pool(100, 10, numpy_rng(3, "initial"))
    c = initial_pool(100, 10, numpy_rng(4, "initial"))
    assert a.labeled_indices().tolist() == b.labeled_indices().tolist() != c.labeled_indices().tolist()
    cand = draw_candidates(a, 30, numpy_rng(3, "candidates", 0))
    assert cand.size == 30 and np.unique(cand).size == 30 and (a.labeled_at[cand] == -1).all()
    assert draw_candidates(a, 1000, numpy_rng(0)).size == 90  # fewer unlabeled than M: all of them


def test_derive_seed_differs_by_key_and_is_stable():
    assert derive_seed(0, "stage", 1) == derive_seed(0, "stage", 1)
    assert len({derive_seed(0, "stage", s) for s in range(50)}) == 50
    assert derive_seed(0, "a") != derive_seed(1, "a")


def test_select_top_k_takes_highest_and_breaks_ties_by_index():
    cand = np.array([10, 11, 12, 13, 14])
    assert select_top_k(np.array([0.1, 0.9, 0.5, 0.9, 0.0]), cand, 3).tolist() == [11, 13, 12]
    # a fake scorer whose score is -index makes selection pick the lowest indices
    assert sorted(select_top_k(-cand.astype(float), cand, 2).tolist()) == [10, 11]
    with pytest.raises(ValueError, match="NaN"):
        select_top_k(np.array([np.nan, 1, 2, 3, 4]), cand, 2)


def test_k_center_greedy_picks_farthest_point_first():
    labeled = np.array([[0.0]])
    cand = np.array([[1.0], [5.0], [10.0], [9.0]])
    # 10 is farthest from 0; then 5 (distance 5 to both 0 and 10) beats 1 (1) and 9 (1)
    assert k_center_greedy(labeled, cand, 2).tolist() == [2, 1]


def test_label_entropy_known_values():
    h, hn = label_entropy(np.array([5, 5, 5, 5]))
    assert h == pytest.approx(math.log(4)) and hn == pytest.approx(1.0)
    h, hn = label_entropy(np.array([3, 1, 0, 0]))
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert h == pytest.approx(expected) and hn == pytest.approx(expected / math.log(4))
    assert label_entropy(np.array([7, 0, 0])) == (0.0, 0.0)
    targets = np.array([0, 1, 1, 2, 2, 2])
    assert label_counts(targets, np.array([1, 3, 4]), 4).tolist() == [0, 1, 2, 0]


def test_classification_metrics_balanced_accuracy():
    m = classification_metrics(np.array([0, 0, 0, 1]), np.array([0, 0, 0, 0 + 1]), 2)
    assert m["accuracy"] == 1.0
    m = classification_metrics(np.array([0, 0, 0, 0]), np.array([0, 0, 0, 1]), 2)
    assert m["accuracy"] == 0.75 and m["balanced_accuracy"] == 0.5 and m["per_class_accuracy"] == [1.0, 0.0]


def test_config_defaults_are_the_paper_protocol():
    cfg = Config()
    assert (cfg.al.initial, cfg.al.budget, cfg.al.stages, cfg.al.subset_size) == (1000, 1000, 10, 10_000)
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.momentum, cfg.train.weight_decay) == (200, 0.1, 0.9, 5e-4)
    assert cfg.train.milestones == (160,) and cfg.train.eta == 1.0 and cfg.train.ranker_stop_grad_epoch == 120
    preset = load_config("configs/cifar10_tavaal.yaml")
    assert preset.flat() == load_config(None, {"data.name": "cifar10"}).flat()


def test_config_overrides_and_validation():
    cfg = load_config("configs/smoke.yaml", ["train.lr=0.5", "al.strategy=random", "train.milestones=[1,2]"])
    assert cfg.train.lr == 0.5 and cfg.al.strategy == "random" and cfg.train.milestones == (1, 2)
    assert parse_override("vae.iterations=null") == ("vae.iterations", None)
    bad = [
        (["al.budget=-5"], "al.budget"),
        (["al.strategy=nope"], "unknown strategy 'nope'"),
        (["train.batch_size=7"], "train.batch_size"),
        (["train.lr=fast"], "train.lr"),
        (["train.nosuch=1"], "nosuch"),
        (["vae.kl_reduction=max"], "vae.kl_reduction"),
        (["data.imbalance_ratio=0.5"], "data.imbalance_ratio"),
    ]
    for overrides, needle in bad:
        with pytest.raises(ConfigError, match=needle.replace(".", r"\.")) as e:
            load_config("configs/smoke.yaml", overrides)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="exceed the pool"):
        check_pool_size(load_config("configs/smoke.yaml", ["al.stages=20"]), 512)
    with pytest.raises(ConfigError, match="not found"):
        load_config("configs/nope.yaml")
