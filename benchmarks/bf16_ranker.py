"""Does bf16 autocast hold the task model's accuracy? One stage's task training, fp32 vs bf16, with and without the
ranker, evaluated in fp32 and in bf16.

    python -m benchmarks.bf16_ranker                       # ResNet-18, 1,000 labels, 12 epochs, seed 0
    python -m benchmarks.bf16_ranker --seeds 0 1 --epochs 12
    python -m benchmarks.bf16_ranker --smoke               # seconds: the smoke preset

The published protocol's stage-1 task training (``configs/cifar10_tavaal.yaml`` on real Fashion-MNIST: CIFAR
ResNet-18 with a 1-channel stem, LossNet 128 trained with the ranking loss at η = 1, SGD 0.1, batch 128, 1,000 random
labels) for ``--epochs`` epochs, once per variant from the same seed:

  fp32                  as the preset runs it
  bf16                  train.precision=bf16 (autocast: backbone, ranker and the ranking loss's inputs)
  bf16, no ranker       bf16 without the ranker (plain cross-entropy): is it bf16 itself, or bf16 with the ranker?
  bf16, fp32 ranker     bf16 with the LossNet run in fp32 (autocast off inside it, features cast up): r̂ of an
                        early ranker reaches thousands, where bf16's 8-bit mantissa rounds a pair's difference by up to
                        ±8, and the ranking loss sees only such differences

Each trained model is evaluated on the test split (``--num-test`` images) in fp32 and in bf16; the last epochs'
mean cross-entropy shows how far training got. Writes ``benchmarks/results/bf16-ranker-<date>.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

if not __package__:  # run by path (python benchmarks/<script>.py, as older records say): as the module
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.bf16_ranker", *sys.argv[1:]])

import tavaal  # noqa: F401  (sets OMP passive waiting before torch loads)

# isort: split
import torch

from benchmarks.common import ROOT, write_results
from tavaal.backends import LocalBackend
from tavaal.config import load_config
from tavaal.core.pool import initial_pool
from tavaal.core.precision import for_device
from tavaal.core.seeding import derive_seed, numpy_rng
from tavaal.core.training import ModelSpec, TaskJob, evaluate
from tavaal.data import build_dataset
from tavaal.models import lossnet

CPU = torch.device("cpu")
VARIANTS = {  # name -> (train.precision, ranker loss, LossNet in fp32)
    "fp32": ("fp32", "rank", False),
    "bf16": ("bf16", "rank", False),
    "bf16, no ranker": ("bf16", None, False),
    "bf16, fp32 ranker": ("bf16", "rank", True),
}


@contextlib.contextmanager
def fp32_lossnet(on: bool):
    """Within the block, LossNet runs in fp32 whatever the surrounding autocast (when ``on``)."""
    original = lossnet.LossNet.forward

    def forward(self, features):
        with torch.autocast(device_type=features[0].device.type, enabled=False):
            return original(self, [f.float() for f in features])

    if on:
        lossnet.LossNet.forward = forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        lossnet.LossNet.forward = original  # type: ignore[method-assign]


def run_variant(base: Path, sets: list[str], seed: int, variant: str) -> dict:
    prec, ranker, fp32_ranker = VARIANTS[variant]
    cfg = for_device(load_config(base, [*sets, f"train.precision={prec}", f"seed={seed}"]), CPU)
    data = build_dataset(cfg.data, seed)
    pool = initial_pool(len(data.train), cfg.al.initial, numpy_rng(seed, "initial"))
    spec = ModelSpec(cfg.model.name, data.input_shape, data.num_classes, cfg.model.ranker_hidden)
    backend = LocalBackend()
    backend.prepare(data, CPU)
    t0 = time.perf_counter()
    with fp32_lossnet(fp32_ranker):
        task = backend.train_task(
            TaskJob(spec, cfg.train, pool.labeled_indices(), ranker, derive_seed(seed, "stage", 0))
        )
    seconds = time.perf_counter() - t0
    model, _ = spec.build(with_ranker=False)
    model.load_state_dict(task.model_state)
    acc = {p: evaluate(model, data, CPU, 128, p)["accuracy"] for p in ("fp32", "bf16")}
    tail = [h["ce"] for h in task.history][-3:]
    print(
        f"seed {seed} {variant}: test accuracy {acc['fp32']:.4f} (bf16 eval {acc['bf16']:.4f}), {seconds:.0f} s",
        flush=True,
    )
    return {"acc": acc, "ce": sum(tail) / len(tail), "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=12, help="task epochs (preset: 200)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--num-test", type=int, default=2000, help="test images evaluated")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--smoke", action="store_true", help="configs/smoke.yaml, 1 epoch (the test's run)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    ap.add_argument("--name", default="bf16-ranker", help="results file: <out>/<name>-<date>.md")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    base = ROOT / ("configs/smoke.yaml" if args.smoke else "configs/cifar10_tavaal.yaml")
    sets = ["device=cpu", f"train.epochs={1 if args.smoke else args.epochs}"]
    if not args.smoke:
        sets += ["data.name=fashionmnist", f"data.num_test={args.num_test}"]
    load0 = os.getloadavg()
    runs = {(s, v): run_variant(base, sets, s, v) for s in args.seeds for v in args.variants}
    load1 = os.getloadavg()
    rows = [
        "| seed | variant | test accuracy (fp32 eval) | test accuracy (bf16 eval) | CE, last 3 epochs | train s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for (s, v), r in runs.items():
        rows.append(
            f"| {s} | {v} | {r['acc']['fp32']:.4f} | {r['acc']['bf16']:.4f} | {r['ce']:.3f} | {r['seconds']:.0f} |"
        )
    details = [f"config: {os.path.relpath(base, ROOT)} with {', '.join(sets)}; {torch.get_num_threads()} threads"]
    write_results(
        args.out, args.name, "bf16 and the ranker: one stage's task training", details, "\n".join(rows), load0, load1
    )


if __name__ == "__main__":
    main()
