"""Why does TA-VAAL pick what it picks? The adversarial game's health at every query stage, VAAL beside it.

    python benchmarks/tavaal_diagnosis.py                                # curves.py's CPU protocol, imbalanced x10
    python benchmarks/tavaal_diagnosis.py --seed 3 --bn batch            # one seed, batch-statistics scoring only
    python benchmarks/tavaal_diagnosis.py --set vae.vae_steps=2 --set vae.kl_reduction=sum --strategies tavaal
    python benchmarks/tavaal_diagnosis.py --config configs/smoke.yaml --protocol none   # seconds (tests)

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
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import numpy as np

import tavaal  # noqa: F401  (sets OMP passive waiting before torch loads)
from tavaal.config import load_config
from tavaal.core.health import CHANCE_DISC_LOSS
from tavaal.core.metrics import label_entropy, stage_quality
from tavaal.data.imbalance import parse_minority
from tavaal.errors import TavaalError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from curves import CPU_PROTOCOL  # noqa: E402  (the protocol the curves are measured on)

PROTOCOLS = {"cpu": [*CPU_PROTOCOL, "data.imbalance_ratio=10"], "none": []}
HEAD = (
    "| stage | labels | quality | train acc | disc loss (last 10%) | disc AUROC | r̂ AUROC | spearman(score, r̂) "
    "| picks: minority share / class entropy |"
)


def diagnose(config: str, overrides: list[str], log=print) -> tuple[list[str], list[dict]]:
    """One experiment: (its markdown lines, its stage records)."""
    from tavaal.experiment import run_experiment

    cfg = load_config(ROOT / config, overrides)
    records = [r.to_dict() for r in run_experiment(cfg, out_dir=None, log=lambda msg: None)]
    minority = cfg.data.minority_classes if cfg.data.imbalance_ratio > 1 else None
    info = next((r["info"] for r in records if r.get("health")), {})
    lines = [
        f"### {cfg.al.strategy}, score_bn {cfg.vae.score_bn}, seed {cfg.seed}",
        "",
        f"Schedule as run: vae_steps {info.get('vae_steps')}, kl_reduction {info.get('kl_reduction')}, "
        f"{info.get('vae_iterations')} iterations, score_bn {info.get('score_bn')}; task epochs "
        f"{cfg.train.epochs}.",
        "",
        HEAD,
        "| --- |" + " --- |" * 8,
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
            share,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    log("\n".join(lines))
    return lines, records


def _num(v) -> str:
    return "—" if v is None else f"{v:.3f}"


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
    command = "python benchmarks/tavaal_diagnosis.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# TA-VAAL diagnosis: the adversarial game per query stage",
        "",
        f"- command: `{command.strip()}`",
        f"- date: {datetime.datetime.now():%Y-%m-%d %H:%M}",
        f"- preset `{args.config}` with {', '.join(PROTOCOLS[args.protocol] + args.set) or 'no overrides'}",
        f"- chance level of the discriminator loss: 2 ln 2 = {CHANCE_DISC_LOSS:.3f}; of an AUROC: 0.5",
        "",
    ]
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
