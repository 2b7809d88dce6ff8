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
    return subprocess.run(
        [sys.executable, "-m", "tavaal.run", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


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
    tasks = {
        loss: backend.train_task(TaskJob(spec, cfg.train, pool.labeled_indices(), loss, seed=1))
        for loss in (None, "rank", "margin")
    }
    return data, pool, cand, spec, backend, tasks


def on_ray_and_locally(cfg, tmp_path: Path):
    """The records of one experiment run as ``cfg`` says (on Ray) and again with the local backend, each in a
    directory of its own under ``tmp_path``."""
    import dataclasses

    from tavaal.config import BackendConfig
    from tavaal.experiment import run_experiment

    on_ray = run_experiment(cfg, out_dir=tmp_path / "ray", log=lambda m: None)
    local = run_experiment(
        dataclasses.replace(cfg, backend=BackendConfig()), out_dir=tmp_path / "local", log=lambda m: None
    )
    return on_ray, local


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
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--backend-store-uri",
                f"sqlite:///{self.root}/server.db",
                "--artifacts-destination",
                str(self.root / "artifacts"),
                "--workers",
                "1",
            ],
            stdout=open(log, "a"),
            stderr=subprocess.STDOUT,
            cwd=self.root,
            start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )  # no job consumers: starts faster
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


def call_main(main, argv, capsys) -> subprocess.CompletedProcess:
    """An entry point's ``main(argv)`` in this process, read as its command line would be: return code (argparse's
    ``SystemExit`` gives its code), stdout and stderr (through ``capsys``)."""
    capsys.readouterr()
    environ = dict(os.environ)  # what an entry point sets for itself (a sweep: Tune's quiet output) stays with it
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    finally:
        os.environ.clear()
        os.environ.update(environ)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(argv), code, out.out, out.err)


def run_main(capsys, *args: str) -> subprocess.CompletedProcess:
    """``python -m tavaal.run ARGS`` in this process (no interpreter or torch start-up): see ``call_main``."""
    from tavaal.run import main

    return call_main(main, args, capsys)


@pytest.fixture(autouse=True)
def _torch_threads():
    """A run with ``num_threads`` sets torch's thread count for the whole process: each test gets it back as it was
    (in-process runs compare with subprocess runs, which start at torch's default)."""
    import torch

    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """The test session's one local Ray (2 CPUs, its own short temp dir under /tmp; ``ray.shutdown()`` at the end),
    started by the first test that asks for it. Yields the fault-injection folder its Ray Train workers watch
    (``tavaal.faults``: a worker of a task job dies at epoch 1 while ``DIR/armed`` exists, once per ``DIR/fired``).
    Tests that need a Ray of their own (token authentication, a Ray they kill) start it in a subprocess."""
    import ray

    from tavaal import faults
    from tavaal.backends.ray.backend import WORKER_ENV, local_system_config
    from tavaal.backends.ray.connect import LOOPBACK, loopback_only

    assert not ray.is_initialized(), "a test left a Ray running in the pytest process"
    fault = tmp_path_factory.mktemp("fault")
    tmp = tempfile.mkdtemp(prefix="tvs", dir="/tmp")  # short: Ray's unix socket paths must stay < 107 chars
    with loopback_only():  # as the project starts a local Ray: listening on 127.0.0.1 only
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            _temp_dir=tmp,
            log_to_driver=False,
            runtime_env={"env_vars": WORKER_ENV | {faults.ENV: f"task:1:{fault}"}},
            _system_config=local_system_config(2),
            _node_ip_address=LOOPBACK,
        )
    try:
        yield fault
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """One real ``mlflow server`` on 127.0.0.1 for the tests that do not stop it (each logs to an experiment of its
    own); a test that stops its server (an outage) starts its own ``MlflowServer``."""
    with MlflowServer(tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server


SLOW_FIXTURES = {"ray_cluster", "mlflow_server"}


def pytest_collection_modifyitems(items):
    """A test that starts (or shares) the session's Ray or mlflow server is ``slow`` (see pyproject's markers)."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


# ---------------------------------------------------------------- users' own pools (Parquet, PNG bytes)

NAMES = ("tl", "tr", "bl", "br")  # synthetic's classes: the quadrant of the blob
N_POOL, N_TEST = 300, 100


def png(pixels) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """pool.parquet (labeled), unlabeled.parquet (the same rows, label null) and test.parquet, PNG bytes."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tavaal.data.synthetic import synthetic_images

    d = tmp_path_factory.mktemp("own")
    x, y = synthetic_images(N_POOL + N_TEST, np.random.default_rng(0))  # uint8 [N, 1, 16, 16]
    images = [png(a[0]) for a in x]
    ids = [f"img{i:04d}" for i in range(N_POOL)]
    labels = [NAMES[c] for c in y]
    pq.write_table(
        pa.table({"id": ids, "image": images[:N_POOL], "label": labels[:N_POOL]}), d / "pool.parquet", row_group_size=64
    )
    pq.write_table(
        pa.table({"id": ids, "image": images[:N_POOL], "label": pa.nulls(N_POOL, pa.string())}), d / "unlabeled.parquet"
    )
    pq.write_table(
        pa.table({"id": [f"t{i}" for i in range(N_TEST)], "image": images[N_POOL:], "label": labels[N_POOL:]}),
        d / "test.parquet",
    )
    return {"dir": d, "pixels": dict(zip(ids, x[:N_POOL])), "truth": dict(zip(ids, labels[:N_POOL]))}


def pool_args(files, pool: str, out: Path, *extra: str) -> list[str]:
    """``python -m tavaal.run`` arguments for a two-stage smoke run on one of ``files``' pools."""
    return [
        "--config",
        "configs/smoke.yaml",
        "--set",
        "train.epochs=1",
        "--set",
        "vae.iterations=4",
        "--set",
        "al.stages=2",
        "--set",
        "data.name=parquet",
        "--set",
        f"data.path={files['dir'] / pool}",
        "--set",
        f"data.test_path={files['dir'] / 'test.parquet'}",
        "--set",
        "data.image_size=16",
        "--set",
        "data.channels=1",
        "--set",
        "data.num_train=null",
        "--set",
        "data.num_test=null",
        "--out",
        str(out),
        *extra,
    ]


def digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and its SHA-256: byte-identical before and after means nothing changed."""
    import hashlib

    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
