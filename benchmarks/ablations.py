"""Why does TA-VAAL trail its own parts? Its variants beside random, VAAL and learning loss (ranking), paired by seed.

    python -m benchmarks.ablations                                # 5 seeds, imbalanced Fashion-MNIST, CPU protocol
    python -m benchmarks.ablations --balanced fit_batch_bn        # + the balanced pool for one variant
    python -m benchmarks.ablations --resume                       # after a kill: finished experiments are skipped
    python -m benchmarks.ablations --report-only

Every experiment runs through curves.py's machinery (its CPU protocol, worker pool, one raw JSON per experiment
under ``<out>/<name>/raw/``); each variant is a curves "setting": the imbalanced x10 pool of curves.py plus the
variant's overrides. The variants, one hypothesis each:

  standard        as curves.py ran them until 2026-12-02 (10 epochs from 100 labels: 20 SGD steps at the first
                  stage; lr x 0.1 at epoch 8, the ranker's features detached after 6)
  batch_bn        the VAE's BatchNorm in batch mode when scoring (vae.score_bn=batch), as the official code scores
  fit             the task model trained until it fits its labeled set: 30 epochs (100% training accuracy at every
                  stage on this protocol, where 10 epochs give 86% at 100 labels), lr x 0.1 at epoch 24 and the
                  ranker's features detached after 18 (the paper's 160 and 120 of 200 epochs); random, learning
                  loss and VAAL get the same task training
  fit_batch_bn    both of the above
  vaal_schedule   TA-VAAL with VAAL's VAE schedule (two VAE steps per iteration, KL summed): a diagnostic, not the
                  published method
  fit_vaal_schedule  both: the fitted task model and VAAL's VAE schedule (a diagnostic too)
  fit_bf16        the fitted protocol in bf16 autocast with channels_last (train.precision=bf16,
                  train.channels_last=true): does the speed setting hold every strategy's accuracy?

A variant's strategies are compared with the random, ``lloss_rank`` and ``vaal`` runs of the same task training
(``vaal`` of the same variant when it has one), over the seeds both have. ``--balanced VARIANT`` adds the
variant on the balanced pool (the whole training split) with random, ``lloss_rank`` and ``vaal`` beside it.
Writes ``<out>/<name>.md``: AUC (mean ± std), paired differences with seeds ahead, and the game's health
(``tavaal.core.health``) averaged over query stages and seeds, next to each other.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

if not __package__:  # run by path (python benchmarks/<script>.py, as older records say): as the module
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.ablations", *sys.argv[1:]])

import numpy as np

import tavaal  # noqa: F401  (sets OMP passive waiting before torch loads)
from benchmarks.common import (
    ROOT,
    Refused,
    auc,
    command_line,
    invocation_line,
    load_raw,
    mean_std,
    paired,
    recorded_run,
    unfinished,
)
from benchmarks.curves import PROTOCOLS, experiments, run_recorded

SHORT = ("train.epochs=10", "train.milestones=[8]", "train.ranker_stop_grad_epoch=6")
FIT = ("train.epochs=30", "train.milestones=[24]", "train.ranker_stop_grad_epoch=18")  # curves.py's protocol now
BATCH_BN = ("vae.score_bn=batch",)
VAAL_SCHEDULE = ("vae.vae_steps=2", "vae.kl_reduction=sum")
BF16 = ("train.precision=bf16", "train.channels_last=true")
# every variant but fit_bf16 ran in fp32, NCHW, before the CPU preset's default became precision auto: pinned
FP32 = ("train.precision=fp32", "train.channels_last=false")
VARIANTS = {  # name -> (overrides on top of the protocol and the imbalanced pool, strategies, baseline variant)
    "standard": (SHORT, ("random", "lloss_rank", "vaal", "tavaal"), "standard"),
    "batch_bn": (SHORT + BATCH_BN, ("vaal", "tavaal"), "standard"),
    "fit": (FIT, ("random", "lloss_rank", "vaal", "tavaal"), "fit"),
    "fit_batch_bn": (FIT + BATCH_BN, ("vaal", "tavaal"), "fit"),
    "vaal_schedule": (SHORT + VAAL_SCHEDULE, ("tavaal",), "standard"),
    "fit_vaal_schedule": (FIT + VAAL_SCHEDULE, ("tavaal",), "fit"),
    "fit_bf16": (FIT + BF16, ("random", "lloss_rank", "vaal", "tavaal"), "fit_bf16"),
}
# the variant each one changes one thing of: "vs itself" compares a strategy with its own runs there
REFERENCE = {
    "batch_bn": "standard",
    "fit": "standard",
    "fit_batch_bn": "fit",
    "vaal_schedule": "standard",
    "fit_vaal_schedule": "fit",
    "fit_batch_bn_balanced": "fit_balanced",
    "fit_bf16": "fit",
}
IMBALANCED = ("data.imbalance_ratio=10",)
RIVALS = ("random", "lloss_rank", "vaal")
HEALTH = ("disc_loss_tail", "disc_auroc", "rhat_auroc", "score_rhat_spearman")


def variant_configs(balanced: str | None) -> dict[str, tuple[tuple[str, ...], tuple[str, ...], str]]:
    """setting name -> (overrides, strategies, baseline setting); ``balanced`` adds ``<variant>_balanced`` with
    its baseline's rivals on the whole training split."""
    out = {name: (IMBALANCED + sets, strategies, base) for name, (sets, strategies, base) in VARIANTS.items()}
    if balanced is not None:
        sets, strategies, base = VARIANTS[balanced]
        own = strategies if balanced == base else ()
        out[f"{base}_balanced"] = (
            VARIANTS[base][0],
            (*RIVALS, *(s for s in own if s not in RIVALS)),
            f"{base}_balanced",
        )
        if balanced != base:
            out[f"{balanced}_balanced"] = (sets, strategies, f"{base}_balanced")
    return out


