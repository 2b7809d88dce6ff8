"""Active-learning curves of every strategy on Fashion-MNIST, balanced and imbalanced x10, mean ± std over seeds.

    python benchmarks/curves.py                                  # CPU protocol: 7 strategies x 3 seeds x 2 settings
    python benchmarks/curves.py --resume                         # after a kill: finished experiments are skipped
    python benchmarks/curves.py --report-only                    # rebuild the markdown and PNGs from raw/*.json
    python benchmarks/curves.py --paper --seeds 5 --jobs 4       # the paper's protocol: GPUs only (see below)

Strategies: random, entropy, coreset, lloss, lloss_rank, vaal, tavaal. Settings: ``balanced`` (the 60,000
training images as the pool) and ``imbalanced`` (``data.imbalance_ratio=10``, the even classes keep 600 of
their 6,000 images, as the paper builds imbalanced CIFAR-10; the test split stays balanced). Seed k gives every
strategy the same pool and the same initial labels, so seeds pair up for "seeds ahead of random".

CPU protocol (default; configs/fashionmnist_tavaal_cpu.yaml with CPU_PROTOCOL below), chosen by timing
experiments on the 2-core AMD EPYC machine this was written on (2026-11-25, other engineers' jobs running):
  100 initial labels + 100 per stage, 6 stages (100..600 labels): the steep part of the curve, where picks move
      the accuracy (random: 52% at 100, 71% at 200, 78% at 600 labels); 200/stage doubles training for flatter curves
  10 epochs (lr x 0.1 at epoch 8, ranker features detached after 6): a stage trains in 1-4 s on 1 thread
  1,000 candidates per stage: 10x the budget, as the paper's 10,000 for 1,000; scoring them takes < 1 s
  VAE/discriminator: 100 iterations, base_channels 16, batch 64 (the preset's VAE, a third of its iterations):
      the VAE is > 85% of a vaal/tavaal experiment, so its iterations set the benchmark's length
Measured (seconds, 1 torch thread, two experiments at a time, load average ~2.5 incl. these two):
  random, all 6 stages: 23 s; tavaal: 38 s per query (100 VAE iterations) -> ~215 s for 6 stages;
  vaal (2 VAE steps per iteration, as VAAL's code): 65 s per query -> ~350 s; coreset 35 s, lloss 39 s
  (lloss_rank trains the same ranker: ~39 s; entropy, not timed: between random and coreset, ~30 s).
  -> 12.2 min per seed and setting, x 6 = 73 experiment-minutes, / 2 jobs = ~37 min on an otherwise idle
  2-core machine; ~60 min when other processes take half of it (VAE iterations were 1.8x slower at load 8.7).
  2 jobs x 1 thread vs 1 job x 2 threads: random 23.4 s per experiment with two running (11.7 s each) vs 13.8 s
  alone on 2 threads; tavaal's VAE 38 s per 100 iterations with two running (19 s each) vs 26 s alone on 2
  threads: 2 x 1 gets 15-30% more done, hence the default of one job per core, 1 thread each.
  More VAE iterations (--set vae.iterations=300, the preset's) cost ~2.5x the time.
  A run's numbers depend on its thread count (float reduction order): compare runs made with the same --jobs.

--paper: configs/cifar10_tavaal.yaml on ``--data`` (ResNet-18, 1,000 initial + 1,000 per stage, 10 stages,
200 epochs, 10,000 candidates, the published VAE with the official iteration formula): about 1 GPU-hour per
stage, i.e. 2 x 7 x 10 stages x seeds GPU-hours; needs GPUs (one experiment per GPU: ``--jobs`` defaults to the
GPU count, each worker sees one GPU). ``--data synthetic`` runs configs/smoke.yaml's tiny images (tests).

Writes ``<out>/<name>.md`` (per setting: accuracy per stage, AUC and last-stage label entropy per strategy,
improvement over random with seeds ahead, a summary line per comparison) and ``<out>/<name>/<setting>.png``
(accuracy ± std, improvement over random, label entropy vs labels); each experiment's records go to
``<out>/<name>/raw/<setting>-<strategy>-seed<k>.json`` as soon as it finishes.
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
from pathlib import Path

import tavaal  # noqa: F401  (sets OMP passive waiting before torch loads)

import numpy as np

from tavaal.config import load_config
from tavaal.errors import TavaalError
from tavaal.report import plot_table, summarize
from tavaal.sweep import objective_metrics

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ("random", "entropy", "coreset", "lloss", "lloss_rank", "vaal", "tavaal")
SETTINGS = {"balanced": [], "imbalanced": ["data.imbalance_ratio=10"]}  # minority: the even classes (paper)
RIVALS = ("random", "vaal", "lloss", "lloss_rank")  # tavaal's summary lines
CPU_PROTOCOL = ["al.initial=100", "al.budget=100", "al.stages=6", "al.subset_size=1000", "train.epochs=10",
                "train.milestones=[8]", "train.ranker_stop_grad_epoch=6", "vae.iterations=100"]
PROTOCOLS = {  # name -> (preset, overrides); --data sets data.name on top
    "cpu": ("configs/fashionmnist_tavaal_cpu.yaml", CPU_PROTOCOL),
    "paper": ("configs/cifar10_tavaal.yaml", []),
    "smoke": ("configs/smoke.yaml", []),
}
PAPER_DATA = {"fashionmnist": ["vae.latent_dim=28"]}  # official code's Fashion-MNIST VAE


# ---------------------------------------------------------------- experiments (run in worker processes)


def run_one(base: str, overrides: list[str], path: str) -> dict:
    """One experiment; its records are written to ``path`` (atomically) and returned."""
    from tavaal.experiment import run_experiment

    cfg = load_config(ROOT / base, overrides)
    t = time.perf_counter()
    records = run_experiment(cfg, out_dir=None, log=lambda msg: None)
    result = {"config": cfg.to_dict(), "overrides": overrides, "minutes": (time.perf_counter() - t) / 60,
              "records": [r.to_dict() for r in records]}
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, path)
    return result


def _init_worker(gpus) -> None:
    """Each worker process sees one GPU (paper protocol); before torch initializes CUDA."""
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus.get())


def plan(args, protocol: tuple[str, list[str]], threads: int) -> list[tuple[str, str, int, list[str]]]:
    """(setting, strategy, seed, overrides) for every experiment, seed by seed so a partial run is useful."""
    base_sets = [*protocol[1], f"num_threads={threads}"] if threads else list(protocol[1])
    return [(setting, strategy, seed,
             [*base_sets, *SETTINGS[setting], f"al.strategy={strategy}", f"seed={seed}", *args.set])
            for seed in range(args.seeds) for setting in args.settings for strategy in args.strategies]


def raw_path(run_dir: Path, setting: str, strategy: str, seed: int) -> Path:
    return run_dir / "raw" / f"{setting}-{strategy}-seed{seed}.json"


def eta_minutes(done: dict[str, list[float]], remaining: list[str], jobs: int) -> float:
    """Remaining experiments x their strategy's mean minutes so far (else the overall mean), over ``jobs``."""
    every = [m for ms in done.values() for m in ms]
    mean = float(np.mean(every)) if every else 0.0
    return sum(float(np.mean(done[s])) if done.get(s) else mean for s in remaining) / max(1, jobs)


