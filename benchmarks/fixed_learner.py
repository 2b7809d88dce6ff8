"""Selection apart from training: every strategy's labeled sets, from a curves.py run, retrained with one fixed learner.

    python -m benchmarks.fixed_learner benchmarks/results/curves-2026-11-25            # every experiment of the run
    python -m benchmarks.fixed_learner RUN_DIR --resume                                # after a kill
    python -m benchmarks.fixed_learner RUN_DIR --report-only                           # rebuild the markdown
    python -m benchmarks.fixed_learner RUN_DIR --settings imbalanced --strategies random tavaal

A strategy's curve in curves.py mixes two things: which samples it picks, and how its own task model trains (the
learning-loss strategies and TA-VAAL train a ranker beside it, with its gradient in the encoder). This script holds
the second fixed: for each experiment of ``RUN_DIR`` (``RUN_DIR/raw/<setting>-<strategy>-seed<k>.json``) it rebuilds
the labeled set of every stage — the run's initial labels, drawn as the run drew them (its oracle's
``initial_state``, i.e. ``initial_pool`` with the experiment's seed), plus the records' ``selected`` of the stages
before — checks it against the record's ``num_labeled`` and ``label_counts``, and trains on it random's recipe: the
experiment's own config with ``al.strategy=random`` (no ranker, no ranking loss), the same epochs and thread count,
and the stage's own seed ``derive_seed(seed, "stage", stage)``, through the same ``tavaal.experiment.run_stage``
(train, evaluate) the run used. Random's own experiments are retrained too: with the same recipe and seeds they
give random's recorded accuracies exactly, which the report checks (a known answer; a run made by other code, or
with other threads, would not).

The report, ``RUN_DIR.fixed-learner.md``, per setting: each strategy's accuracy (segmentation: mIoU) per stage and
its AUC, from its own run and from the fixed learner, mean ± std over seeds; and the paired differences against
random with 95% intervals (Student's t over seeds), for the fixed learner (what the picks are worth on their own)
and for the strategy's own runs (picks and training together). Each retrained experiment's records go to
``RUN_DIR/fixed-learner/<setting>-<strategy>-seed<k>.json`` as soon as it finishes; ``--resume`` skips those.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import datetime
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

if not __package__:  # run by path (python benchmarks/<script>.py, as older records say): as the module
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.fixed_learner", *sys.argv[1:]])

import numpy as np

import tavaal  # noqa: F401  (sets OMP passive waiting before torch loads)
from benchmarks.common import (
    ROOT,
    auc,
    command_line,
    git_rev,
    invocation,
    invocation_line,
    load_raw,
    mean_std,
    ordered,
    paired_cell,
    platform_line,
    record_invocation,
    write_json,
)
from tavaal.core.metrics import stage_quality

SUBDIR = "fixed-learner"


# ---------------------------------------------------------------- rebuilding and retraining (worker processes)


def labeled_sets(cfg, data, records: list[dict]):
    """The ``PoolState`` each stage of an experiment trained on (``cfg``: its config, ``data``: as its oracle
    started it), checked against the records: a stage's ``num_labeled`` and ``label_counts`` must match exactly."""
    from tavaal.core.metrics import label_counts
    from tavaal.oracle import build_oracle

    pool = build_oracle(cfg, data).initial_state(data)
    pools = []
    for r in records:
        counts = label_counts(data.train_targets, pool.labeled_indices(), data.num_classes).tolist()
        if pool.num_labeled != r["num_labeled"] or counts != r["label_counts"]:
            raise ValueError(
                f"stage {r['stage']}: rebuilt {pool.num_labeled} labels with class counts {counts}, the record "
                f"trained on {r['num_labeled']} with {r['label_counts']}"
            )
        pools.append(pool)
        if r["selected"]:
            pool = pool.label(np.asarray(r["selected"], dtype=np.int64), r["stage"] + 1)
    return pools


def retrain(raw: dict) -> list[dict]:
    """Random's recipe on each stage's labeled set of one experiment (``raw``: its curves.py JSON): the records of
    the retrained stages, as ``run_experiment`` would make them."""
    import torch

    from tavaal.backends import LocalBackend
    from tavaal.config import from_dict
    from tavaal.core.precision import for_device, resolve_device
    from tavaal.core.training import ModelSpec
    from tavaal.data import build_dataset
    from tavaal.experiment import run_stage
    from tavaal.oracle import build_oracle
    from tavaal.strategies import build_strategy

    cfg = from_dict(raw["config"])
    cfg = dataclasses.replace(cfg, al=dataclasses.replace(cfg.al, strategy="random"))
    device = resolve_device(cfg.device)
    cfg = for_device(cfg, device)  # as run_experiment resolves it
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    data = build_dataset(cfg.data, cfg.seed)
    data, _ = build_oracle(cfg, data).start(data)
    pools = labeled_sets(cfg, data, raw["records"])
    spec = ModelSpec(cfg.model.name, data.input_shape, data.num_classes, cfg.model.ranker_hidden)
    backend, strategy = LocalBackend(), build_strategy("random")
    backend.prepare(data, device)
    out = []
    for stage, pool in enumerate(pools):
        last = dataclasses.replace(cfg, al=dataclasses.replace(cfg.al, stages=stage + 1))  # train, evaluate, no query
        record, _, _ = run_stage(last, stage, pool, data, spec, strategy, backend, device, lambda msg: None)
        out.append(record.to_dict())
    backend.close()
    return out


