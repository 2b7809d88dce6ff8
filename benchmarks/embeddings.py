"""Embeddings of Fashion-MNIST as a Parquet pool: what a user's foundation-model features look like to tavaal.

    python -m benchmarks.embeddings --out embeddings              # a few minutes on 2 CPU cores
    python -m benchmarks.embeddings --out embeddings --unlabeled  # the pool without labels (manual oracle)
    python -m benchmarks.embeddings --out DIR --smoke             # seconds (tests): a few hundred rows

The embedding model is tavaal's own ``small_cnn`` trained (``core.training.train_task``, plain cross-entropy, no
ranker) on a part of the Fashion-MNIST training images that the pool then leaves out: the first ``--train-rows``
(10,000), ``--epochs`` (3) epochs of batch 128, SGD lr 0.05. Its embedding (the 128 channels of the last block,
averaged over the image: the features before the classifier) of every other training image is the pool, of every
test image the test set. Each dimension is standardized with the mean and std of the embedding model's own
training images (the model and its scaling are "the user's model": tavaal uses vectors as they are).

Writes ``<out>/pool.parquet`` (id: the training image's index, int64; embedding: fixed_size_list<float32>[128];
label: the class name, null with ``--unlabeled``), ``<out>/test.parquet`` (the same columns, ids of the test
images, labeled) and ``<out>/embeddings.json`` (the command, the rows, the embedding model's test accuracy, the
time). Run tavaal on them with the ``mlp`` task model (docs/own-data.md, "Embeddings instead of images").
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if not __package__:  # run by path: as the module
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.embeddings", *sys.argv[1:]])

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from benchmarks.common import command_line, write_json
from tavaal.config import DataConfig, TrainConfig
from tavaal.core.training import ModelSpec, TaskJob, train_task
from tavaal.data import build_dataset
from tavaal.data.base import ALData

BATCH = 512  # embedding batch (inference only)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.embeddings", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for pool.parquet, test.parquet and embeddings.json")
    p.add_argument("--train-rows", type=int, default=10_000, help="first training images: the embedding model's")
    p.add_argument("--epochs", type=int, default=3, help="epochs of the embedding model")
    p.add_argument("--pool-rows", type=int, default=None, help="embed only the first N pool rows (default: all)")
    p.add_argument("--test-rows", type=int, default=None, help="embed only the first N test images (default: all)")
    p.add_argument("--unlabeled", action="store_true", help="write the pool's labels as null (manual oracle)")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX files (default: tavaal's places)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="seconds: 512 training images, 1 epoch, 300 + 100 rows")
    args = p.parse_args(argv)
    if args.smoke:
        args.train_rows, args.epochs = 512, 1
        args.pool_rows, args.test_rows = args.pool_rows or 300, args.test_rows or 100
    return args


def report(epochs: int):
    return lambda rec: print(f"embedding model: epoch {rec['epoch'] + 1}/{epochs}, loss {rec['ce']:.3f}", flush=True)


@torch.no_grad()
def embed(model: torch.nn.Module, data: ALData, split: str, idx: np.ndarray) -> np.ndarray:
    """float32 ``[len(idx), D]``: the model's embedding (features before the classifier) of those images."""
    model.eval()
    out = [model(data.batch(split, idx[s : s + BATCH])[0]).embedding for s in range(0, idx.size, BATCH)]
    return torch.cat(out).numpy().astype(np.float32)


def table(ids: np.ndarray, vectors: np.ndarray, labels: list[str] | None) -> pa.Table:
    d = vectors.shape[1]
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), d)
    label = pa.array(labels, pa.string()) if labels is not None else pa.nulls(ids.size, pa.string())
    return pa.table({"id": pa.array(ids, pa.int64()), "embedding": column, "label": label})


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    data = build_dataset(DataConfig(name="fashionmnist", data_dir=args.data_dir), args.seed)
    n_train = len(data.train)
    if not 1 <= args.train_rows < n_train:
        print(f"error: --train-rows must be in [1, {n_train - 1}]", file=sys.stderr)
        return 2
    spec = ModelSpec("small_cnn", data.input_shape, data.num_classes)
    cfg = TrainConfig(epochs=args.epochs, batch_size=128, lr=0.05, milestones=(args.epochs,))
    job = TaskJob(spec, cfg, np.arange(args.train_rows), None, args.seed)
    result = train_task(job, data, torch.device("cpu"), on_epoch_end=report(args.epochs))
    model, _ = spec.build(with_ranker=False)
    model.load_state_dict(result.model_state)
    train_idx = np.arange(args.train_rows)
    pool_idx = np.arange(args.train_rows, n_train)[: args.pool_rows]
    test_idx = np.arange(len(data.test))[: args.test_rows]
    fit = embed(model, data, "train", train_idx)
    mean, std = fit.mean(axis=0), fit.std(axis=0) + 1e-6  # the embedding model's own images: its scaling

    def scaled(split: str, idx: np.ndarray) -> np.ndarray:
        return (embed(model, data, split, idx) - mean) / std

    with torch.no_grad():
        model.eval()
        logits = torch.cat(
            [model(data.batch("test", test_idx[s : s + BATCH])[0]).logits for s in range(0, test_idx.size, BATCH)]
        )
    accuracy = float((logits.argmax(1) == data.test.y[torch.from_numpy(test_idx)]).float().mean())
    names = data.class_names
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pool_labels = None if args.unlabeled else [names[int(c)] for c in data.train.y[torch.from_numpy(pool_idx)]]
    pq.write_table(table(pool_idx, scaled("train", pool_idx), pool_labels), out / "pool.parquet")
    test_labels = [names[int(c)] for c in data.test.y[torch.from_numpy(test_idx)]]
    pq.write_table(table(test_idx, scaled("test", test_idx), test_labels), out / "test.parquet")
    info = {
        "command": command_line("embeddings", argv),
        "embedding_model": "small_cnn",
        "train_rows": args.train_rows,
        "epochs": args.epochs,
        "dim": int(fit.shape[1]),
        "pool_rows": int(pool_idx.size),
        "test_rows": int(test_idx.size),
        "pool_labeled": not args.unlabeled,
        "embedding_model_test_accuracy": round(accuracy, 4),
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json(out / "embeddings.json", info)
    print(
        f"wrote {out / 'pool.parquet'} ({pool_idx.size} rows) and {out / 'test.parquet'} ({test_idx.size} rows): "
        f"{fit.shape[1]}-d embeddings of small_cnn (test accuracy {accuracy:.4f}), {info['seconds']} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
