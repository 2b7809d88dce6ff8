"""Active-learning curves of every strategy on Fashion-MNIST, balanced and imbalanced x10, and on synthetic shapes
segmentation, mean ± std over seeds.

    python -m benchmarks.curves                                  # CPU protocol: 7 strategies x 3 seeds x 2 settings
    python -m benchmarks.curves --settings shapes                # segmentation: 5 strategies x 3 seeds, mIoU
    python -m benchmarks.curves --resume                         # after a kill: finished experiments are skipped
    python -m benchmarks.curves --report-only                    # rebuild the markdown and PNGs from raw/*.json
    python -m benchmarks.curves --paper --seeds 5 --jobs 4       # the paper's protocol: GPUs only (see below)

Strategies: random, entropy, coreset, lloss, lloss_rank, vaal, tavaal. Settings: ``balanced`` (the 60,000
training images as the pool) and ``imbalanced`` (``data.imbalance_ratio=10``, the even classes keep 600 of
their 6,000 images, as the paper builds imbalanced CIFAR-10; the test split stays balanced). Seed k gives every
strategy the same pool and the same initial labels, so seeds pair up for "seeds ahead of random".
``shapes`` (not in the default ``--settings``) is segmentation on its own preset, configs/shapes_seg_cpu.yaml, with
none of the Fashion-MNIST overrides below; its default strategies are random, entropy, lloss, vaal, tavaal (one
of each family; add coreset or lloss_rank with --strategies, which applies to every setting). Its quality metric
is the test mIoU (pixel accuracy is ~80% for predicting background everywhere), in every table, summary line and
figure, and its label entropy is that of the labeled set's pixel classes.

CPU protocol (default; configs/fashionmnist_tavaal_cpu.yaml with CPU_PROTOCOL below), chosen by timing
experiments on a 2-core CPU (the numbers, dated and with their machines: benchmarks/README.md, "Numbers behind the
code's reasons", and its ablations):
  100 initial labels + 100 per stage, 6 stages (100..600 labels): the steep part of the curve, where picks move
      the accuracy; 200 per stage would double the training for flatter curves
  30 epochs (lr x 0.1 at epoch 24, ranker features detached after 18: the paper's 160 and 120 of 200): the task
      model fits its labeled set, as the paper's 200 epochs fit theirs, where 10 epochs (the protocol until
      2026-12-02) left it underfit and cost every strategy AUC (benchmarks/ablations.py); a stage still trains in
      seconds on 1 thread
  1,000 candidates per stage: 10x the budget, as the paper's 10,000 for 1,000; scoring them is quick
  VAE/discriminator: 100 iterations, base_channels 16, batch 64 (the preset's VAE, a third of its iterations):
      the VAE is most of a vaal/tavaal experiment, so its iterations set the benchmark's length
How long it takes: the VAE/discriminator iterations set a vaal/tavaal experiment's length; random, lloss and
  entropy are quick. ``--set vae.iterations=null`` runs the official formula, int((|L| + M) * 100 / 64), many times
  this protocol's fixed 100 per query, and vaal's two VAE steps per iteration cost more than tavaal's one. Measured
  times, per strategy and budget, with the machine and its load: benchmarks/README.md ("How long the curves
  take"). The default of one job per core with 1 thread each gets more done than one job on every core (measured
  there too).
  A run's numbers depend on its thread count (float reduction order): compare runs made with the same --jobs.

shapes protocol (the preset, unchanged; values and reasons from its comments): 2,000 synthetic 32x32 images of
discs, squares, triangles and rings on textures (5 pixel classes, ~80% background, triangles and rings rare), 500
test images; the seg_small U-Net; 100 initial labels + 100 per stage, 4 stages (100..400 labeled images, 5-20% of
the pool); 30 epochs (between the 20 and 40 that random was measured with), lr x 0.1 at epoch 24 and ranker
features detached after 18 (80% and 60% of the epochs, as the paper's 160 and 120 of 200); 1,000 candidates per
stage (10x the budget); VAE latent 16, base_channels 16, 150 iterations, batch 32. Its stages grow with the labeled
set (30 epochs on 100..400 images), vaal and tavaal take the longest; the measured minutes: benchmarks/README.md.

--paper: configs/cifar10_tavaal.yaml on ``--data`` (ResNet-18, 1,000 initial + 1,000 per stage, 10 stages,
200 epochs, 10,000 candidates, the published VAE with the official iteration formula): about 1 GPU-hour per
stage, i.e. 2 x 7 x 10 stages x seeds GPU-hours; needs GPUs (one experiment per GPU: ``--jobs`` defaults to the
GPU count, each worker sees one GPU); not for shapes (a CPU preset). ``--data synthetic`` runs configs/smoke.yaml's
tiny images, and shapes at 96 images of 16x16, 2 stages of 16 labels (SHAPES_SMOKE), for tests.

Writes ``<out>/<name>.md`` (per setting: accuracy or mIoU per stage, AUC and last-stage label entropy per strategy,
improvement over random with seeds ahead, a summary line per comparison) and ``<out>/<name>/<setting>.png``
(accuracy or mIoU ± std, improvement over random, label entropy vs labels); each experiment's records (with a
summary of the data it saw) go to ``<out>/<name>/raw/<setting>-<strategy>-seed<k>.json`` as soon as it finishes;
``<out>/<name>/run.json`` holds each setting's preset and overrides, which ``--resume`` must match.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime
import json
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if not __package__:  # run by path (python benchmarks/<script>.py, as older records say): as the module
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.curves", *sys.argv[1:]])

import numpy as np

import tavaal  # noqa: F401  (sets OMP passive waiting before torch loads)
from benchmarks.common import (
    ROOT,
    STRATEGIES,
    Refused,
    at_stage,
    auc,
    command_line,
    invocation,
    invocation_line,
    load_raw,
    mean_std,
    ordered,
    paired,
    paired_cell,
    paired_interval,
    raw_path,
    record_invocation,
    recorded_run,
    unfinished,
    write_json,
    write_run,
)
from tavaal.config import Config, load_config
from tavaal.core.metrics import stage_quality
from tavaal.data.imbalance import parse_minority
from tavaal.tracking.plots import plot_table


@dataclass(frozen=True)
class Setting:
    """One curve setting: the protocol's preset (``--paper`` / ``--data``) with ``overrides``, or its own preset."""

    overrides: tuple[str, ...] = ()  # on top of the preset (and, without a preset of its own, the protocol's)
    preset: str | None = None  # None: the protocol's preset and overrides, with data.name=--data
    smoke: tuple[str, ...] = ()  # with its own preset, under --data synthetic (tests): a tiny version of it
    strategies: tuple[str, ...] = STRATEGIES  # when --strategies is not given