def retrain_one(src: str, dst: str) -> dict:
    """Retrain the experiment of raw JSON ``src``; its records go to ``dst`` (atomically) and are returned."""
    raw = json.loads(Path(src).read_text())
    t = time.perf_counter()
    records = retrain(raw)
    result = {"source": Path(src).name, "minutes": (time.perf_counter() - t) / 60, "records": records}
    write_json(dst, result)
    return result


# ---------------------------------------------------------------- report


def reproduced(own: dict, fixed: dict) -> tuple[float, int]:
    """(largest |quality difference|, stages compared) between random's own records and its retrained ones."""
    diffs = [
        abs(stage_quality(a) - stage_quality(b))
        for k in sorted(set(own.get("random", {})) & set(fixed.get("random", {})))
        for a, b in zip(own["random"][k]["records"], fixed["random"][k]["records"])
    ]
    return (max(diffs) if diffs else float("nan")), len(diffs)


def _cell(runs: dict, s: str, metric) -> str:
    if s not in runs:
        return "—"
    return mean_std([metric(e["records"]) * 100 for e in runs[s].values()])


def setting_section(setting: str, own: dict, fixed: dict) -> list[str]:
    """Tables of one setting (``own``, ``fixed``: strategy -> seed -> JSON)."""
    names = ordered(fixed)
    own = {s: {k: own[s][k] for k in fixed[s] if k in own.get(s, {})} for s in names}  # the seeds retrained
    first = next(iter(fixed[names[0]].values()))["records"]
    labels = [r["num_labeled"] for r in first]
    metric = "mIoU" if first[0].get("miou") is not None else "accuracy"
    stages = [lambda rs, i=i: stage_quality(rs[i]) for i in range(len(labels))]
    worst, n = reproduced(own, fixed)
    check = (
        "no random experiments retrained: the recipe is unchecked"
        if n == 0
        else f"random's own sets, retrained: largest |difference| from its recorded {metric} "
        f"{worst * 100:.4f} pt over {n} stages"
        + (" (reproduced exactly)" if worst == 0 else " (NOT reproduced: another code version or thread count?)")
    )
    head = "| " + " | ".join(str(n) for n in labels) + " | AUC |"
    lines = [
        f"## {setting}",
        "",
        f"Check: {check}.",
        "",
        f"Test {metric} (%), mean ± std over seeds: each strategy's own run, and the fixed learner (random's recipe) "
        "on the same labeled sets:",
        "",
        "| strategy | learner " + head,
        "| --- | --- |" + " --- |" * (len(labels) + 1),
    ]
    for s in names:
        for learner, runs in (("own", own), ("fixed", fixed)):
            lines.append(f"| {s} | {learner} | " + " | ".join(_cell(runs, s, m) for m in [*stages, auc]) + " |")
    lines += ["", "Seeds: " + ", ".join(f"{s} {len(fixed[s])}" for s in names) + "."]
    others = [s for s in names if s != "random"]
    if "random" in fixed and others:
        lines += [
            "",
            f"Against random (pt {metric}, mean [95% interval] over paired seeds, Student's t): fixed, the picks on "
            "their own (both sides trained by the fixed learner); own, picks and training together (curves.py's "
            "comparison):",
            "",
            "| strategy | learner " + head,
            "| --- | --- |" + " --- |" * (len(labels) + 1),
        ]
        for s in others:
            for learner, runs in (("fixed", fixed), ("own", own)):
                lines.append(
                    f"| {s} | {learner} | "
                    + " | ".join(paired_cell(runs, s, "random", m) for m in [*stages, auc])
                    + " |"
                )
    lines.append("")
    return lines


def write_report(run_dir: Path) -> Path:
    """``RUN_DIR.fixed-learner.md`` from the run's raw JSON and the retrained JSON alone."""
    own, fixed = load_raw(run_dir), load_raw(run_dir, SUBDIR)
    if not fixed:
        raise SystemExit(f"error: no retrained experiments in {run_dir / SUBDIR}")
    meta_path = run_dir / SUBDIR / "invocations.json"
    invocations = json.loads(meta_path.read_text()) if meta_path.exists() else []
    shown = run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir
    lines = [
        f"# What the picks are worth on their own: {run_dir.name}, retrained with one fixed learner",
        "",
        f"- source: `{shown}` (curves.py), each experiment's labeled sets rebuilt from its "
        "initial labels and `selected` records, checked against its `num_labeled` and `label_counts`",
        "- fixed learner: the experiment's config with al.strategy=random (no ranker), the stage's own seed, through "
        "tavaal.experiment.run_stage (benchmarks/fixed_learner.py's help)",
        "- std over seeds with ddof 0; AUC: trapezoid over labels divided by the label range, in %",
    ]
    lines += [invocation_line(inv, "experiments retrained") for inv in invocations]
    if not invocations:
        lines.append(
            f"- report written on {datetime.datetime.now():%Y-%m-%d %H:%M}, git {git_rev()}, {platform_line()}"
        )
    lines.append("")
    for setting in sorted(fixed):
        lines += setting_section(setting, own.get(setting, {}), fixed[setting])
    path = run_dir.with_name(run_dir.name + ".fixed-learner.md")
    path.write_text("\n".join(lines))
    return path


