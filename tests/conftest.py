import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see tavaal/__init__.py; before torch loads

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.chdir(ROOT)  # presets are referenced as configs/*.yaml


def run_cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m tavaal.run ARGS`` in a subprocess and capture its output."""
    return subprocess.run([sys.executable, "-m", "tavaal.run", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


# a 3-stage synthetic run that takes a few seconds (the smoke preset, trimmed)
TINY = ["--config", "configs/smoke.yaml", "--set", "train.epochs=1", "--set", "vae.iterations=4"]


@pytest.fixture
def tiny_args():
    return list(TINY)


def trained_stage(cfg, num_candidates: int):
    """A real stage on the config's data: 40 initial labels, ``num_candidates`` candidates, and task weights
    trained with each ranker mode (None, "rank", "margin"). Returns (data, pool, cand, spec, backend, tasks)."""
    import torch

    from tavaal.backends import LocalBackend
    from tavaal.core.pool import draw_candidates, initial_pool
    from tavaal.core.seeding import numpy_rng
    from tavaal.core.training import ModelSpec, TaskJob
    from tavaal.data import build_dataset

    data = build_dataset(cfg.data, cfg.seed)
    pool = initial_pool(len(data.train), 40, numpy_rng(0, "initial"))
    cand = draw_candidates(pool, num_candidates, numpy_rng(0, "cand"))
    spec = ModelSpec(cfg.model.name, data.input_shape, data.num_classes)
    backend = LocalBackend()
    backend.prepare(data, torch.device("cpu"))
    tasks = {loss: backend.train_task(TaskJob(spec, cfg.train, pool.labeled_indices(), loss, seed=1))
             for loss in (None, "rank", "margin")}
    return data, pool, cand, spec, backend, tasks