# shapes at 96 images of 16x16, 16 + 16 labels, 1 epoch, 4 VAE iterations: ~2 s per experiment
SHAPES_SMOKE = (
    "data.num_train=96",
    "data.num_test=32",
    "data.image_size=16",
    "train.epochs=1",
    "vae.iterations=4",
    "al.initial=16",
    "al.budget=16",
    "al.stages=2",
    "al.subset_size=48",
    "train.batch_size=16",
    "vae.batch_size=16",
)
SETTINGS = {
    "balanced": Setting(),
    "imbalanced": Setting(("data.imbalance_ratio=10",)),  # minority: the even classes (paper)
    "shapes": Setting(
        preset="configs/shapes_seg_cpu.yaml",
        smoke=SHAPES_SMOKE,
        strategies=("random", "entropy", "lloss", "vaal", "tavaal"),
    ),
}
DEFAULT_SETTINGS = ("balanced", "imbalanced")
SYNTHETIC_DATA = ("shapes_seg", "synthetic", "toy2d")  # generated in memory: "synthetic" in the description
RIVALS = ("random", "vaal", "lloss", "lloss_rank")  # tavaal's summary lines
CPU_PROTOCOL = [
    "al.initial=100",
    "al.budget=100",
    "al.stages=6",
    "al.subset_size=1000",
    "train.epochs=30",
    "train.milestones=[24]",
    "train.ranker_stop_grad_epoch=18",
    "vae.iterations=100",
]
PROTOCOLS = {  # name -> (preset, overrides); --data sets data.name on top
    "cpu": ("configs/fashionmnist_tavaal_cpu.yaml", CPU_PROTOCOL),
    "paper": ("configs/cifar10_tavaal.yaml", []),
    "smoke": ("configs/smoke.yaml", []),
}
PAPER_DATA = {"fashionmnist": ["vae.latent_dim=28", "vae.normalize=false"]}  # official code's Fashion-MNIST VAE