# ---------------------------------------------------------------- command line


def run_all(todo: list[tuple[Path, Path]], jobs: int) -> int:
    """Retrain ``todo`` ((source, destination) pairs) with ``jobs`` worker processes; returns how many failed."""
    failed, t0 = 0, time.perf_counter()

    def report(i: int, src: Path, result: dict | None, err: str = "") -> None:
        if result is None:
            print(f"[{i}/{len(todo)}] {src.stem}: FAILED {err}", flush=True)
            return
        last = result["records"][-1]
        print(
            f"[{i}/{len(todo)}] {src.stem}: {stage_quality(last) * 100:.2f}% at {last['num_labeled']} labels, "
            f"{result['minutes']:.1f} min; elapsed {(time.perf_counter() - t0) / 60:.1f} min",
            flush=True,
        )

    if jobs == 1:
        for i, (src, dst) in enumerate(todo, 1):
            try:
                report(i, src, retrain_one(str(src), str(dst)))
            except Exception as e:  # noqa: BLE001 - one failed experiment must not lose the others
                failed += 1
                report(i, src, None, f"{type(e).__name__}: {e}")
        return failed
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
        futures = {pool.submit(retrain_one, str(src), str(dst)): src for src, dst in todo}
        for i, fut in enumerate(cf.as_completed(futures), 1):
            try:
                report(i, futures[fut], fut.result())
            except Exception as e:  # noqa: BLE001 - as above
                failed += 1
                report(i, futures[fut], None, f"{type(e).__name__}: {e}")
    return failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", metavar="RUN_DIR", help="a curves.py run directory (holding raw/*.json)")
    ap.add_argument("--settings", nargs="+", default=None, help="only these settings (default: every one)")
    ap.add_argument("--strategies", nargs="+", default=None, help="only these strategies (random is always retrained)")
    ap.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="experiments retrained in parallel (default: cores // the run's num_threads); 1: in this process",
    )
    ap.add_argument("--resume", action="store_true", help="skip experiments already retrained")
    ap.add_argument("--report-only", action="store_true", help="rebuild RUN_DIR.fixed-learner.md from the JSON")
    args = ap.parse_args(argv)
    run_dir = Path(args.run_dir).resolve()
    if args.jobs is not None and args.jobs < 1:
        ap.error("--jobs must be >= 1")
    if not sorted((run_dir / "raw").glob("*.json")):
        print(f"error: {run_dir / 'raw'} holds no experiments (is it a curves.py run directory?)", file=sys.stderr)
        return 2
    if args.report_only:
        print(f"wrote {write_report(run_dir)}")
        return 0
    out = run_dir / SUBDIR
    todo = []
    for src in sorted((run_dir / "raw").glob("*.json")):
        setting, strategy, _ = src.stem.rsplit("-", 2)
        if args.settings and setting not in args.settings:
            continue
        if args.strategies and strategy not in {*args.strategies, "random"}:
            continue
        todo.append((src, out / src.name))
    done = [t for t in todo if t[1].exists()]
    if done and not args.resume:
        print(f"error: {out} holds retrained experiments; pass --resume to continue", file=sys.stderr)
        return 2
    todo = [t for t in todo if t not in done]
    threads = json.loads(todo[0][0].read_text())["config"].get("num_threads") if todo else None
    jobs = args.jobs or max(1, (os.cpu_count() or 1) // (threads or os.cpu_count() or 1))
    out.mkdir(parents=True, exist_ok=True)
    print(f"{run_dir}: {len(todo)} experiments to retrain, {len(done)} skipped, {min(jobs, max(1, len(todo)))} jobs")
    meta_path = out / "invocations.json"
    invocations = json.loads(meta_path.read_text()) if meta_path.exists() else []
    inv = invocation(command_line("fixed_learner", argv), ran=len(todo), skipped=len(done))
    failed = record_invocation(
        inv,
        lambda: meta_path.write_text(json.dumps([*invocations, inv], indent=1)),
        lambda: run_all(todo, min(jobs, max(1, len(todo)))) if todo else 0,
    )
    print(f"wrote {write_report(run_dir)}")
    if failed:
        print(f"{failed} experiments failed; rerun with --resume to retry them", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
