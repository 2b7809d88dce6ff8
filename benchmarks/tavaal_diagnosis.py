"""Why does TA-VAAL pick what it picks? One stage's r̂ and discriminator scores, side by side with VAAL's.

    python benchmarks/tavaal_diagnosis.py                          # curves.py's CPU protocol, imbalanced x10
    python benchmarks/tavaal_diagnosis.py --iterations 600 --only tavaal
    python benchmarks/tavaal_diagnosis.py --set data.imbalance_ratio=1

Trains stage 0 of the protocol once (task model + ranker, seed 0), draws its candidates, computes r̂ for the
labeled set and the candidates, then trains the VAE/discriminator of ``tavaal`` (conditioned on r̂) and of
``vaal`` for ``--iterations`` and prints, for each: the last discriminator loss (2 ln 2 = 1.386 is chance),
the mean logit of labeled vs candidates, Spearman's rank correlation of the candidates' logits with r̂, how
many of the 100 picks (lowest logit) are also among the 100 highest r̂, and the share of minority-class
images (the even classes) among the picks, among the 100 highest r̂ and among all candidates. Everything runs
through the same core code as an experiment (``LocalBackend``, the strategies' scorers).
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import tavaal  # noqa: F401  (sets OMP passive waiting before torch loads)

import numpy as np
import torch
from scipy.stats import spearmanr

from tavaal.backends import LocalBackend
from tavaal.config import load_config
from tavaal.core.pool import draw_candidates, initial_pool
from tavaal.core.seeding import derive_seed, numpy_rng
from tavaal.core.training import ModelSpec, TaskJob
from tavaal.core.vae_training import VAEJob
from tavaal.strategies.scorers import DiscriminatorScorer, TaskScorer

ROOT = Path(__file__).resolve().parents[1]
# curves.py's CPU protocol on the imbalanced setting
PROTOCOL = ["al.initial=100", "al.budget=100", "al.stages=6", "al.subset_size=1000", "train.epochs=10",
            "train.milestones=[8]", "train.ranker_stop_grad_epoch=6", "vae.iterations=100", "data.imbalance_ratio=10"]
MINORITY = [0, 2, 4, 6, 8]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=100, help="VAE/discriminator iterations (curves.py: 100)")
    ap.add_argument("--only", choices=["tavaal", "vaal"], help="train only this strategy's VAE/discriminator")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = ap.parse_args()
    cfg = load_config(ROOT / "configs/fashionmnist_tavaal_cpu.yaml", PROTOCOL + args.set)
    backend = LocalBackend()
    from tavaal.data import build_dataset

    data = build_dataset(cfg.data, cfg.seed)
    backend.prepare(data, torch.device("cpu"))
    pool = initial_pool(len(data.train), cfg.al.initial, numpy_rng(cfg.seed, "initial"))
    spec = ModelSpec(cfg.model.name, data.input_shape, data.num_classes, cfg.model.ranker_hidden)
    labeled = pool.labeled_indices()
    task = backend.train_task(TaskJob(spec, cfg.train, labeled, "rank", derive_seed(cfg.seed, "stage", 0)))
    cand = draw_candidates(pool, cfg.al.subset_size, numpy_rng(cfg.seed, "candidates", 0))
    both = np.union1d(labeled, cand)
    rhat = np.full(len(data.train), np.nan, dtype=np.float32)
    rhat[both] = backend.score(TaskScorer(spec, task, "rhat"), both, 512)["rhat"]
    y = data.train_targets
    top_r = cand[np.argsort(-rhat[cand], kind="stable")[:100]]
    print(f"r-hat: labeled {rhat[labeled].mean():.3f} ± {rhat[labeled].std():.3f}, candidates "
          f"{rhat[cand].mean():.3f} ± {rhat[cand].std():.3f}; minority share: candidates "
          f"{np.isin(y[cand], MINORITY).mean():.2f}, 100 highest r-hat {np.isin(y[top_r], MINORITY).mean():.2f}")
    for name in [args.only] if args.only else ["tavaal", "vaal"]:
        conditional = name == "tavaal"
        v = dataclasses.replace(cfg.vae, vae_steps=1 if conditional else 2, kl_reduction="mean" if conditional else "sum")
        job = VAEJob(data.input_shape, v, labeled, cand, args.iterations, 0, conditional,
                     rhat=rhat if conditional else None)
        result = backend.train_vae(job)
        logit = backend.score(DiscriminatorScorer(job, result), both, 512)["logit"]
        by_index = dict(zip(both.tolist(), logit.tolist()))
        lc = np.array([by_index[i] for i in cand])
        ll = np.array([by_index[i] for i in labeled])
        picks = cand[np.argsort(lc, kind="stable")[:100]]
        print(f"{name} ({args.iterations} iterations): disc loss {result.history[-1]['disc_loss']:.3f}; logit "
              f"labeled {ll.mean():.2f} ± {ll.std():.2f}, candidates {lc.mean():.2f} ± {lc.std():.2f}; "
              f"spearman(logit, r-hat) {spearmanr(lc, rhat[cand])[0]:.2f}; picks among the 100 highest r-hat "
              f"{int(np.isin(picks, top_r).sum())}; minority share of picks {np.isin(y[picks], MINORITY).mean():.2f}")


if __name__ == "__main__":
    main()