# ---------------------------------------------------------------- experiments (run in worker processes)


def run_one(base: str, overrides: list[str], path: str) -> dict:
    """One experiment; its records are written to ``path`` (atomically) and returned."""
    from tavaal.experiment import run_experiment

    cfg = load_config(ROOT / base, overrides)
    data = data_summary(cfg)
    t = time.perf_counter()
    records = run_experiment(cfg, out_dir=None, log=lambda msg: None)
    result = {
        "config": cfg.to_dict(),
        "overrides": overrides,
        "data": data,
        "minutes": (time.perf_counter() - t) / 60,
        "records": [r.to_dict() for r in records],
    }
    write_json(path, result)
    return result


def data_summary(cfg: Config) -> dict:
    """The pool and test split the experiment sees (for the report's description line): sizes, input shape and
    each class's share of the pool's labels (segmentation: of its pixels)."""
    from tavaal.core.metrics import label_counts
    from tavaal.data import build_dataset

    data = build_dataset(cfg.data, cfg.seed)
    counts = label_counts(data.train_targets, np.arange(len(data.train)), data.num_classes)
    return {
        "name": data.name,
        "task": data.task,
        "pool": len(data.train),
        "test": len(data.test),
        "input_shape": list(data.input_shape),
        "class_names": list(data.class_names),
        "class_share": (counts / max(1, counts.sum())).tolist(),
    }


def _init_worker(gpus) -> None:
    """Each worker process sees one GPU (paper protocol); before torch initializes CUDA."""
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus.get())


def plan(args, configs: dict[str, tuple[str, list[str]]], threads: int) -> list[tuple[str, str, int, str, list[str]]]:
    """(setting, strategy, seed, preset, overrides) for every experiment, seed by seed so a partial run is useful;
    ``configs``: setting -> (preset, overrides) from ``setting_configs``."""
    settings = {s: (base, sets, args.strategies or SETTINGS[s].strategies) for s, (base, sets) in configs.items()}
    return experiments(settings, args.seeds, threads, args.set)


def experiments(
    settings: dict[str, tuple[str, list[str], tuple[str, ...]]], seeds: int, threads: int, extra: list[str]
) -> list[tuple[str, str, int, str, list[str]]]:
    """The experiments ``run_all`` takes, (setting, strategy, seed, preset, overrides), seed by seed: ``settings``:
    setting -> (preset, its overrides, its strategies); each experiment's overrides end with num_threads (unless
    ``threads`` is 0), al.strategy, seed and ``extra``."""
    per_run = [f"num_threads={threads}"] if threads else []
    return [
        (setting, strategy, seed, base, [*sets, *per_run, f"al.strategy={strategy}", f"seed={seed}", *extra])
        for seed in range(seeds)
        for setting, (base, sets, strategies) in settings.items()
        for strategy in strategies
    ]


def eta_minutes(done: dict, remaining: list, jobs: int) -> float:
    """Remaining experiments x their kind's (strategy, or (preset, strategy)) mean minutes so far (else the overall
    mean), over ``jobs``."""
    every = [m for ms in done.values() for m in ms]
    mean = float(np.mean(every)) if every else 0.0
    return sum(float(np.mean(done[s])) if done.get(s) else mean for s in remaining) / max(1, jobs)


