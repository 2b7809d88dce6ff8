"""One published-protocol TA-VAAL stage, part by part, for each speed setting side by side.

    python -m benchmarks.paper_stage                                  # 2 task epochs, 4 VAE iterations a setting
    python -m benchmarks.paper_stage --epochs 4 --vae-iterations 42 --settings fp32 all
    python -m benchmarks.paper_stage --smoke                          # seconds: the smoke preset, tiny counts

The published protocol's stage 1 (``configs/cifar10_tavaal.yaml`` on real Fashion-MNIST: data.name=fashionmnist,
vae.latent_dim=28; 1,000 random labels, 10,000 random candidates, batch 128, CIFAR ResNet-18 with a 1-channel stem,
LossNet 128, the published VAE of 128..1024 channels), shortened to ``--epochs`` task epochs and
``--vae-iterations`` VAE/discriminator iterations, run once per speed setting in this one process, in this order:
  fp32           today: fp32, NCHW, today's 28x28 VAE (1x1 bottleneck, 32x32 decoder cropped), batch 512 for
                 evaluation and scoring
  bf16           fp32 + bf16 autocast (train.precision=bf16)          channels_last  fp32 + train.channels_last
  vae28          fp32 + the published 28x28 VAE shape (2x2x1024, decoder 4 -> 7 -> 14 -> 28)
  batch128       fp32 + al.score_batch_size=128                       all            all four levers
  all+malloc     all + glibc malloc serving large buffers from its heap and keeping freed memory (mallopt
                 M_MMAP_THRESHOLD 256 MiB, M_TRIM_THRESHOLD 1 GiB); last, since it cannot be undone in the process
Every setting runs ``experiment.run_stage`` (the real loop: train, evaluate, r̂, VAE + discriminator, scoring,
selection) from the same seed, timed around the backend's calls (``common.TimedBackend``), after an untimed
warm-up stage of the same setting at a small size (``WARM``: kernels, batch shapes, first allocations). Parts: task
training per iteration; evaluation (test split + the labeled set's fit); VAE + D per iteration; r̂ (labeled +
candidates); scoring (discriminator, candidates + labeled); selection; the stage. Page faults are the process's
minor faults (``getrusage``) per VAE iteration. The projection puts the preset's epochs (200) and the official
iteration count (8,593 at 1,000 labels) on the measured per-iteration times. Quality: test accuracy after the
shortened stage, the VAE loss of the last iteration, the discriminator loss over the last tenth, and the share of
the selected set also selected by fp32; ``--noise-seeds`` reruns the last setting (``--noise-all``: every setting)
with other seeds (other labels, candidates and inits) to show how far accuracy moves between runs of the same
setting. ``--profile`` adds a ``torch.profiler`` table of the VAE iteration for the first and the last setting. Writes
``benchmarks/results/paper-stage-<date>.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import resource
import sys
from collections import defaultdict
from pathlib import Path

if not __package__:  # run by path (python benchmarks/<script>.py, as older records say): as the module
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.paper_stage", *sys.argv[1:]])

import tavaal  # noqa: F401  (sets OMP passive waiting before torch loads)

# isort: split
import torch

from benchmarks.common import ROOT, TimedBackend, write_results
from tavaal.backends import build_backend
from tavaal.config import load_config
from tavaal.core.pool import initial_pool
from tavaal.core.precision import for_device
from tavaal.core.seeding import numpy_rng
from tavaal.core.training import ModelSpec
from tavaal.core.vae_training import VAETraining, vae_iterations
from tavaal.data import build_dataset
from tavaal.experiment import run_stage
from tavaal.models import vae as vae_module
from tavaal.strategies import build_strategy
from tavaal.strategies.scorers import TaskScorer

CPU = torch.device("cpu")
# the settings' baseline, whatever the preset's defaults: fp32, NCHW, batch 512 (as before the levers)
PAPER = [
    "data.name=fashionmnist",
    "vae.latent_dim=28",
    "device=cpu",
    "al.score_batch_size=512",
    "train.precision=fp32",
    "train.channels_last=false",
]
LEVERS = {
    "bf16": ["train.precision=bf16"],
    "channels_last": ["train.channels_last=true"],
    "vae28": [],
    "batch128": ["al.score_batch_size=128"],
}
SETTINGS = {"fp32": [], **{k: [k] for k in LEVERS}, "all": list(LEVERS), "all+malloc": [*LEVERS, "malloc"]}
PARTS = ("task training / it", "evaluation", "r̂", "VAE + D / it", "scoring", "selection", "**stage**")


def today_plan(side: int) -> vae_module.ConvPlan:
    """The VAE shape before the published 28x28 one: k4 throughout (28 -> 1x1), decoder 4 -> 32 cropped to 28."""
    return vae_module.ConvPlan(enc_kernel=4, enc_out=side // 16, dec_start=math.ceil(side / 8), dec_kernel=4)


@contextlib.contextmanager
def vae_shape(published: bool):
    """Build VAEs with the published 28x28 shape (the default) or today's (``today_plan``) within the block."""
    saved = vae_module.conv_plan
    vae_module.conv_plan = saved if published else today_plan
    try:
        yield
    finally:
        vae_module.conv_plan = saved