def run_all(todo: list, base: str, run_dir: Path, jobs: int, gpus: int) -> int:
    """Run ``todo`` with ``jobs`` worker processes (in this process for 1 job); returns the number that failed."""
    done: dict[str, list[float]] = {}
    failed, t0 = 0, time.perf_counter()
    left = [strategy for _, strategy, _, _ in todo]

    def report(i: int, setting: str, strategy: str, seed: int, result: dict | None, err: str = "") -> None:
        left.remove(strategy)
        elapsed = (time.perf_counter() - t0) / 60
        if result is None:
            print(f"[{i}/{len(todo)}] {setting} {strategy} seed {seed}: FAILED {err}", flush=True)
            return
        last = result["records"][-1]
        done.setdefault(strategy, []).append(result["minutes"])
        print(f"[{i}/{len(todo)}] {setting} {strategy} seed {seed}: acc {last['accuracy'] * 100:.2f}% at "
              f"{last['num_labeled']} labels, {result['minutes']:.1f} min; elapsed {elapsed:.1f} min, "
              f"ETA {eta_minutes(done, left, jobs):.0f} min", flush=True)

    if jobs == 1:
        for i, (setting, strategy, seed, sets) in enumerate(todo, 1):
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
        futures = {pool.submit(run_one, base, sets, str(raw_path(run_dir, setting, strategy, seed))):
                   (setting, strategy, seed) for setting, strategy, seed, sets in todo}
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