def run_all(todo: list, run_dir: Path, jobs: int, gpus: int) -> int:
    """Run ``todo`` with ``jobs`` worker processes (in this process for 1 job); returns the number that failed."""
    done: dict[tuple[str, str], list[float]] = {}  # (preset, strategy): experiments of one preset cost alike
    failed, t0 = 0, time.perf_counter()
    left = [(base, strategy) for _, strategy, _, base, _ in todo]
    preset = {(setting, strategy, seed): base for setting, strategy, seed, base, _ in todo}

    def report(i: int, setting: str, strategy: str, seed: int, result: dict | None, err: str = "") -> None:
        key = (preset[setting, strategy, seed], strategy)
        left.remove(key)
        elapsed = (time.perf_counter() - t0) / 60
        if result is None:
            print(f"[{i}/{len(todo)}] {setting} {strategy} seed {seed}: FAILED {err}", flush=True)
            return
        last = result["records"][-1]
        done.setdefault(key, []).append(result["minutes"])
        metric = "acc" if last.get("miou") is None else "mIoU"
        print(
            f"[{i}/{len(todo)}] {setting} {strategy} seed {seed}: {metric} {stage_quality(last) * 100:.2f}% at "
            f"{last['num_labeled']} labels, {result['minutes']:.1f} min; elapsed {elapsed:.1f} min, "
            f"ETA {eta_minutes(done, left, jobs):.0f} min",
            flush=True,
        )

    if jobs == 1:
        for i, (setting, strategy, seed, base, sets) in enumerate(todo, 1):
            try:
                report(i, setting, strategy, seed, run_one(base, sets, str(raw_path(run_dir, setting, strategy, seed))))
            except Exception as e:  # noqa: BLE001 - as in the pool below
                failed += 1
                report(i, setting, strategy, seed, None, f"{type(e).__name__}: {e}")
        return failed
    ctx = multiprocessing.get_context("spawn")
    queue = None
    if gpus:
        queue = ctx.Manager().Queue()
        for k in range(jobs):
            queue.put(k % gpus)
    with cf.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker, initargs=(queue,)) as pool:
        futures = {
            pool.submit(run_one, base, sets, str(raw_path(run_dir, setting, strategy, seed))): (setting, strategy, seed)
            for setting, strategy, seed, base, sets in todo
        }
        try:
            for i, fut in enumerate(cf.as_completed(futures), 1):
                try:
                    report(i, *futures[fut], fut.result())
                except Exception as e:  # noqa: BLE001 - one failed experiment must not lose the others
                    failed += 1
                    report(i, *futures[fut], None, f"{type(e).__name__}: {e}")
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return failed


def run_recorded(
    todo: list, run_dir: Path, meta: dict, command: str, jobs: int, threads: int, skipped: int, gpus: int
) -> int:
    """``run_all`` with the invocation (``common.invocation``: command, date, git, machine, counts, minutes, load
    before and after) appended to ``meta`` and ``<run_dir>/run.json`` written before and after; returns the number
    that failed."""
    inv = invocation(command, jobs=jobs, threads=threads, ran=len(todo), skipped=skipped)
    meta["invocations"].append(inv)
    return record_invocation(
        inv,
        lambda: write_run(run_dir, meta),
        lambda: run_all(todo, run_dir, min(jobs, max(1, len(todo))), gpus) if todo else 0,
    )


# ---------------------------------------------------------------- report


def interval_section(runs: dict, names: list[str], labels: list[int], pt: str) -> list[str]:
    """Paired differences with 95% intervals, per stage and of the AUC: every strategy against random, and
    tavaal against each of its rivals; an interval that holds 0 shows no difference at this many seeds."""
    pairs = [(s, "random") for s in names if s != "random" and "random" in runs]
    pairs += [("tavaal", r) for r in RIVALS if r != "random" and r in runs and "tavaal" in runs]
    if not pairs:
        return []
    lines = [
        "",
        f"Paired differences ({pt}, mean [95% interval] over paired seeds, Student's t):",
        "",
        "| labels | " + " | ".join(f"{a} − {b}" for a, b in pairs) + " |",
        "| --- |" + " --- |" * len(pairs),
    ]
    for i, n in enumerate(labels):
        lines.append(f"| {n} | " + " | ".join(paired_cell(runs, a, b, at_stage(i)) for a, b in pairs) + " |")
    lines.append("| **AUC** | " + " | ".join(paired_cell(runs, a, b, auc) for a, b in pairs) + " |")
    return lines


def minority_share(records: list[dict], stage: int, minority: list[int]) -> float | None:
    """Share of stage ``stage``'s picks from the minority classes: the growth of the labeled set's class counts to
    the next stage (every strategy has it; None after the last stage)."""
    if stage + 1 >= len(records) or "label_counts" not in records[stage + 1]:
        return None
    picks = np.array(records[stage + 1]["label_counts"]) - np.array(records[stage]["label_counts"])
    return float(picks[minority].sum() / picks.sum()) if picks.sum() > 0 else None


