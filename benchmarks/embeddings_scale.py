"""A large pool of embeddings: Ray Data scores it without the vectors in the driver; a stage on it beside images.

    python -m benchmarks.embeddings_scale                   # 1,000,000 x 512 float32 (2 GB of vectors)
    python -m benchmarks.embeddings_scale --rows 200000     # a smaller pool
    python -m benchmarks.embeddings_scale --smoke           # 20,000 x 64, short stages: well under a minute

Writes, in ``--work`` (default: a temporary folder, removed at the end), a synthetic pool of ``--rows`` x ``--dim``
float32 embeddings as Parquet (``fixed_size_list<float32>``, row groups of ``--row-group`` rows; ``--classes``
Gaussian clusters, centres 8 apart, unit noise, so the task is learnable; every row labeled) with a test set of
the same clusters, and an image pool of the same row count: Fashion-MNIST's 60,000 training images as PNG
(28 x 28 grey, encoded once) repeated under new ids, its 10,000 test images as the test set. Then:

  (a) scoring  the driver builds the vector pool (``data.name: parquet``: the checking pass, then a float32
               copy on disk, since 2 GB is above ``tavaal.data.vectors.IN_MEMORY_BYTES``), trains the ``mlp`` task model
               and ranker on ``--labeled`` rows, and scores r̂ of every pool row on Ray Data
               (``score_parquet_with_ray_data``: a local Ray of this machine's CPUs, 1 scoring actor of 1 CPU) as
               the Ray backend does; it prints the time and the peak resident memory of the driver and of each Ray
               worker process (psutil, sampled every ``--sample`` seconds), beside the vectors' size, and checks the
               scores of ``--check`` rows against the local loop's. ``--held`` repeats the build with the vectors
               held in memory (the path below the threshold), for its time and memory.
  (b) stage    one stage of ``configs/fashionmnist_tavaal_cpu.yaml`` (``--set`` overrides; TA-VAAL: task model +
               ranker training, evaluation, the VAE, r̂ and discriminator scoring of ``al.subset_size``
               candidates, selection) with the local backend, timed part by part as ``stage_time.py`` does, on
               the vector pool (``mlp``) and on the image pool (``small_cnn``, the preset's model), with the
               ratios vectors / images.

Writes the tables to ``<out>/embeddings-scale-<date>.md`` and the numbers to ``embeddings-scale-<date>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

if not __package__:  # run by path: as the module
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.embeddings_scale", *sys.argv[1:]])

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

import tavaal  # noqa: F401  (sets OMP passive waiting before torch loads)
from benchmarks.common import ROOT, TimedBackend, command_line, results_header, write_json
from tavaal import experiment
from tavaal.backends import LocalBackend, build_backend
from tavaal.config import DataConfig, TrainConfig, load_config
from tavaal.core.pool import initial_pool
from tavaal.core.scoring import score_pool
from tavaal.core.seeding import numpy_rng
from tavaal.core.training import ModelSpec, TaskJob
from tavaal.data import build_dataset, vectors
from tavaal.strategies.scorers import TaskScorer

PRESET = "configs/fashionmnist_tavaal_cpu.yaml"
PARTS = ("task + ranker training", "evaluation", "VAE + discriminator", "scoring", "selection", "stage")
SMOKE_SETS = ["train.epochs=2", "train.milestones=[2]", "vae.iterations=10", "al.initial=100", "al.budget=100"]
SMOKE_SETS += ["al.subset_size=1000"]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.embeddings_scale", description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="pool rows (vectors and images)")
    p.add_argument("--dim", type=int, default=512, help="vector length D")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--test-rows", type=int, default=10_000, help="rows of the vector test set")
    p.add_argument("--row-group", type=int, default=65_536, help="Parquet row group size (rows)")
    p.add_argument("--labeled", type=int, default=1_000, help="(a): rows the scored model is trained on")
    p.add_argument("--epochs", type=int, default=10, help="(a): epochs of that training")
    p.add_argument("--batch", type=int, default=1_024, help="(a): scoring batch size")
    p.add_argument("--check", type=int, default=5_000, help="(a): rows whose Ray scores are compared with local ones")
    p.add_argument("--sample", type=float, default=0.2, help="seconds between memory samples")
    p.add_argument("--held", action="store_true", help="(a): also build the pool with the vectors held in memory")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="(b): override of the preset")
    p.add_argument("--skip-stage", action="store_true", help="run (a) only")
    p.add_argument("--work", default=None, help="folder for the Parquet files (default: a temporary one, removed)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results"), help="folder for the results")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--smoke", action="store_true", help="20,000 x 64 (unless given), a 2-epoch stage: well under a minute"
    )
    if p.parse_known_args(argv)[0].smoke:  # its sizes, unless given
        p.set_defaults(rows=20_000, dim=64, test_rows=2_000, row_group=4_096, labeled=500, epochs=3, check=20_000)
    args = p.parse_args(argv)
    if args.smoke:
        args.set = SMOKE_SETS + args.set
    return args


# ---------------------------------------------------------------- the pools


def write_vector_pool(path: Path, rows: int, dim: int, classes: int, row_group: int, seed: int, names: list[str]):
    """``rows`` x ``dim`` float32 vectors in ``classes`` Gaussian clusters, written a row group at a time."""
    centres = np.random.default_rng(seed).normal(0, 8 / np.sqrt(2 * dim), (classes, dim)).astype(np.float32)
    rng = np.random.default_rng(seed + 1 + rows)
    schema = pa.schema([("id", pa.int64()), ("embedding", pa.list_(pa.float32(), dim)), ("label", pa.string())])
    with pq.ParquetWriter(path, schema) as w:
        for start in range(0, rows, row_group):
            n = min(row_group, rows - start)
            y = rng.integers(classes, size=n)
            x = centres[y] + rng.standard_normal((n, dim), dtype=np.float32)
            w.write_table(
                pa.table(
                    {
                        "id": pa.array(np.arange(start, start + n), pa.int64()),
                        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim),
                        "label": pa.array([names[c] for c in y], pa.string()),
                    },
                    schema=schema,
                ),
                row_group_size=row_group,
            )


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_image_pools(work: Path, rows: int, row_group: int) -> list[str]:
    """Fashion-MNIST as PNG: the training images repeated to ``rows`` rows (``images.parquet``), the test images
    (``images_test.parquet``); returns the class names."""
    fm = build_dataset(DataConfig(name="fashionmnist"), 0)
    names = list(fm.class_names)
    train = [png(im[0]) for im in fm.train.x.numpy()]
    train_y = [names[c] for c in fm.train.y.tolist()]
    schema = pa.schema([("id", pa.int64()), ("image", pa.binary()), ("label", pa.string())])
    with pq.ParquetWriter(work / "images.parquet", schema) as w:
        for start in range(0, rows, row_group):
            src = np.arange(start, min(start + row_group, rows)) % len(train)
            table = {"id": np.arange(start, start + src.size), "image": [train[i] for i in src]}
            w.write_table(pa.table(table | {"label": [train_y[i] for i in src]}, schema=schema))
    test = [png(im[0]) for im in fm.test.x.numpy()]
    labels = [names[c] for c in fm.test.y.tolist()]
    pq.write_table(
        pa.table({"id": np.arange(len(test)), "image": test, "label": labels}, schema=schema),
        work / "images_test.parquet",
    )
    return names


# ---------------------------------------------------------------- (a) Ray Data scoring of the whole pool


class PeakMemory:
    """Peak resident memory of this process and of each Ray worker process (``ray::`` in its title, named by the
    titles other than ``ray::IDLE`` it had: the tasks and actors it ran), sampled in a thread every ``every`` seconds
    while the ``with`` block runs."""

    def __init__(self, every: float) -> None:
        self.every, self.driver = every, 0
        self.peak: dict[int, int] = {}
        self.names: dict[int, list[str]] = {}
        self._stop = threading.Event()

    def sample(self) -> None:
        self.driver = max(self.driver, psutil.Process().memory_info().rss)
        for p in psutil.process_iter(["pid", "cmdline", "memory_info"]):
            title = " ".join(p.info["cmdline"] or [])
            if title.startswith("ray::") and p.info["memory_info"] is not None:
                pid = p.info["pid"]
                self.peak[pid] = max(self.peak.get(pid, 0), p.info["memory_info"].rss)
                name = re.sub(r"(\.[A-Za-z_]+)+$", "", title.split()[0])  # an actor's method calls: the actor
                seen = self.names.setdefault(pid, [])
                if name != "ray::IDLE" and name not in seen:
                    seen.append(name)

    @property
    def workers(self) -> list[tuple[str, int]]:
        """(name, peak RSS) of each worker process, largest first."""
        named = ((" + ".join(self.names[p]) or "ray::IDLE", v) for p, v in self.peak.items())
        return sorted(named, key=lambda t: -t[1])

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def __enter__(self) -> PeakMemory:
        self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def build_timed(cfg: DataConfig, every: float) -> tuple:
    with PeakMemory(every) as mem:
        t = time.perf_counter()
        data = build_dataset(cfg, 0)
        seconds = time.perf_counter() - t
    return data, seconds, mem.driver


def score_on_ray(args, work: Path) -> dict:
    import ray

    from tavaal.backends.ray.connect import connect_ray
    from tavaal.backends.ray.parquet import score_parquet_with_ray_data

    out: dict = {"vectors_bytes": args.rows * args.dim * 4, "rss_before": psutil.Process().memory_info().rss}
    cfg = DataConfig(
        name="parquet",
        path=str(work / "vectors.parquet"),
        test_path=str(work / "vectors_test.parquet"),
        image_column="embedding",
    )
    data, out["build_s"], out["build_rss"] = build_timed(cfg, args.sample)
    out["kept_as"] = type(data.train.x).__name__
    print(f"(a) built the pool in {out['build_s']:.1f} s ({out['kept_as']}), driver {mib(out['build_rss'])}")
    spec = ModelSpec("mlp", data.input_shape, data.num_classes)
    labeled = initial_pool(len(data.train), args.labeled, numpy_rng(args.seed, "initial")).labeled_indices()
    train_cfg = TrainConfig(epochs=args.epochs, batch_size=64, lr=0.05, milestones=(args.epochs,))
    backend = LocalBackend()
    backend.prepare(data, torch.device("cpu"))
    task = backend.train_task(TaskJob(spec, train_cfg, labeled, "rank", args.seed))
    scorer = TaskScorer(spec, task, "rhat")
    everything = np.arange(len(data.train))
    owns_ray = connect_ray(None)
    out["rss_before_scoring"] = psutil.Process().memory_info().rss
    try:
        with PeakMemory(args.sample) as mem:
            t = time.perf_counter()
            got = score_parquet_with_ray_data(scorer, data, cfg, everything, args.batch, concurrency=1)
            out["score_s"] = time.perf_counter() - t
        out["free_cpus_after"] = ray.available_resources().get("CPU", 0.0)
        out["total_cpus"] = ray.cluster_resources().get("CPU", 0.0)
    finally:
        if owns_ray:
            ray.shutdown()
    out["score_rss_driver"], out["score_rss_workers"] = mem.driver, mem.workers
    check = np.random.default_rng(args.seed).permutation(everything)[: args.check]
    want = score_pool(scorer, data, np.sort(check), args.batch, torch.device("cpu"))["rhat"]
    out["checked_rows"] = int(check.size)
    out["max_abs_diff"] = float(np.abs(got["rhat"][np.sort(check)] - want).max())
    out["rows_scored"] = int(got["rhat"].shape[0])
    print(
        f"(a) scored {out['rows_scored']:,} rows on Ray Data in {out['score_s']:.1f} s; peak driver "
        f"{mib(mem.driver)}, largest worker {mem.workers[0][0]} {mib(mem.workers[0][1])}; "
        f"max |Ray - local| over {out['checked_rows']:,} rows {out['max_abs_diff']:.2g}"
    )
    del data, backend
    if args.held:
        old = vectors.IN_MEMORY_BYTES
        vectors.IN_MEMORY_BYTES = out["vectors_bytes"]
        try:
            held, out["held_build_s"], out["held_build_rss"] = build_timed(cfg, args.sample)
            out["held_kept_as"] = type(held.train.x).__name__
        finally:
            vectors.IN_MEMORY_BYTES = old
        del held
        print(f"(a) held in memory: built in {out['held_build_s']:.1f} s, driver {mib(out['held_build_rss'])}")
    return out


# ---------------------------------------------------------------- (b) one stage, vectors beside images


def stage(sets: list[str], out_dir: Path) -> tuple[dict, float]:
    cfg = load_config(ROOT / PRESET, ["al.stages=2", *sets])
    backend = TimedBackend(build_backend(cfg.backend, cfg.data))
    parts: dict = {}

    def on_stage(record, path) -> None:
        part = backend.end_stage(record)
        if record.stage == 0:
            parts.update(part, accuracy=record.accuracy)

    t = time.perf_counter()
    experiment.run_experiment(cfg, backend=backend, out_dir=out_dir, log=lambda m: None, on_stage=on_stage)
    return parts, time.perf_counter() - t


def stages(args, work: Path) -> dict:
    common = ["data.name=parquet", *args.set]
    kinds = {
        "vectors": [
            f"data.path={work / 'vectors.parquet'}",
            f"data.test_path={work / 'vectors_test.parquet'}",
            "data.image_column=embedding",
            "model.name=mlp",
        ],
        "images": [
            f"data.path={work / 'images.parquet'}",
            f"data.test_path={work / 'images_test.parquet'}",
            "data.image_column=image",
            "data.image_size=28",
            "data.channels=1",
        ],
    }
    out = {}
    for name, sets in kinds.items():
        parts, total = stage(common + sets, work / f"run-{name}")
        out[name] = parts | {"run": total}
        print(f"(b) {name}: stage 0 {parts['stage']:.1f} s, accuracy {parts['accuracy']:.3f} ({total:.1f} s in all)")
    return out


# ---------------------------------------------------------------- report


def lscpu() -> str:
    """lscpu's model name, family/model/stepping and its bf16/AMX flags (what a timing here depends on)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "lscpu: not available"
    field = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    get = {k.strip(): v.strip() for k, v in field.items()}.get
    flags = [f for f in (get("Flags") or "").split() if "bf16" in f or f.startswith("amx")]
    return (
        f"lscpu: {get('Model name')}, family {get('CPU family')} model {get('Model')} stepping {get('Stepping')}, "
        f"{get('CPU(s)')} CPUs, {get('Hypervisor vendor') or 'no'} hypervisor, flags {' '.join(flags) or 'none'}"
    )