def tune_malloc() -> None:
    """glibc: allocations up to 256 MiB from the heap instead of a fresh mmap each (the VAE's largest activation,
    128 x 128 x 28 x 28 fp32, is 51 MB: past the default 32 MiB cap of the dynamic threshold, so every one of
    them was mapped and page-faulted anew), and up to 1 GiB of freed memory kept (no trim). The same as
    MALLOC_MMAP_THRESHOLD_=268435456 MALLOC_TRIM_THRESHOLD_=1073741824 in the environment: the scoring actors'
    setting (``keep_freed_memory_per_actor``) with larger thresholds."""
    from tavaal.backends.ray.data import keep_freed_memory_per_actor

    if not keep_freed_memory_per_actor(trim_threshold=1 << 30, mmap_threshold=256 << 20):
        raise RuntimeError("glibc's mallopt refused the thresholds (or this is not glibc)")


class PartTimes(TimedBackend):
    """``common.TimedBackend`` that tells r̂ (the task model's scorer) from the discriminator's scoring, counts
    minor page faults per part and keeps the last VAE job (for the profile)."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.faults: dict = defaultdict(int)
        self.vae_job = None

    def timed(self, part: str, fn, *args):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        try:
            return super().timed(part, fn, *args)
        finally:
            self.faults[part] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0

    def train_vae(self, job, on_progress=None):
        self.vae_job = job
        return super().train_vae(job, on_progress)

    def part(self, scorer) -> str:
        return "r̂" if isinstance(scorer, TaskScorer) else self.SCORING


def run_setting(cfg, data, levers: list[str]) -> dict:
    """One shortened stage 1 with ``levers``; its part times (s), faults, record and the VAE job."""
    backend = PartTimes(build_backend(cfg.backend, cfg.data))
    backend.prepare(data, CPU)
    spec = ModelSpec(cfg.model.name, data.input_shape, data.num_classes, cfg.model.ranker_hidden)
    pool = initial_pool(len(data.train), cfg.al.initial, numpy_rng(cfg.seed, "initial"))
    with vae_shape(published="vae28" in levers):
        record, _, _ = run_stage(cfg, 0, pool, data, spec, build_strategy("tavaal"), backend, CPU, lambda m: None)
    part = backend.end_stage(record)
    backend.close()
    return {"times": dict(part), "faults": dict(backend.faults), "record": record, "job": backend.vae_job}


def per_part(r: dict, cfg) -> dict:
    """Seconds per part as the table shows them (training and VAE per iteration)."""
    t = r["times"]
    steps = cfg.train.epochs * math.ceil(cfg.al.initial / cfg.train.batch_size)
    return {
        "task training / it": t["task + ranker training"] / steps,
        "evaluation": t["evaluation"],
        "r̂": t["r̂"],
        "VAE + D / it": t["VAE + discriminator"] / r["job"].iterations,
        "scoring": t["scoring"],
        "selection": t["selection"],
        "**stage**": t["stage"],
    }


def projection(p: dict, paper) -> float:
    """The full published stage from per-part times: the preset's epochs and the official VAE iteration count."""
    steps = paper.train.epochs * math.ceil(paper.al.initial / paper.train.batch_size)
    iters = vae_iterations(paper.vae, paper.al.initial, paper.al.subset_size)
    return (
        steps * p["task training / it"]
        + p["evaluation"]
        + p["r̂"]
        + iters * p["VAE + D / it"]
        + p["scoring"]
        + p["selection"]
    )