def health_section(runs: dict, labels: list[int]) -> list[str]:
    """The adversarial game's health beside the curves, per query stage, mean over seeds: the discriminator's loss
    over the last tenth of its iterations (2 ln 2 = 1.386 is chance) and AUROC of labeled vs candidates (0.5:
    chance), for tavaal the AUROC of r̂ and Spearman's correlation of the query score with r̂, and for every
    strategy the minority classes' share of the picks (imbalanced pools)."""
    first = next(iter(next(iter(runs.values())).values()))
    data = first["config"]["data"]
    counts = first["records"][0].get("label_counts")
    imbalanced = data["imbalance_ratio"] > 1 and metric_name(runs) == "accuracy" and counts is not None
    minority = parse_minority(data["minority_classes"], len(counts)) if imbalanced else []
    keys = [("disc_loss_tail", "disc loss"), ("disc_auroc", "disc AUROC"), ("rhat_auroc", "r̂ AUROC")]
    keys.append(("score_rhat_spearman", "spearman(score, r̂)"))
    lines = ["", "Game health per query stage (mean over seeds; — where a strategy has none):", ""]
    head = ["strategy", "labels", *(t for _, t in keys)] + (["minority share of picks"] if imbalanced else [])
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for s in ordered(runs):
        for i, n in enumerate(labels[:-1]):
            recs = [e["records"][i] for e in runs[s].values() if i < len(e["records"])]
            cells = []
            for key, _ in keys:
                vals = [r["health"][key] for r in recs if (r.get("health") or {}).get(key) is not None]
                cells.append(f"{np.mean(vals):.3f}" if vals else "—")
            if imbalanced:
                shares = [v for e in runs[s].values() if (v := minority_share(e["records"], i, minority)) is not None]
                cells.append(f"{np.mean(shares):.2f}" if shares else "—")
            if all(c == "—" for c in cells):
                continue
            lines.append(f"| {s} | {n} | " + " | ".join(cells) + " |")
    return lines


def metric_name(runs: dict) -> str:
    """ "mIoU" or "accuracy": what ``stage_quality`` measures in a setting (``runs``: strategy -> seed -> JSON)."""
    first = next(iter(next(iter(runs.values())).values()))
    return "accuracy" if first["records"][0].get("miou") is None else "mIoU"


def describe(runs: dict) -> str:
    """A setting's description line, from its first experiment's config and data summary."""
    first = next(iter(next(iter(runs.values())).values()))
    data = first["config"]["data"]
    if metric_name(runs) == "mIoU":
        d = first["data"]
        share = max(range(len(d["class_share"])), key=d["class_share"].__getitem__)
        return (
            f"{d['name']}: {d['pool']:,} {'synthetic ' * (d['name'] in SYNTHETIC_DATA)}pool images "
            f"({d['input_shape'][1]}x{d['input_shape'][2]}, {len(d['class_share'])} pixel classes, "
            f"~{d['class_share'][share]:.0%} {d['class_names'][share]}), test split of {d['test']:,}; label "
            "entropy: of the labeled set's pixel classes."
        )
    what = (
        "the whole training split as the pool"
        if data["imbalance_ratio"] <= 1
        else f"imbalance ratio {data['imbalance_ratio']:g}: minority classes ({data['minority_classes']}) keep "
        f"1/{data['imbalance_ratio']:g} of their training images; test split balanced"
    )
    return f"{data['name']}, {what}."


