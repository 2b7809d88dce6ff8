"""Why does TA-VAAL pick what it picks? The adversarial game's health at every query stage, VAAL beside it.

    python -m benchmarks.tavaal_diagnosis                                # curves.py's CPU protocol, imbalanced x10
    python -m benchmarks.tavaal_diagnosis --seed 3 --bn batch            # one seed, batch-statistics scoring only
    python -m benchmarks.tavaal_diagnosis --set vae.vae_steps=2 --set vae.kl_reduction=sum --strategies tavaal
    python -m benchmarks.tavaal_diagnosis --config configs/smoke.yaml --protocol none   # seconds (tests)

Runs whole experiments (``tavaal.experiment.run_experiment``, the local backend, the experiment's own stage
seeds) for each strategy and each ``--bn`` mode (``vae.score_bn``: ``running`` eval-mode statistics, ``batch``
each scored batch normalized by its own, as the official code scores), every ``--set`` applied to every run
after the protocol's overrides. Per query stage it prints what the stage record holds (``tavaal.core.health``):
the task model's accuracy on its own labeled set (is it fit?), the discriminator loss over the last tenth of the
iterations (2 ln 2 = 1.386 is chance), the discriminator's AUROC of labeled vs candidates (0.5: chance), for
TA-VAAL the AUROC of r̂ (candidates above labeled) and Spearman's correlation of the query score with r̂, and the
share of the picks from the minority classes (imbalanced pools) or the picks' class entropy; and the schedule
each run resolved (VAE steps, KL reduction, iterations, BN mode), so a ``--set`` shows where it landed.
``--out FILE`` also writes the tables as markdown.

Does r̂ steer the picks? At every query stage the trained VAE and discriminator score the candidates a second
time with r̂ permuted among them (a permutation seeded by the stage's seed; the VAE, the discriminator, the
candidates and μ unchanged), and the column "picks changed, r̂ permuted" gives the share of the stage's picks that
are not picked again. 0 means the discriminator ignores r̂ (VAAL: it has none, a control); if r̂ alone ranked the
candidates, the share would be 1 - K/M on average (K picks of M candidates: the permuted picks are then a random
K-subset), which the header states. The experiment itself picks with the true r̂: the second scoring only
looks (``PermutingBackend``, a wrapper of the run's backend, registered nowhere).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

if not __package__:  # run by path (python benchmarks/<script>.py, as older records say): as the module
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.tavaal_diagnosis", *sys.argv[1:]])

import numpy as np

import tavaal  # noqa: F401  (sets OMP passive waiting before torch loads)

# isort: split
import torch

from benchmarks.common import ROOT, WrappedBackend, command_line, results_header
from benchmarks.curves import CPU_PROTOCOL  # the protocol the curves are measured on
from tavaal.backends import build_backend
from tavaal.config import load_config
from tavaal.core.health import CHANCE_DISC_LOSS
from tavaal.core.metrics import label_entropy, stage_quality
from tavaal.core.seeding import derive_seed, numpy_rng
from tavaal.core.selection import select_top_k
from tavaal.data.imbalance import parse_minority
from tavaal.errors import TavaalError
from tavaal.strategies.scorers import DiscriminatorScorer

PROTOCOLS = {"cpu": [*CPU_PROTOCOL, "data.imbalance_ratio=10"], "none": []}
HEAD = (
    "| stage | labels | quality | train acc | disc loss (last 10%) | disc AUROC | r̂ AUROC | spearman(score, r̂) "
    "| picks changed, r̂ permuted | picks: minority share / class entropy |"
)


def permuted_rhat(rhat: np.ndarray | None, candidates: np.ndarray, seed: int) -> np.ndarray | None:
    """r̂ with the candidates' values permuted among them (seeded); the labeled samples keep theirs."""
    if rhat is None:
        return None
    out = rhat.copy()
    out[candidates] = rhat[candidates][numpy_rng(seed, "rhat-permutation").permutation(candidates.size)]
    return out


def permutation_change(
    scorer: DiscriminatorScorer, candidates: np.ndarray, logit: np.ndarray, budget: int, backend, batch_size: int
) -> dict:
    """Score ``candidates`` again with the scorer's VAE and discriminator but r̂ permuted among them; ``logit``: the
    true scoring's. Returns the share of the top-``budget`` picks (lowest P(labeled) first, as ``adversarial_query``
    picks) that change, and both pick sets."""
    job = scorer.job
    twin = DiscriminatorScorer(
        dataclasses.replace(job, rhat=permuted_rhat(job.rhat, candidates, job.seed)), scorer.result
    )
    with torch.random.fork_rng():  # building the twin's models must not move the run's random streams
        perm = backend.score(twin, candidates, batch_size)["logit"]
    picks = select_top_k(-np.asarray(logit, dtype=np.float64), candidates, budget)
    again = select_top_k(-np.asarray(perm, dtype=np.float64), candidates, budget)
    changed = 1.0 - np.intersect1d(picks, again).size / max(1, picks.size)
    return {"changed": float(changed), "picks": picks, "permuted_picks": again, "chance": 1 - budget / candidates.size}


