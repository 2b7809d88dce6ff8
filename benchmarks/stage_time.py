"""Where a TA-VAAL stage's time goes, with the local backend and the Ray backend (1 worker), in one run.

    python -m benchmarks.stage_time                               # Fashion-MNIST CPU preset, 3 stages each
    python -m benchmarks.stage_time --set train.epochs=30 --stages 2
    python -m benchmarks.stage_time --ray-modes kept              # only the kept worker group

Runs the same experiment (``--config``, default ``configs/fashionmnist_tavaal_cpu.yaml`` with ``--stages``
stages) with ``--backend local`` and with ``--backend ray`` in each of ``--ray-modes``: ``jobs`` (a
``TorchTrainer.fit()`` per training job) and ``kept`` (``backend.keep_workers``: one worker group for the
experiment). Ray: a local Ray started by the run, 1 training worker and 1 scoring worker of 1 logical CPU each
(so that the kept worker and a scorer fit on the machine together) running as many torch threads as this
machine has cores, as the local backend does. Each stage's time is split into parts, timed around the backend's
calls (``benchmarks.common.TimedBackend``) and, between them, from the stage record's own clocks:
  task + ranker training   ``backend.train_task`` (Ray: a TorchTrainer job, or a job on the kept group)
  evaluation               test-split accuracy (in the driver for both backends)
  VAE + discriminator      ``backend.train_vae`` (the same)
  scoring                  ``backend.score`` (r̂ of labeled + candidates, then the discriminator; Ray: Ray Data)
  selection                the rest of the query (r̂ normalization, sorting, top-b)
  checkpoint               the rest of the stage until the loop reports it: saving (and pruning) its checkpoint
Stage 1 runs on a cold Ray (worker processes start); the later query stages show the steady state. Prints,
per stage and part, local seconds, Ray seconds and Ray/local (our target: at most 1.3 for a stage of at
least 30 s), and writes the table to ``benchmarks/results/stage-time-<date>.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

if not __package__:  # run by path (python benchmarks/<script>.py, as older records say): as the module
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.stage_time", *sys.argv[1:]])

import tavaal  # noqa: F401  (sets OMP passive waiting before torch loads)
from benchmarks.common import ROOT, TimedBackend, write_results
from tavaal import experiment
from tavaal.backends import build_backend
from tavaal.config import load_config

RAY_MODES = {"jobs": [], "kept": ["backend.keep_workers=true"]}
PARTS = ("task + ranker training", "evaluation", "VAE + discriminator", "scoring", "selection", "checkpoint")


def run(cfg, out_dir: Path) -> tuple[dict, list]:
    """One experiment; returns ({stage: {part: seconds}}, records)."""
    backend = TimedBackend(build_backend(cfg.backend, cfg.data))

    def on_stage(record, path) -> None:
        part = backend.end_stage(record)
        print(
            f"  {cfg.backend.name} stage {record.stage}: {part['stage']:.1f} s, acc {record.accuracy:.4f}",
            flush=True,
        )

    records = experiment.run_experiment(cfg, backend=backend, out_dir=out_dir, log=lambda m: None, on_stage=on_stage)
    return backend.times, records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs/fashionmnist_tavaal_cpu.yaml"))
    ap.add_argument("--stages", type=int, default=3, help="AL stages per backend (all but the last query)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument(
        "--ray-modes",
        nargs="+",
        choices=list(RAY_MODES),
        default=list(RAY_MODES),
        help="jobs: a TorchTrainer.fit() per training job; kept: backend.keep_workers (default: both)",
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    args = ap.parse_args()
    cpus = os.cpu_count() or 1
    common = [f"al.stages={args.stages}", *args.set]
    ray_sets = [
        "backend.name=ray",
        "backend.num_workers=1",
        "backend.cpus_per_worker=1",
        "backend.score_cpus_per_actor=1",
        f"backend.threads_per_worker={cpus}",
        "backend.score_concurrency=1",
    ]
    modes = [("local", [])] + [(f"Ray, {m}", ray_sets + RAY_MODES[m]) for m in args.ray_modes]
    load0 = os.getloadavg()
    results = {}
    with tempfile.TemporaryDirectory(prefix="stage-time-") as tmp:
        for k, (name, sets) in enumerate(modes):
            cfg = load_config(args.config, common + sets)
            print(f"{name}: {args.stages} stages of {Path(args.config).name}", flush=True)
            results[name] = run(cfg, Path(tmp) / str(k))
    load1 = os.getloadavg()
    t_local, rec_local = results["local"]
    ray_names = [name for name, _ in modes[1:]]
    same = all([r.selected for r in rec_local] == [r.selected for r in results[n][1]] for n in ray_names)
    lines = [
        "| stage | part | local s | " + " | ".join(f"{n} s | {n} / local" for n in ray_names) + " |",
        "| --- | --- | --- |" + " --- | --- |" * len(ray_names),
    ]
    for stage in range(args.stages):
        for part in (*PARTS, "stage"):
            a = t_local[stage].get(part, 0.0)
            bs = [results[n][0][stage].get(part, 0.0) for n in ray_names]
            if a < 0.005 and all(b < 0.005 for b in bs):
                continue
            cells = [f"{b:.2f} | {b / a:.2f}" if a >= 0.005 else f"{b:.2f} | -" for b in bs]
            label = f"**{part}**" if part == "stage" else part
            lines.append(f"| {stage} | {label} | {a:.2f} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    write_results(
        args.out,
        "stage-time",
        "One TA-VAAL stage, part by part: local backend vs Ray backend (1 worker)",
        [
            f"config: {os.path.relpath(args.config, ROOT)} with {', '.join(common)}; Ray: {', '.join(ray_sets)} "
            f"(kept: + {', '.join(RAY_MODES['kept'])})",
            f"same selections with every backend: {'yes' if same else 'NO'}",
            "target: Ray / local <= 1.3 for a stage of at least 30 s",
        ],
        table,
        load0,
        load1,
    )


if __name__ == "__main__":
    main()