def setting_section(setting: str, runs: dict, name: str, config: dict | None = None) -> list[str]:
    """Tables and summary lines of one setting (``runs``: strategy -> seed -> experiment JSON; ``config``: its
    preset and overrides from run.json)."""
    names = ordered(runs)
    table = summarize({s: _cells(runs[s]) for s in names})
    labels = [r["labels"] for r in table[names[0]]]
    metric = metric_name(runs)
    pt = "pt" if metric == "accuracy" else f"pt {metric}"
    head = "| labels | " + " | ".join(names) + " |"
    rule = "| --- |" + " --- |" * len(names)
    lines = [f"## {setting}", "", describe(runs), ""]
    if config is not None:
        lines += [
            f"Preset: `{config['base']}` with {', '.join(config['overrides']) or 'no overrides'} (+ al.strategy, "
            "seed, num_threads).",
            "",
        ]
    lines += [
        "Minutes per experiment (mean): "
        + ", ".join(f"{s} {np.mean([e['minutes'] for e in runs[s].values()]):.1f}" for s in names)
        + ".",
        "",
        f"Test {metric} (%), mean ± std over seeds:",
        "",
        head,
        rule,
    ]
    for i, n in enumerate(labels):
        lines.append(
            f"| {n} | "
            + " | ".join(
                f"{table[s][i]['mean'] * 100:.2f} ± {table[s][i]['std'] * 100:.2f}" if i < len(table[s]) else "—"
                for s in names
            )
            + " |"
        )
    lines.append(
        "| **AUC** | " + " | ".join(mean_std([auc(e["records"]) * 100 for e in runs[s].values()]) for s in names) + " |"
    )
    lines.append(
        "| label entropy (norm), last stage | "
        + " | ".join(mean_std([e["records"][-1]["label_entropy_norm"] for e in runs[s].values()], 3) for s in names)
        + " |"
    )
    lines.append("| seeds | " + " | ".join(str(len(runs[s])) for s in names) + " |")
    others = [s for s in names if s != "random"]
    if "random" in runs and others:
        lines += [
            "",
            f"Improvement over random ({pt}, mean over paired seeds; seeds ahead / seeds):",
            "",
            "| labels | " + " | ".join(others) + " |",
            "| --- |" + " --- |" * len(others),
        ]
        for i, n in enumerate(labels):
            lines.append(f"| {n} | " + " | ".join(_diff(runs, s, "random", at_stage(i)) for s in others) + " |")
        lines.append("| **AUC** | " + " | ".join(_diff(runs, s, "random", auc) for s in others) + " |")
    lines += interval_section(runs, names, labels, pt)
    lines += health_section(runs, labels)
    lines += ["", "Summary:", ""]
    for rival in (r for r in RIVALS if r in runs and "tavaal" in runs):
        d, ahead, n = paired(runs, "tavaal", rival, auc)
        f, f_ahead, _ = paired(runs, "tavaal", rival, at_stage(len(labels) - 1))
        _, low, high, _ = paired_interval(runs, "tavaal", rival, auc)
        interval = f"; AUC 95% interval [{low * 100:+.1f}, {high * 100:+.1f}]" if n >= 2 else ""
        lines.append(
            f"- tavaal vs {rival}: {d * 100:+.1f} {pt} AUC ({ahead}/{n} seeds ahead), {f * 100:+.1f} {pt} "
            f"at {labels[-1]} labels ({f_ahead}/{n} seeds ahead){interval}"
        )
    ent = {
        s: [e["records"][-1]["label_entropy_norm"] for e in runs[s].values()] for s in ("tavaal", "random") if s in runs
    }
    if len(ent) == 2:
        lines.append(
            f"- label entropy (norm) of the labeled set{' (pixels)' * (metric == 'mIoU')} at {labels[-1]} "
            f"labels (paper Fig. 7a): tavaal {np.mean(ent['tavaal']):.3f} ± {np.std(ent['tavaal']):.3f}, "
            f"random {np.mean(ent['random']):.3f} ± {np.std(ent['random']):.3f}"
        )
    lines += ["", f"![{setting}]({name}/{setting}.png)", ""]
    return lines


def summarize(data: dict) -> dict[str, list[dict]]:
    """strategy -> rows per label count (labels, n seeds, mean/std of the quality metric, mean entropies), from
    ``_cells`` per strategy: the rows the tables and ``tavaal.tracking.plots.plot_table`` read."""
    random_mean = {n: float(np.mean(c["accuracy"])) for n, c in data.get("random", {}).items()}
    table = {}
    for strategy, by_n in data.items():
        rows = []
        for n in sorted(by_n):
            acc = np.asarray(by_n[n]["accuracy"])
            rows.append(
                {
                    "labels": n,
                    "seeds": int(acc.size),
                    "mean": float(acc.mean()),
                    "std": float(acc.std()),
                    "vs_random": float(acc.mean() - random_mean[n]) if n in random_mean else None,
                    "entropy": float(np.nanmean(by_n[n]["entropy"])),
                    "entropy_norm": float(np.nanmean(by_n[n]["entropy_norm"])),
                }
            )
        table[strategy] = rows
    return table