def plan(variants: dict, seeds: int, threads: int, extra: list[str], protocol: str = "cpu") -> list[tuple]:
    """curves.run_all's (setting, strategy, seed, preset, overrides), seed by seed; ``protocol`` "smoke": the smoke
    preset's synthetic images (tests)."""
    base, sets0 = PROTOCOLS[protocol]
    data = "synthetic" if protocol == "smoke" else "fashionmnist"
    settings = {
        name: (base, [*sets0, f"data.name={data}", *FP32, *sets], strategies)
        for name, (sets, strategies, _) in variants.items()
    }
    return experiments(settings, seeds, threads, extra)


def rival_runs(raw: dict, variants: dict, setting: str, rival: str) -> dict:
    """The runs ``setting``'s strategies are compared with: its own ``rival`` runs, else its baseline's."""
    own = raw.get(setting, {})
    return own[rival] if rival in own else raw.get(variants[setting][2], {}).get(rival, {})


def stage_health(runs: dict, key: str) -> str:
    """Mean ± std over seeds of the mean of ``key`` over an experiment's query stages."""
    values = []
    for e in runs.values():
        vals = [r["health"][key] for r in e["records"] if (r.get("health") or {}).get(key) is not None]
        if vals:
            values.append(float(np.mean(vals)))
    return mean_std(values, 3) if values else "—"


def train_accuracy(runs: dict) -> str:
    """Mean / lowest accuracy of a stage's task model on its own labeled set, over every stage and seed (%)."""
    accs = [r["train_accuracy"] for e in runs.values() for r in e["records"] if r.get("train_accuracy") is not None]
    return f"{np.mean(accs) * 100:.1f} / {min(accs) * 100:.1f}" if accs else "—"


def paired_cell(a: dict, b: dict) -> str:
    """AUC of runs ``a`` minus runs ``b`` (pt), mean over the seeds both have, with seeds where ``a`` is ahead."""
    d, ahead, n = paired({"a": a, "b": b}, "a", "b", auc)
    return f"{d * 100:+.2f} ({ahead}/{n})"