# ---------------------------------------------------------------- report


def load_raw(run_dir: Path) -> dict[str, dict[str, dict[int, dict]]]:
    """setting -> strategy -> seed -> the experiment's JSON."""
    out: dict = {}
    for path in sorted((run_dir / "raw").glob("*.json")):
        setting, strategy, seed = path.stem.rsplit("-", 2)
        out.setdefault(setting, {}).setdefault(strategy, {})[int(seed.removeprefix("seed"))] = json.loads(
            path.read_text())
    return out


def ordered(names) -> list[str]:
    return [s for s in STRATEGIES if s in names] + sorted(set(names) - set(STRATEGIES))


def paired(runs: dict, a: str, b: str, metric) -> tuple[float, int, int]:
    """(mean of metric(a) - metric(b) over the seeds both have, seeds where a is ahead, those seeds)."""
    seeds = sorted(set(runs.get(a, {})) & set(runs.get(b, {})))
    diffs = [metric(runs[a][k]["records"]) - metric(runs[b][k]["records"]) for k in seeds]
    return (float(np.mean(diffs)) if diffs else float("nan")), sum(d > 0 for d in diffs), len(seeds)


def auc(records: list[dict]) -> float:
    return objective_metrics(records)["auc"]


def at_stage(stage: int):
    return lambda records: records[stage]["accuracy"]


def mean_std(values) -> str:
    return f"{np.mean(values):.2f} ± {np.std(values):.2f}"


def setting_section(setting: str, runs: dict, name: str) -> list[str]:
    """Tables and summary lines of one setting (``runs``: strategy -> seed -> experiment JSON)."""
    names = ordered(runs)
    table = summarize({s: _cells(runs[s]) for s in names})
    labels = [r["labels"] for r in table[names[0]]]
    data = next(iter(runs[names[0]].values()))["config"]["data"]
    what = ("the whole training split as the pool" if data["imbalance_ratio"] <= 1 else
            f"imbalance ratio {data['imbalance_ratio']:g}: minority classes ({data['minority_classes']}) keep "
            f"1/{data['imbalance_ratio']:g} of their training images; test split balanced")
    head = "| labels | " + " | ".join(names) + " |"
    rule = "| --- |" + " --- |" * len(names)
    lines = [f"## {setting}", "", f"{data['name']}, {what}.", "", "Test accuracy (%), mean ± std over seeds:", "",
             head, rule]
    for i, n in enumerate(labels):
        lines.append(f"| {n} | " + " | ".join(f"{table[s][i]['mean'] * 100:.2f} ± {table[s][i]['std'] * 100:.2f}"
                                               if i < len(table[s]) else "—" for s in names) + " |")
    lines.append("| **AUC** | " + " | ".join(mean_std([auc(e["records"]) * 100 for e in runs[s].values()])
                                             for s in names) + " |")
    lines.append("| label entropy (norm), last stage | " + " | ".join(
        f"{np.mean([e['records'][-1]['label_entropy_norm'] for e in runs[s].values()]):.3f} ± "
        f"{np.std([e['records'][-1]['label_entropy_norm'] for e in runs[s].values()]):.3f}" for s in names) + " |")
    lines.append("| seeds | " + " | ".join(str(len(runs[s])) for s in names) + " |")
    others = [s for s in names if s != "random"]
    if "random" in runs and others:
        lines += ["", "Improvement over random (pt, mean over paired seeds; seeds ahead / seeds):", "",
                  "| labels | " + " | ".join(others) + " |", "| --- |" + " --- |" * len(others)]
        for i, n in enumerate(labels):
            lines.append(f"| {n} | " + " | ".join(_diff(runs, s, "random", at_stage(i)) for s in others) + " |")
        lines.append("| **AUC** | " + " | ".join(_diff(runs, s, "random", auc) for s in others) + " |")
    lines += ["", "Summary:", ""]
    for rival in (r for r in RIVALS if r in runs and "tavaal" in runs):
        d, ahead, n = paired(runs, "tavaal", rival, auc)
        f, f_ahead, _ = paired(runs, "tavaal", rival, at_stage(len(labels) - 1))
        lines.append(f"- tavaal vs {rival}: {d * 100:+.1f} pt AUC ({ahead}/{n} seeds ahead), {f * 100:+.1f} pt at "
                     f"{labels[-1]} labels ({f_ahead}/{n} seeds ahead)")
    ent = {s: [e["records"][-1]["label_entropy_norm"] for e in runs[s].values()] for s in ("tavaal", "random")
           if s in runs}
    if len(ent) == 2:
        lines.append(f"- label entropy (norm) of the labeled set at {labels[-1]} labels (paper Fig. 7a): tavaal "
                     f"{np.mean(ent['tavaal']):.3f} ± {np.std(ent['tavaal']):.3f}, random "
                     f"{np.mean(ent['random']):.3f} ± {np.std(ent['random']):.3f}")
    lines += ["", f"![{setting}]({name}/{setting}.png)", ""]
    return lines


