import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see tavaal/__init__.py; before torch loads

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    """Until ``url`` answers 200 (the process must stay alive meanwhile; its log tail explains if not)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        assert proc.poll() is None, Path(log).read_text()[-2000:]
        time.sleep(0.5)
    raise AssertionError(f"{url} did not come up in {timeout} s")


def stop_group(proc: subprocess.Popen) -> None:
    """Stop the process group a test started (by its id, never by name)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class MlflowServer:
    """A real ``mlflow server`` on 127.0.0.1 with a SQLite store and an artifact root under ``root``; it can be
    stopped and started again on the same port and store (a tracking outage). Use as a context manager."""

    def __init__(self, root: Path) -> None:
        self.root, self.port, self.proc = Path(root), free_port(), None
        self.root.mkdir(parents=True, exist_ok=True)
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> "MlflowServer":
        log = self.root / "server.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.root}/server.db",
             "--artifacts-destination", str(self.root / "artifacts"), "--workers", "1"],
            stdout=open(log, "a"), stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # no job consumers: starts faster
        wait_http(f"{self.uri}/health", self.proc, log)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)
            self.proc = None

    def __enter__(self) -> "MlflowServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray with 2 CPUs for one test file (reused, and left running, if a session already started one)."""
    import ray

    from tavaal.backends.ray.backend import WORKER_ENV, local_system_config

    if ray.is_initialized():
        yield
        return
    tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's unix socket paths must stay < 107 chars
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tmp, log_to_driver=False,
             runtime_env={"env_vars": WORKER_ENV}, _system_config=local_system_config(2))
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