def profile_vae(job, data, levers: list[str], iterations: int) -> str:
    """``torch.profiler`` table (top 15 by self CPU time) of ``iterations`` VAE iterations after one warm-up."""
    from torch.profiler import ProfilerActivity, profile

    with vae_shape(published="vae28" in levers):
        trainer = VAETraining(job, CPU).bind(data)
    trainer.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(iterations):
            trainer.step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)


def setting_config(base: str, sets: list[str], levers: list[str]):
    return for_device(load_config(base, sets + [s for lever in levers for s in LEVERS.get(lever, [])]), CPU)


# the untimed warm-up stage before each setting: its kernels, batch shapes and allocations, at a small size
WARM = [
    "train.epochs=1",
    "vae.iterations=2",
    "al.initial=256",
    "al.budget=128",
    "al.subset_size=512",
    "data.num_train=2000",
    "data.num_test=512",
]


def run_settings(settings: list[str], base: Path, sets: list[str], data, warm_data, profile: int) -> tuple:
    """Each setting after its warm-up, in order; (runs by name, torch.profiler tables of the first and last)."""
    runs: dict = {}
    profiles: dict = {}
    for name in settings:
        levers = SETTINGS[name]
        if "malloc" in levers:
            tune_malloc()
        run_setting(setting_config(base, sets + WARM, levers), warm_data, levers)
        cfg = setting_config(base, sets, levers)
        print(f"{name}: {cfg.train.epochs} epoch(s), {cfg.vae.iterations} VAE iterations", flush=True)
        runs[name] = run_setting(cfg, data, levers) | {"cfg": cfg, "levers": levers, "load": os.getloadavg()[0]}
        print(f"  {runs[name]['times']['stage']:.1f} s, acc {runs[name]['record'].accuracy:.4f}", flush=True)
        if profile and name in (settings[0], settings[-1]):  # before the next setting's malloc
            profiles[name] = profile_vae(runs[name]["job"], data, levers, profile)
    return runs, profiles


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs/cifar10_tavaal.yaml"))
    ap.add_argument("--epochs", type=int, default=2, help="task epochs of the shortened stage (preset: 200)")
    ap.add_argument("--vae-iterations", type=int, default=4, help="VAE/discriminator iterations (official: 8,593)")
    ap.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    ap.add_argument("--noise-seeds", type=int, default=1, help="extra seeds of the last setting (accuracy noise)")
    ap.add_argument(
        "--noise-all", action="store_true", help="the extra seeds for every setting, not only the last (accuracy)"
    )
    ap.add_argument("--profile", type=int, default=2, help="VAE iterations profiled per setting (0: no profile)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--smoke", action="store_true", help="configs/smoke.yaml with tiny counts (the test's run)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    ap.add_argument("--name", default="paper-stage", help="results file: <out>/<name>-<date>.md")
    args = ap.parse_args()
    base = ROOT / "configs/smoke.yaml" if args.smoke else Path(args.config)
    sets = ([] if args.smoke else PAPER) + [
        f"train.epochs={args.epochs}",
        f"vae.iterations={args.vae_iterations}",
        "al.stages=2",
        *args.set,
    ]
    torch.set_num_threads(os.cpu_count() or 1)
    paper = load_config(base, ([] if args.smoke else PAPER) + args.set)  # the full stage, for the projection
    data = build_dataset(load_config(base, sets).data, 0)
    warm_data = build_dataset(load_config(base, sets + WARM).data, 0)
    load0 = os.getloadavg()
    runs, profiles = run_settings(args.settings, base, sets, data, warm_data, args.profile)
    noisy = args.settings if args.noise_all else args.settings[-1:]
    noise = {
        name: [
            run_setting(dataclasses.replace(runs[name]["cfg"], seed=s), data, runs[name]["levers"])["record"]
            for s in range(1, args.noise_seeds + 1)
        ]
        for name in noisy
    }
    load1 = os.getloadavg()
    table = render(runs, paper, noise)
    details = [
        f"config: {os.path.relpath(base, ROOT)} with {', '.join(sets)}; {torch.get_num_threads()} threads",
        f"load average (1, 5, 15 min) before {tuple(round(x, 2) for x in load0)}, after "
        f"{tuple(round(x, 2) for x in load1)}",
    ]
    for n, text in profiles.items():
        table += f"\n\n## torch.profiler: {args.profile} VAE iterations, setting {n}\n\n```\n{text}\n```"
    write_results(
        args.out,
        args.name,
        f"One TA-VAAL stage ({base.name}), shortened: speed levers side by side",
        details,
        table,
        load0,
        load1,
    )


def render(runs: dict, paper, noise: dict[str, list]) -> str:
    """The per-part table (seconds and ratio to the first setting), the projection and the quality rows."""
    names = list(runs)
    parts = {n: per_part(runs[n], runs[n]["cfg"]) for n in names}
    ref = names[0]
    head = "| part | " + " | ".join(names) + " |\n| --- |" + " --- |" * len(names)
    rows = [head]
    for p in PARTS:
        cells = [
            f"{parts[n][p]:.2f} ({parts[n][p] / parts[ref][p]:.2f}x)" if parts[ref][p] > 0 else f"{parts[n][p]:.2f}"
            for n in names
        ]
        rows.append(f"| {p} | " + " | ".join(cells) + " |")
    proj = {n: projection(parts[n], paper) for n in names}
    rows.append(
        "| **projected full stage** (h) | "
        + " | ".join(f"{proj[n] / 3600:.2f} ({proj[n] / proj[ref]:.2f}x)" for n in names)
        + " |"
    )
    faults = {n: runs[n]["faults"].get("VAE + discriminator", 0) / runs[n]["job"].iterations for n in names}
    rows.append("| page faults / VAE it | " + " | ".join(f"{faults[n]:,.0f}" for n in names) + " |")
    rows.append("| load average (1 min) at its end | " + " | ".join(f"{runs[n]['load']:.2f}" for n in names) + " |")
    recs = {n: runs[n]["record"] for n in names}
    rows.append("| test accuracy | " + " | ".join(f"{recs[n].accuracy:.4f}" for n in names) + " |")
    rows.append(
        "| VAE loss (last it) | "
        + " | ".join(f"{recs[n].info.get('vae_loss', float('nan')):.4f}" for n in names)
        + " |"
    )
    rows.append(
        "| disc loss (last tenth) | "
        + " | ".join(f"{recs[n].health.get('disc_loss_tail') or float('nan'):.4f}" for n in names)
        + " |"
    )
    sel = set(recs[ref].selected)
    rows.append(
        f"| selected also by {ref} | "
        + " | ".join(f"{len(sel & set(recs[n].selected)) / max(len(sel), 1):.3f}" for n in names)
        + " |"
    )
    for name, others in noise.items():
        if not others:
            continue
        accs = [recs[name].accuracy] + [r.accuracy for r in others]
        rows.append(
            f"\naccuracy of `{name}` over seeds 0..{len(others)} (other labels, candidates, inits): "
            + ", ".join(f"{a:.4f}" for a in accs)
            + f" (mean {sum(accs) / len(accs):.4f}, spread {max(accs) - min(accs):.4f})"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    main()