def report(out: Path, name: str, variants: dict) -> Path:
    run_dir = out / name
    meta = json.loads((run_dir / "run.json").read_text())
    raw = load_raw(run_dir)
    protocol = meta.get("protocol", "cpu")
    lines = [
        f"# TA-VAAL ablations ({', '.join(v for v in variants if v in raw)})",
        "",
        f"- protocol: curves.py's {protocol} protocol (`{PROTOCOLS[protocol][0]}` with "
        f"{', '.join(PROTOCOLS[protocol][1]) or 'no overrides'}) on "
        f"{'synthetic images' if protocol == 'smoke' else 'Fashion-MNIST'}; each variant's overrides below",
        "- AUC: trapezoid of test accuracy over labels / label range, in %; std over seeds with ddof 0; "
        "differences paired by seed (seed k: the same pool and initial labels for every strategy)",
        "- health (mean over the query stages, then mean ± std over seeds): discriminator loss over the last "
        "tenth of the iterations (chance 1.386), discriminator AUROC of labeled vs candidates (chance 0.5), "
        "r̂ AUROC of candidates above labeled, Spearman of the query score with r̂; train acc: accuracy of a "
        "stage's task model on its own labeled set, mean and lowest over stages and seeds",
        "- vs itself: the strategy's AUC minus its own in the variant this one changes one thing of",
    ]
    lines += [invocation_line(inv) for inv in meta["invocations"]]
    lines += [
        "",
        "| variant | overrides | strategy | seeds | AUC | vs random | vs lloss_rank | vs vaal | vs itself in "
        "the reference variant | train acc (mean / min) | label entropy (norm), last | disc loss (last 10%) | "
        "disc AUROC | r̂ AUROC | spearman(score, r̂) |",
        "| --- |" + " --- |" * 14,
    ]
    for setting, (sets, strategies, _) in variants.items():
        for strategy in strategies:
            runs = raw.get(setting, {}).get(strategy)
            if not runs:
                continue
            cells = [
                setting,
                ", ".join(sets) or "—",
                strategy,
                str(len(runs)),
                mean_std([auc(e["records"]) * 100 for e in runs.values()]),
            ]
            for rival in RIVALS:
                theirs = rival_runs(raw, variants, setting, rival)
                if rival == strategy or not theirs:
                    cells.append("—")
                    continue
                cells.append(paired_cell(runs, theirs))
            ref = raw.get(REFERENCE.get(setting, ""), {}).get(strategy)
            cells.append(f"{paired_cell(runs, ref)} vs {REFERENCE[setting]}" if ref else "—")
            cells += [
                train_accuracy(runs),
                mean_std([e["records"][-1]["label_entropy_norm"] for e in runs.values()], 3),
            ]
            cells += [stage_health(runs, key) for key in HEALTH]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Per-stage accuracy of every run: `raw/*.json` (records; `health` holds the per-stage numbers).", ""]
    path = out / f"{name}.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default: %(default)s)")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--balanced", choices=list(VARIANTS), help="also run this variant on the balanced pool")
    ap.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="experiments in parallel (1 thread each with the default of one per core)",
    )
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every run")
    ap.add_argument(
        "--protocol",
        choices=["cpu", "smoke"],
        default="cpu",
        help="cpu: curves.py's CPU protocol on Fashion-MNIST; smoke: the smoke preset (seconds, tests)",
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    ap.add_argument("--name", default=f"ablations-{datetime.date.today():%Y-%m-%d}")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    variants = {
        k: v for k, v in variant_configs(args.balanced).items() if k in args.variants or k.endswith("_balanced")
    }
    for name in list(variants):  # a variant's baseline runs with it
        base = variants[name][2]
        if base not in variants:
            variants = {base: variant_configs(args.balanced)[base], **variants}
    out, run_dir = Path(args.out), Path(args.out) / args.name
    if args.report_only:
        print(f"wrote {report(out, args.name, variants)}")
        return 0
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    try:
        meta = recorded_run(run_dir, args.resume) or {"protocol": args.protocol, "invocations": []}
        if meta.get("protocol", "cpu") != args.protocol:
            raise Refused(
                f"{run_dir} ran the {meta['protocol']} protocol; resume it with --protocol {meta['protocol']}"
            )
        todo, skipped = unfinished(run_dir, plan(variants, args.seeds, threads, args.set, args.protocol))
    except Refused as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    (run_dir / "raw").mkdir(parents=True, exist_ok=True)
    print(
        f"{run_dir}: {len(todo)} experiments to run, {len(skipped)} skipped, {args.jobs} jobs x {threads} threads",
        flush=True,
    )
    failed = run_recorded(todo, run_dir, meta, command_line("ablations", argv), args.jobs, threads, len(skipped), 0)
    print(f"wrote {report(out, args.name, variants)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