def _cells(by_seed: dict) -> dict:
    """labels -> {"accuracy" (the quality metric), "entropy", "entropy_norm": [per seed]}, the shape ``summarize``
    takes."""
    cells: dict = {}
    for k in sorted(by_seed):
        for r in by_seed[k]["records"]:
            cell = cells.setdefault(r["num_labeled"], {"accuracy": [], "entropy": [], "entropy_norm": []})
            cell["accuracy"].append(stage_quality(r))
            cell["entropy"].append(r["label_entropy"])
            cell["entropy_norm"].append(r["label_entropy_norm"])
    return cells


def _diff(runs: dict, a: str, b: str, metric) -> str:
    d, ahead, n = paired(runs, a, b, metric)
    return f"{d * 100:+.2f} ({ahead}/{n})" if n else "—"


def write_figure(setting: str, runs: dict, path: Path) -> None:
    """Quality ± std, quality - random, label entropy (norm) vs labels: one PNG per setting."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    table = {  # plot_table's entries: a strategy's rows over its seeds
        s: {"rows": rows, "kind": "seeds", "n": len(runs[s])}
        for s, rows in summarize({s: _cells(runs[s]) for s in ordered(runs)}).items()
    }
    metric = metric_name(runs)
    fig = Figure(figsize=(15, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    panels = (
        ("mean", 100, f"test {metric} (%)"),
        ("vs_random", 100, f"{metric} - random (pt)"),
        ("entropy_norm", 1, "pixel-label entropy / log C" if metric == "mIoU" else "label entropy / log C"),
    )
    for i, (key, scale, ylabel) in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1)
        plot_table(ax, table, key, scale)
        ax.set(xlabel="labeled samples", ylabel=ylabel, title=f"{setting}: {ylabel}")
        ax.grid(alpha=0.3)
        if key == "vs_random":
            ax.axhline(0, color="black", lw=0.8)
    fig.axes[0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)


def write_report(out: Path, name: str) -> Path:
    """``<out>/<name>.md`` and a PNG per setting, from ``<out>/<name>/run.json`` and ``raw/*.json`` alone."""
    run_dir = out / name
    meta = json.loads((run_dir / "run.json").read_text())
    raw = load_raw(run_dir)
    if not raw:
        raise SystemExit(f"error: no finished experiments in {run_dir / 'raw'}")
    metrics = sorted({metric_name(runs) for runs in raw.values()})
    lines = [
        f"# Active-learning curves: {', '.join(ordered({s for r in raw.values() for s in r}))}",
        "",
        f"- protocol: {meta['protocol']}: "
        + (
            f"`{meta['base']}` with {', '.join(meta['overrides']) or 'no overrides'} (+ the setting's "
            "overrides, al.strategy, seed)"
            if "settings" not in meta
            else "each setting's preset and overrides under its heading"
        ),
        "- std over seeds with ddof 0 (as `tavaal.report`); AUC: trapezoid of "
        f"{'accuracy (segmentation settings: mIoU)' if len(metrics) > 1 else metrics[0]} over labels "
        "divided by the label range (`tavaal.core.metrics.objective_metrics`), in %",
    ]
    lines += [invocation_line(inv) for inv in meta["invocations"]]
    lines.append("")
    for setting in [s for s in SETTINGS if s in raw] + sorted(set(raw) - set(SETTINGS)):
        lines += setting_section(setting, raw[setting], name, meta.get("settings", {}).get(setting))
        write_figure(setting, raw[setting], run_dir / f"{setting}.png")
    path = out / f"{name}.md"
    path.write_text("\n".join(lines))
    return path


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--strategies",
        nargs="+",
        default=None,
        choices=STRATEGIES,
        metavar="NAME",
        help="for every setting (default: each setting's: all seven; shapes: "
        f"{' '.join(SETTINGS['shapes'].strategies)})",
    )
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per strategy and setting (default: 3)")
    ap.add_argument(
        "--settings",
        nargs="+",
        default=list(DEFAULT_SETTINGS),
        choices=list(SETTINGS),
        help=f"default: {' '.join(DEFAULT_SETTINGS)}",
    )
    ap.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="experiments in parallel, each with num_threads = cores // jobs (default: one per core, "
        "1 thread each; --paper: one per GPU); 1 runs them in this process",
    )
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every run")
    ap.add_argument("--paper", action="store_true", help="the paper's protocol (configs/cifar10_tavaal.yaml): GPUs")
    ap.add_argument(
        "--data",
        default="fashionmnist",
        help="data set of the balanced and imbalanced settings (default: %(default)s; synthetic: the "
        "smoke preset's tiny images, and every setting with its own preset in a tiny version: tests)",
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results"), help="default: benchmarks/results")
    ap.add_argument(
        "--name",
        default=f"curves-{datetime.date.today():%Y-%m-%d}",
        help="run name: <out>/<name>.md and <out>/<name>/ (default: curves-<today>)",
    )
    ap.add_argument("--resume", action="store_true", help="continue the run <name>: skip experiments with raw JSON")
    ap.add_argument("--report-only", action="store_true", help="rebuild <name>.md and the PNGs from raw JSON")
    args = ap.parse_args(argv)
    if args.seeds < 1 or (args.jobs is not None and args.jobs < 1):
        ap.error("--seeds and --jobs must be >= 1")
    if args.paper and any(SETTINGS[s].preset for s in args.settings):
        ap.error("--paper: settings with a preset of their own (shapes: a CPU preset) have no paper protocol")
    return args


def protocol_of(args) -> tuple[str, str, list[str]]:
    """(protocol name, preset, overrides) for ``--paper`` / ``--data``; the user's ``--set`` comes last."""
    name = "paper" if args.paper else "smoke" if args.data == "synthetic" else "cpu"
    base, sets = PROTOCOLS[name]
    extra = PAPER_DATA.get(args.data, []) if args.paper else []
    return name, base, [*sets, f"data.name={args.data}", *extra, *args.set]


def setting_configs(args) -> dict[str, tuple[str, list[str]]]:
    """setting -> (preset, overrides) of its experiments, less num_threads, al.strategy and seed (``plan``)."""
    protocol, base, sets = protocol_of(args)
    configs = {}
    for name in args.settings:
        s = SETTINGS[name]
        if s.preset is None:
            configs[name] = (base, [*sets, *s.overrides])
        else:  # its own base: none of the protocol's overrides, nor data.name
            configs[name] = (s.preset, [*(s.smoke if protocol == "smoke" else s.overrides), *args.set])
    return configs


def recorded_settings(meta: dict) -> dict[str, dict]:
    """setting -> {"base", "overrides"} from a run.json; one written before settings had presets of their own
    holds the protocol's preset and overrides, which its settings extended with their own."""
    if "settings" in meta:
        return meta["settings"]
    return {
        name: {"base": meta["base"], "overrides": [*meta["overrides"], *s.overrides]}
        for name, s in SETTINGS.items()
        if s.preset is None
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    run_dir = out / args.name
    if args.report_only:
        print(f"wrote {write_report(out, args.name)}")
        return 0
    protocol = protocol_of(args)[0]
    configs = setting_configs(args)
    meta = {
        "protocol": protocol,
        "settings": {s: {"base": b, "overrides": o} for s, (b, o) in configs.items()},
        "invocations": [],
    }
    gpus = 0
    if args.paper:
        import torch

        gpus = torch.cuda.device_count()
    cpus = os.cpu_count() or 1
    jobs = args.jobs or (max(1, gpus) if args.paper else cpus)
    threads = max(1, cpus // jobs)
    try:
        old = recorded_run(run_dir, args.resume)
        if old is not None:
            before = recorded_settings(old)
            for s, (b, o) in configs.items():
                if s in before and (before[s]["base"], before[s]["overrides"]) != (b, o):
                    raise Refused(
                        f"{run_dir} ran {s} with {before[s]['base']} + {before[s]['overrides']}; resume it with the "
                        "same protocol and --set values"
                    )
            meta = {**old, "settings": {**before, **meta["settings"]}}  # a setting new to the run joins it
        todo, skipped = unfinished(run_dir, plan(args, configs, threads))
    except Refused as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    (run_dir / "raw").mkdir(parents=True, exist_ok=True)
    print(
        f"{run_dir}: {len(todo)} experiments to run, {len(skipped)} skipped (finished before), "
        f"{min(jobs, max(1, len(todo)))} jobs x {threads} threads",
        flush=True,
    )
    failed = run_recorded(todo, run_dir, meta, command_line("curves", argv), jobs, threads, len(skipped), gpus)
    print(f"wrote {write_report(out, args.name)}")
    if failed:
        print(f"{failed} experiments failed; rerun with --resume to retry them", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