class PermutingBackend(WrappedBackend):
    """The run's backend, unchanged, except that each discriminator scoring of a stage's candidates is repeated with
    r̂ permuted (``permutation_change``); the results, keyed by the stage's seed, go to ``self.changes``."""

    def __init__(self, inner, budget: int) -> None:
        super().__init__(inner)
        self.budget = budget
        self.changes: dict[int, dict] = {}

    def score(self, scorer, indices: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
        out = self.inner.score(scorer, indices, batch_size)
        if isinstance(scorer, DiscriminatorScorer) and np.array_equal(indices, scorer.job.unlabeled):
            budget = min(self.budget, indices.size)
            self.changes[scorer.job.seed] = permutation_change(
                scorer, indices, out["logit"], budget, self.inner, batch_size
            )
        return out


def diagnose(config: str, overrides: list[str], log=print) -> tuple[list[str], list[dict]]:
    """One experiment: (its markdown lines, its stage records)."""
    from tavaal.experiment import run_experiment

    cfg = load_config(ROOT / config, overrides)
    backend = PermutingBackend(build_backend(cfg.backend, cfg.data), cfg.al.budget)
    records = [r.to_dict() for r in run_experiment(cfg, backend=backend, out_dir=None, log=lambda msg: None)]
    for r in records:  # the permutation's outcome joins its stage's record
        perm = backend.changes.get(derive_seed(cfg.seed, "stage", r["stage"]))
        if perm is not None:
            r["rhat_permutation"] = {"changed": perm["changed"], "chance": perm["chance"]}
    chance = next((r["rhat_permutation"]["chance"] for r in records if "rhat_permutation" in r), None)
    minority = cfg.data.minority_classes if cfg.data.imbalance_ratio > 1 else None
    info = next((r["info"] for r in records if r.get("health")), {})
    lines = [
        f"### {cfg.al.strategy}, score_bn {cfg.vae.score_bn}, seed {cfg.seed}",
        "",
        f"Schedule as run: vae_steps {info.get('vae_steps')}, kl_reduction {info.get('kl_reduction')}, "
        f"{info.get('vae_iterations')} iterations, score_bn {info.get('score_bn')}; task epochs "
        f"{cfg.train.epochs}.",
        "",
        "Picks changed, r̂ permuted: "
        + (
            "no query stage."
            if chance is None
            else f"if r̂ alone ranked the candidates, {chance:.2f} on average."
            if cfg.al.strategy == "tavaal"
            else "its discriminator takes no r̂, so 0 by construction (a control)."
        ),
        "",
        HEAD,
        "| --- |" + " --- |" * 9,
    ]
    for r in records:
        h = r.get("health") or {}
        picks = np.asarray(h.get("pick_counts", []), dtype=np.int64)
        if picks.size and minority is not None:
            share = f"{picks[parse_minority(minority, picks.size)].sum() / max(1, picks.sum()):.2f}"
        else:
            share = f"{label_entropy(picks)[1]:.3f}" if picks.size else "—"
        cells = [
            str(r["stage"]),
            str(r["num_labeled"]),
            f"{stage_quality(r) * 100:.2f}",
            _pct(r.get("train_accuracy")),
            _num(h.get("disc_loss_tail")),
            _num(h.get("disc_auroc")),
            _num(h.get("rhat_auroc")),
            _num(h.get("score_rhat_spearman")),
            _num((r.get("rhat_permutation") or {}).get("changed"), 2),
            share,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    log("\n".join(lines))
    return lines, records


def _num(v, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _pct(v) -> str:
    return "—" if v is None else f"{v * 100:.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/fashionmnist_tavaal_cpu.yaml", help="preset (default: %(default)s)")
    ap.add_argument(
        "--protocol",
        choices=list(PROTOCOLS),
        default="cpu",
        help="overrides before --set: cpu (curves.py's CPU protocol, imbalanced x10) or none",
    )
    ap.add_argument("--strategies", nargs="+", default=["tavaal", "vaal"], choices=["tavaal", "vaal"])
    ap.add_argument(
        "--bn",
        nargs="+",
        default=["running", "batch"],
        choices=["running", "batch"],
        help="vae.score_bn modes to run (default: both)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every run, applied last"
    )
    ap.add_argument("--out", help="also write the tables to this markdown file")
    args = ap.parse_args(argv)
    runs = [
        (s, bn, [*PROTOCOLS[args.protocol], f"al.strategy={s}", f"vae.score_bn={bn}", f"seed={args.seed}", *args.set])
        for s in args.strategies
        for bn in args.bn
    ]
    try:  # every config checked before the first experiment starts
        for *_, overrides in runs:
            load_config(ROOT / args.config, overrides)
    except TavaalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    lines = results_header(
        "TA-VAAL diagnosis: the adversarial game per query stage",
        command_line("tavaal_diagnosis", argv),
        [
            f"preset `{args.config}` with {', '.join(PROTOCOLS[args.protocol] + args.set) or 'no overrides'}",
            f"chance level of the discriminator loss: 2 ln 2 = {CHANCE_DISC_LOSS:.3f}; of an AUROC: 0.5",
        ],
    )
    print("\n".join(lines), flush=True)
    for _, _, overrides in runs:
        lines += diagnose(args.config, overrides)[0] + [""]
        print(flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(lines))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
