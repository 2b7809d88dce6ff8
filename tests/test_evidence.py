"""Issue 28's evidence scripts: tavaal_diagnosis.py's r̂ permutation (does r̂ steer the picks?), toy_figure1.py's
measures of the picks on the two-moons toy set, and fixed_learner.py's retraining of a curves run's labeled sets
with one fixed learner; each on a case with a known answer, and each script on a tiny run."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import curves, fixed_learner, tavaal_diagnosis, toy_figure1
from tavaal.backends import LocalBackend
from tavaal.config import DataConfig, VAEConfig, from_dict
from tavaal.core.vae_training import VAEJob, VAEResult
from tavaal.data import build_dataset
from tavaal.data import toy2d as toy2d_module
from tavaal.strategies.scorers import DiscriminatorScorer

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- r̂ permutation (tavaal_diagnosis.py)

LATENT = 4


def hand_made_game(r_weight: float, conditional: bool = True) -> tuple[LocalBackend, DiscriminatorScorer, np.ndarray]:
    """A VAE and a discriminator built by hand on the toy pool: the discriminator's first layer reads μ with random
    weights and r̂ with ``r_weight`` (alone when the μ weights are zeroed below); 1,000 candidates, r̂ in [0.1, 1]."""
    data = build_dataset(DataConfig(name="toy2d", num_train=1100, num_test=10), seed=0)
    rhat = np.random.default_rng(0).uniform(0.1, 1.0, len(data.train)).astype(np.float32)
    job = VAEJob(
        input_shape=(2,),
        vae=VAEConfig(latent_dim=LATENT, base_channels=8, vae_steps=1, kl_reduction="mean", score_bn="running"),
        labeled=np.arange(100),
        unlabeled=np.arange(100, 1100),
        iterations=1,
        seed=7,
        conditional=conditional,
        rhat=rhat if conditional else None,
    )
    vae, disc = job.build(seed=0)
    if conditional:
        with torch.no_grad():
            first = disc.net[0]
            if r_weight:  # r̂ alone: one unit passes r̂ (> 0) through both ReLUs, the output reads that unit
                first.weight.zero_()
                first.bias.zero_()
                disc.net[2].weight.zero_()
                disc.net[2].bias.zero_()
                disc.net[4].weight.zero_()
                disc.net[4].bias.zero_()
                first.weight[0, LATENT] = r_weight
                disc.net[2].weight[0, 0] = 1.0
                disc.net[4].weight[0, 0] = 1.0
            else:  # μ with its random weights, nothing from r̂
                first.weight[:, LATENT] = 0.0
    backend = LocalBackend()
    backend.prepare(data, torch.device("cpu"))
    return backend, DiscriminatorScorer(job, VAEResult(vae.state_dict(), disc.state_dict())), job.unlabeled


def permutation(backend, scorer, candidates, budget: int) -> dict:
    logit = backend.score(scorer, candidates, 256)["logit"]
    return tavaal_diagnosis.permutation_change(scorer, candidates, logit, budget, backend, 256)


def test_permuting_rhat_changes_every_pick_when_the_discriminator_reads_only_rhat():
    backend, scorer, cand = hand_made_game(r_weight=1.0)
    out = permutation(backend, scorer, cand, budget=5)
    rhat = scorer.job.rhat
    # the known answer: P(labeled) rises with r̂ alone, so the picks are the 5 lowest r̂, before and after permuting
    assert set(out["picks"]) == set(cand[np.argsort(rhat[cand])[:5]])
    shuffled = tavaal_diagnosis.permuted_rhat(rhat, cand, scorer.job.seed)
    assert set(out["permuted_picks"]) == set(cand[np.argsort(shuffled[cand])[:5]])
    assert np.array_equal(np.sort(shuffled[cand]), np.sort(rhat[cand]))  # a permutation among the candidates
    assert np.array_equal(shuffled[:100], rhat[:100])  # the labeled samples keep theirs
    assert out["changed"] == 1.0 and out["chance"] == pytest.approx(1 - 5 / 1000)


@pytest.mark.parametrize("conditional", [True, False], ids=["zero-weight-on-rhat", "vaal-unconditional"])
def test_permuting_rhat_changes_no_pick_when_the_discriminator_ignores_it(conditional):
    backend, scorer, cand = hand_made_game(r_weight=0.0, conditional=conditional)
    out = permutation(backend, scorer, cand, budget=20)
    assert out["changed"] == 0.0 and np.array_equal(out["picks"], out["permuted_picks"])


def test_diagnosis_reports_the_permutation_and_picks_as_a_plain_run():
    from tavaal.config import load_config
    from tavaal.experiment import run_experiment

    sets = ["al.stages=2", "train.epochs=1", "vae.iterations=4", "num_threads=1", "vae.score_bn=batch"]
    lines, records = tavaal_diagnosis.diagnose("configs/smoke.yaml", [*sets, "al.strategy=tavaal"], log=lambda m: 0)
    plain = run_experiment(load_config(ROOT / "configs/smoke.yaml", [*sets, "al.strategy=tavaal"]), log=lambda m: 0)
    assert [r["selected"] for r in records] == [r.selected for r in plain]  # the second scoring only looks
    head = next(i for i, line in enumerate(lines) if line.startswith("| stage"))
    assert "picks changed, r̂ permuted" in lines[head].split(" | ")[-2]
    rows = lines[head + 2 :]
    assert 0.0 <= float(rows[0].split(" | ")[-2]) <= 1.0 and rows[1].split(" | ")[-2] == "—"  # last stage: no query
    assert "0.80 on average" in "\n".join(lines)  # 1 - 40/200: the smoke preset's budget and candidates
    vaal = tavaal_diagnosis.diagnose("configs/smoke.yaml", [*sets, "al.strategy=vaal"], log=lambda m: 0)[0]
    row = next(line for line in vaal if line.startswith("| 0 |"))
    assert row.split(" | ")[-2] == "0.00" and "0 by construction" in "\n".join(vaal)


# ---------------------------------------------------------------- toy measures (toy_figure1.py)


def test_toy_measures_on_a_straight_line_boundary():
    xs, ys = np.linspace(-1, 1, 41), np.linspace(-1, 1, 37)
    gx, gy = np.meshgrid(xs, ys)
    boundary = toy_figure1.zero_crossings(gy - 0.3 + 0 * gx, xs, ys)  # the line y = 0.3, between grid rows
    assert boundary.size and np.allclose(boundary[:, 1], 0.3)
    d = np.array([0.0, 0.05, 0.2, 0.45])
    points = np.stack([np.array([-0.5, 0.0, 0.25, 0.5]), 0.3 + d * np.array([1, -1, 1, -1])], 1)
    assert np.allclose(toy_figure1.distance_to(points, boundary), d, atol=1e-12)
    # three points on a line, 1 and 2 apart: nearest-neighbour distances 1, 1, 2
    assert toy_figure1.nn_spread(np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])) == pytest.approx(4 / 3)
    assert toy_figure1.nn_spread(np.array([[0.0, 0.0], [0.0, 0.5], [2.0, 0.0], [2.0, 0.5]])) == pytest.approx(0.5)


def test_toy_boundary_comes_from_toy2ds_generating_process(monkeypatch):
    # without the noise, toy2d's points lie on the centre curves the boundary is computed from
    monkeypatch.setattr(toy2d_module, "NOISE", 0.0)
    x, y = toy2d_module.moons((300, 300), np.random.default_rng(0))
    for c, curve in enumerate(toy_figure1.centre_curves(5000)):
        assert toy_figure1.distance_to(x[y == c].astype(np.float64), curve).max() < 1e-3
    # the moons are point-symmetric about (0.5, 0.25): with equal priors the log ratio is odd about that point,
    # so (0.5, 0.25) is on the balanced boundary; the pool's 10:1 prior adds log 10 everywhere
    pts = np.random.default_rng(1).uniform(-1, 2, (50, 2))
    bal = toy_figure1.log_ratio(pts, (1.0, 1.0), 0.15)
    assert np.allclose(bal, -toy_figure1.log_ratio(np.array([1.0, 0.5]) - pts, (1.0, 1.0), 0.15), atol=1e-9)
    assert toy_figure1.log_ratio(np.array([[0.5, 0.25]]), (1.0, 1.0), 0.15)[0] == pytest.approx(0.0, abs=1e-9)
    assert np.allclose(toy_figure1.log_ratio(pts, (10.0, 1.0), 0.15), bal + np.log(10.0))


def test_toy_figure1_smoke(tmp_path):
    args = ["--smoke", "--seeds", "1", "--strategies", "random", "tavaal", "--jobs", "1"]
    assert toy_figure1.main([*args, "--out", str(tmp_path), "--name", "t"]) == 0
    md = (tmp_path / "t.md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in md.splitlines() if line.startswith("| ")}
    for s in ("random", "tavaal"):
        cells = rows[s].strip(" |").split(" | ")
        assert cells[1] == "1" and len(cells) == 2 + len(toy_figure1.MEASURES)
        assert 0 <= float(cells[2].split(" ± ")[0]) < 2 and 0 < float(cells[4].split(" ± ")[0]) < 4
    assert "tavaal − random" in md and "one seed: no interval" in md
    assert (tmp_path / "t" / "figure1.png").read_bytes()[:4] == b"\x89PNG"
    raw = json.loads((tmp_path / "t" / "raw" / "toy2d-tavaal-seed0.json").read_text())
    assert len(raw["records"][0]["selected"]) == 10  # the toy budget, at the smoke's stage 0


# ---------------------------------------------------------------- fixed learner (fixed_learner.py)


@pytest.fixture(scope="module")
def tiny_curves(tmp_path_factory) -> Path:
    """A curves.py run on the smoke preset's imbalanced tiny images: random and lloss_rank, 2 seeds, 3 stages; its
    experiments as curves.py plans and runs them (raw JSON only: its report is not what is tested here)."""
    run_dir = tmp_path_factory.mktemp("curves") / "tiny"
    args = ["--data", "synthetic", "--settings", "imbalanced", "--strategies", "random", "lloss_rank", "--seeds", "2"]
    for s in ("train.epochs=1", "al.stages=3"):
        args += ["--set", s]
    parsed = curves.parse_args(args)
    # the runs set this process to 1 torch thread; later tests compare in-process runs with subprocess runs at
    # torch's default, and conftest's _torch_threads restores threads per test, not per module fixture
    threads = torch.get_num_threads()
    try:
        for setting, strategy, seed, base, overrides in curves.plan(parsed, curves.setting_configs(parsed), 1):
            path = curves.raw_path(run_dir, setting, strategy, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            curves.run_one(base, overrides, str(path))
    finally:
        torch.set_num_threads(threads)
    return run_dir


def test_fixed_learner_rebuilds_each_stages_labeled_set_exactly(tiny_curves):
    from tavaal.core.metrics import label_counts
    from tavaal.oracle import build_oracle

    for path in sorted((tiny_curves / "raw").glob("*.json")):
        raw = json.loads(path.read_text())
        cfg = from_dict(raw["config"])
        data = build_oracle(cfg, build_dataset(cfg.data, cfg.seed)).start(build_dataset(cfg.data, cfg.seed))[0]
        pools = fixed_learner.labeled_sets(cfg, data, raw["records"])
        for pool, r in zip(pools, raw["records"], strict=True):
            assert pool.num_labeled == r["num_labeled"]
            assert (
                label_counts(data.train_targets, pool.labeled_indices(), data.num_classes).tolist() == r["label_counts"]
            )
        wrong = [dict(r) for r in raw["records"]]
        wrong[1]["label_counts"] = [wrong[1]["label_counts"][0] + 1, wrong[1]["label_counts"][1] - 1]
        with pytest.raises(ValueError, match="stage 1: rebuilt"):
            fixed_learner.labeled_sets(cfg, data, wrong)


def test_fixed_learner_reproduces_randoms_own_accuracies(tiny_curves, capsys):
    assert fixed_learner.main([str(tiny_curves), "--jobs", "1"]) == 0
    for k in (0, 1):
        own = json.loads((tiny_curves / "raw" / f"imbalanced-random-seed{k}.json").read_text())["records"]
        fixed = json.loads((tiny_curves / "fixed-learner" / f"imbalanced-random-seed{k}.json").read_text())["records"]
        assert [r["accuracy"] for r in fixed] == [r["accuracy"] for r in own]  # same recipe, same seeds: exact
        assert [r["label_counts"] for r in fixed] == [r["label_counts"] for r in own]
    md = tiny_curves.with_name("tiny.fixed-learner.md").read_text()
    assert "(reproduced exactly)" in md and "| lloss_rank | fixed |" in md and "| lloss_rank | own |" in md
    # stage 0 trains every strategy on the same initial labels: the fixed learner gives random's number there
    lr = json.loads((tiny_curves / "fixed-learner" / "imbalanced-lloss_rank-seed0.json").read_text())["records"]
    rnd = json.loads((tiny_curves / "fixed-learner" / "imbalanced-random-seed0.json").read_text())["records"]
    assert lr[0]["accuracy"] == rnd[0]["accuracy"]
    assert fixed_learner.main([str(tiny_curves), "--jobs", "1"]) == 2 and "--resume" in capsys.readouterr().err
    assert fixed_learner.main([str(tiny_curves), "--resume", "--jobs", "1"]) == 0  # nothing left to retrain