def report(args, argv, a: dict, b: dict | None, load: tuple, started: float) -> str:
    workers = "; ".join(f"{k} {mib(v)}" for k, v in a["score_rss_workers"][:5])
    lines = [
        "(a) the whole pool scored on Ray Data (r̂ of the mlp's ranker), driver memory beside the vectors' size",
        "",
        "| step | seconds | driver peak RSS |",
        "| --- | --- | --- |",
        f"| driver before the pool | - | {mib(a['rss_before'])} |",
        f"| build the pool ({a['kept_as']}: checking pass + copy on disk) | {a['build_s']:.1f} | "
        f"{mib(a['build_rss'])} |",
        f"| train the mlp on {args.labeled:,} rows, start Ray | - | {mib(a['rss_before_scoring'])} (at the end) |",
        f"| score all {a['rows_scored']:,} rows on Ray Data | {a['score_s']:.1f} | {mib(a['score_rss_driver'])} |",
    ]
    if "held_build_s" in a:
        lines.append(
            f"| build the pool held in memory ({a['held_kept_as']}) | {a['held_build_s']:.1f} | "
            f"{mib(a['held_build_rss'])} |"
        )
    lines += [
        "",
        f"- vectors: {args.rows:,} x {args.dim} float32 = {mib(a['vectors_bytes'])}",
        f"- the largest Ray worker processes' peak RSS while scoring: {workers}",
        f"- scores equal the local loop's: max |Ray - local| {a['max_abs_diff']:.2g} over {a['checked_rows']:,} "
        "random rows",
        f"- free CPUs right after the scoring returned: {a['free_cpus_after']:g} of {a['total_cpus']:g}",
    ]
    if b is not None:
        lines += [
            "",
            "(b) one TA-VAAL stage (local backend), vector pool (mlp) beside image pool (small_cnn) of the same rows",
            "",
            "| part | vectors s | images s | vectors / images |",
            "| --- | --- | --- | --- |",
        ]
        for part in PARTS:
            v, i = b["vectors"].get(part, 0.0), b["images"].get(part, 0.0)
            ratio = f"{v / i:.2f}" if i >= 0.005 else "-"
            label = f"**{part}**" if part == "stage" else part
            lines.append(f"| {label} | {v:.2f} | {i:.2f} | {ratio} |")
        lines += [
            f"| whole run (load, stage 0, stage 1's training) | {b['vectors']['run']:.1f} | {b['images']['run']:.1f} "
            f"| {b['vectors']['run'] / b['images']['run']:.2f} |",
            "",
            f"- test accuracy after stage 0: vectors {b['vectors']['accuracy']:.3f}, images "
            f"{b['images']['accuracy']:.3f}",
        ]
    details = [
        lscpu(),
        f"pool: {args.rows:,} rows; vectors {args.dim}-d float32 in {args.classes} clusters, row groups of "
        f"{args.row_group:,}; images: Fashion-MNIST's 60,000 training images as PNG, repeated",
        f"(a): mlp + ranker trained on {args.labeled:,} rows for {args.epochs} epochs; scoring batch {args.batch}, "
        "1 actor of 1 CPU on a local Ray of this machine's CPUs",
        f"(b): {PRESET} with al.stages=2{', ' + ', '.join(args.set) if args.set else ''}; stage 0's parts",
        f"total time of this benchmark: {(time.perf_counter() - started) / 60:.1f} min",
    ]
    header = results_header(
        "Embeddings at scale: Ray Data scoring without the vectors in the driver, a stage beside images",
        command_line("embeddings_scale", argv),
        details,
        load,
    )
    return "\n".join(header) + "\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started, load0 = time.perf_counter(), os.getloadavg()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="emb-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        names = write_image_pools(work, args.rows, args.row_group) if not args.skip_stage else []
        names = names or [f"c{k}" for k in range(args.classes)]
        names = (names * -(-args.classes // len(names)))[: args.classes]
        write_vector_pool(work / "vectors.parquet", args.rows, args.dim, args.classes, args.row_group, args.seed, names)
        write_vector_pool(
            work / "vectors_test.parquet", args.test_rows, args.dim, args.classes, args.row_group, args.seed, names
        )
        print(f"wrote the pools in {time.perf_counter() - t:.1f} s to {work}", flush=True)
        a = score_on_ray(args, work)
        b = None if args.skip_stage else stages(args, work)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    text = report(args, argv, a, b, (load0, os.getloadavg()), started)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"embeddings-scale{'-smoke' if args.smoke else ''}-{datetime.date.today():%Y-%m-%d}"
    (out / f"{stem}.md").write_text(text)
    write_json(out / f"{stem}.json", {"command": command_line("embeddings_scale", argv), "scoring": a, "stage": b})
    print("\n" + text + f"\nwrote {out / stem}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