def _cells(by_seed: dict) -> dict:
    """labels -> {"accuracy", "entropy", "entropy_norm": [per seed]}, the shape ``tavaal.report.summarize`` takes."""
    cells: dict = {}
    for k in sorted(by_seed):
        for r in by_seed[k]["records"]:
            cell = cells.setdefault(r["num_labeled"], {"accuracy": [], "entropy": [], "entropy_norm": []})
            cell["accuracy"].append(r["accuracy"])
            cell["entropy"].append(r["label_entropy"])
            cell["entropy_norm"].append(r["label_entropy_norm"])
    return cells


def _diff(runs: dict, a: str, b: str, metric) -> str:
    d, ahead, n = paired(runs, a, b, metric)
    return f"{d * 100:+.2f} ({ahead}/{n})" if n else "—"


def write_figure(setting: str, runs: dict, path: Path) -> None:
    """Accuracy ± std, accuracy - random, label entropy (norm) vs labels: one PNG per setting."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    table = summarize({s: _cells(runs[s]) for s in ordered(runs)})
    fig = Figure(figsize=(15, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    panels = (("mean", 100, "test accuracy (%)"), ("vs_random", 100, "accuracy - random (pt)"),
              ("entropy_norm", 1, "label entropy / log C"))
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
    lines = [f"# Active-learning curves: {', '.join(ordered({s for r in raw.values() for s in r}))}", "",
             f"- protocol: {meta['protocol']}: `{meta['base']}` with {', '.join(meta['overrides']) or 'no overrides'}"
             " (+ the setting's overrides, al.strategy, seed)",
             "- std over seeds with ddof 0 (as `tavaal.report`); AUC: trapezoid of accuracy over labels divided by "
             "the label range (`tavaal.sweep.objective_metrics`), in %",
             "- minutes per experiment (mean): " + ", ".join(
                 f"{s} {np.mean([e['minutes'] for r in raw.values() for e in r.get(s, {}).values()]):.1f}"
                 for s in ordered({s for r in raw.values() for s in r}))]
    for inv in meta["invocations"]:
        lines.append(f"- run: `{inv['command']}` on {inv['date']}, git {inv['git']}, {inv['machine']}; "
                     f"{inv['jobs']} jobs x {inv['threads'] or 'default'} threads, {inv['ran']} experiments "
                     f"({inv['skipped']} skipped), {inv['minutes']:.1f} min, load average (1 min) before / after: "
                     f"{inv['load'][0]:.2f} / {inv['load'][1]:.2f}")
    lines.append("")
    for setting in [s for s in SETTINGS if s in raw] + sorted(set(raw) - set(SETTINGS)):
        lines += setting_section(setting, raw[setting], name)
        write_figure(setting, raw[setting], run_dir / f"{setting}.png")
    path = out / f"{name}.md"
    path.write_text("\n".join(lines))
    return path


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES, metavar="NAME",
                    help="default: all seven")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per strategy and setting (default: 3)")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS), help="default: both")
    ap.add_argument("--jobs", type=int, default=None,
                    help="experiments in parallel, each with num_threads = cores // jobs (default: one per core, "
                         "1 thread each; --paper: one per GPU); 1 runs them in this process")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every run")
    ap.add_argument("--paper", action="store_true", help="the paper's protocol (configs/cifar10_tavaal.yaml): GPUs")
    ap.add_argument("--data", default="fashionmnist",
                    help="data set (default: %(default)s; synthetic: the smoke preset's tiny images, for tests)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results"), help="default: benchmarks/results")
    ap.add_argument("--name", default=f"curves-{datetime.date.today():%Y-%m-%d}",
                    help="run name: <out>/<name>.md and <out>/<name>/ (default: curves-<today>)")
    ap.add_argument("--resume", action="store_true", help="continue the run <name>: skip experiments with raw JSON")
    ap.add_argument("--report-only", action="store_true", help="rebuild <name>.md and the PNGs from raw JSON")
    args = ap.parse_args(argv)
    if args.seeds < 1 or (args.jobs is not None and args.jobs < 1):
        ap.error("--seeds and --jobs must be >= 1")
    return args


def protocol_of(args) -> tuple[str, str, list[str]]:
    """(protocol name, preset, overrides) for ``--paper`` / ``--data``; the user's ``--set`` comes last."""
    name = "paper" if args.paper else "smoke" if args.data == "synthetic" else "cpu"
    base, sets = PROTOCOLS[name]
    extra = PAPER_DATA.get(args.data, []) if args.paper else []
    return name, base, [*sets, f"data.name={args.data}", *extra, *args.set]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    run_dir = out / args.name
    if args.report_only:
        print(f"wrote {write_report(out, args.name)}")
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from scoring import git_rev, machine  # same header fields as the other benchmarks; here, not at the top: the
    # worker processes re-import this module and need none of scoring.py's imports (ray)

    protocol, base, sets = protocol_of(args)
    meta_path = run_dir / "run.json"
    meta = {"protocol": protocol, "base": base, "overrides": sets, "invocations": []}
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if not args.resume:
            print(f"error: {run_dir} holds a run; pass --resume to continue it or --name for a new one",
                  file=sys.stderr)
            return 2
        if (old["base"], old["overrides"]) != (base, sets):
            print(f"error: {run_dir} was run with {old['base']} + {old['overrides']}; resume it with the same "
                  "protocol and --set values", file=sys.stderr)
            return 2
        meta = old
    gpus = 0
    if args.paper:
        import torch

        gpus = torch.cuda.device_count()
    cpus = os.cpu_count() or 1
    jobs = args.jobs or (max(1, gpus) if args.paper else cpus)
    threads = max(1, cpus // jobs)
    todo = plan(args, (base, sets), threads)
    try:  # every config checked before the first experiment starts
        for _, _, _, overrides in todo:
            load_config(ROOT / base, overrides)
    except TavaalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    skipped = [t for t in todo if raw_path(run_dir, *t[:3]).exists()]
    todo = [t for t in todo if t not in skipped]
    (run_dir / "raw").mkdir(parents=True, exist_ok=True)
    print(f"{run_dir}: {len(todo)} experiments to run, {len(skipped)} skipped (finished before), "
          f"{min(jobs, max(1, len(todo)))} jobs x {threads} threads", flush=True)
    inv = {"command": "python " + " ".join([os.path.relpath(sys.argv[0], ROOT) if argv is None else
                                            "benchmarks/curves.py", *(sys.argv[1:] if argv is None else argv)]),
           "date": f"{datetime.datetime.now():%Y-%m-%d %H:%M}", "git": git_rev(), "machine": machine(),
           "jobs": jobs, "threads": threads, "ran": len(todo), "skipped": len(skipped), "minutes": 0.0,
           "load": [os.getloadavg()[0], float("nan")]}
    meta["invocations"].append(inv)
    meta_path.write_text(json.dumps(meta, indent=1))
    t0 = time.perf_counter()
    failed = run_all(todo, base, run_dir, min(jobs, max(1, len(todo))), gpus) if todo else 0
    inv["minutes"], inv["load"][1] = (time.perf_counter() - t0) / 60, os.getloadavg()[0]
    meta_path.write_text(json.dumps(meta, indent=1))
    print(f"wrote {write_report(out, args.name)}")
    if failed:
        print(f"{failed} experiments failed; rerun with --resume to retry them", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
