"""What an MLflow user expects of a run beyond its stage metrics: tags to sort and filter by, the data it ran on as
run inputs, system metrics through MLflow's own monitor, and the final task model and ranker as MLflow models.

Nothing here imports mlflow at module level: ``describe_inputs`` (what the data and models are, as plain JSON) runs
where the data is (the driver of ``python -m tavaal.run``, or a Tune trial on a worker, which reports it to the
driver); everything that writes MLflow runs on the driver.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tavaal.redact import redact

TAG = "tavaal."  # every tag of ours starts with it: strategy, seed, dataset, sweep, trial_id, model_uri, best.*
MODEL_NAMES = ("model", "ranker")  # the MLflow models a finished run logs: the task model and (if any) its ranker
SYSTEM_METRICS_INTERVAL_S = 10.0  # MLflow's own default; MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it
REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- tags


def run_tags(config: dict[str, Any], sweep: str | None = None, source: str = "python -m tavaal.run") -> dict[str, str]:
    """Strategy, seed, data set (and sweep) as tags, beside the params: the runs table filters and groups by tags;
    plus MLflow's own source tags (the entry point and, in a git checkout, the commit)."""
    data = config.get("data", {})
    tags = {
        TAG + "strategy": str(config.get("al", {}).get("strategy", "")),
        TAG + "seed": str(config.get("seed", "")),
        TAG + "dataset": dataset_name(data),
        "mlflow.source.name": source,
        "mlflow.source.type": "LOCAL",
    }
    if sweep is not None:
        tags[TAG + "sweep"] = sweep
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return {k: redact(v) for k, v in tags.items()}


def dataset_name(data: dict[str, Any]) -> str:
    """``fashionmnist``, or for own data the name with its file or folder (``parquet:pool.parquet``)."""
    name = str(data.get("name", ""))
    path = data.get("path")
    return f"{name}:{Path(str(path)).name}" if path else name


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The checkout's commit, if tavaal runs from a git checkout (an installed copy has none: no tag)."""
    if not (REPO / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None


# ---------------------------------------------------------------- inputs: the data and the model's shape


def digest(split, extra: str = "") -> str:
    """A short content hash of one split: labels, ids and (when held in memory) the pixels or vectors. A lazy image
    source (decoded or rendered per batch) is hashed by its shape, ids and labels instead of its images."""
    import torch

    h = hashlib.sha256(extra.encode())
    h.update(np.ascontiguousarray(split.y.numpy()).tobytes())
    if split.ids is not None:
        h.update("\x00".join(map(str, split.ids.tolist())).encode())
    x = split.x
    if isinstance(x, torch.Tensor):
        h.update(np.ascontiguousarray(x.numpy()).tobytes())
    else:
        h.update(repr(tuple(x.shape)).encode())
    return h.hexdigest()[:10]


def describe_inputs(data, spec, config: dict[str, Any]) -> dict[str, Any]:
    """What the tracker logs about a run's data and models, as JSON (a Tune trial reports it to the driver):
    the pool and test sets (name, digest, source, rows) and the task model's spec with one input example."""
    d = config.get("data", {})
    name = dataset_name(d)
    source = redact(d.get("path") or d.get("data_dir") or f"tavaal:{d.get('name', '')}")
    test_source = redact(d.get("test_path") or source)
    extra = repr(tuple(data.input_shape)) + repr(data.class_names)
    datasets = [
        {"name": f"{name} pool", "digest": digest(data.train, extra), "source": source, "context": "train",
         "rows": len(data.train)},
        {"name": f"{name} test", "digest": digest(data.test, extra), "source": test_source, "context": "test",
         "rows": len(data.test)},
    ]  # fmt: skip
    split = "test" if len(data.test) else "train"
    x, _ = data.batch(split, np.arange(min(2, len(data.split(split)))))
    return {
        "datasets": datasets,
        "spec": {
            "name": spec.name,
            "input_shape": list(spec.input_shape),
            "num_classes": int(spec.num_classes),
            "ranker_hidden": int(spec.ranker_hidden),
        },
        "example": x.float().numpy().tolist(),
    }


def log_inputs(client, run_id: str, inputs: dict[str, Any]) -> None:
    """The pool and test sets as the run's inputs (MLflow's Datasets column and the run page's inputs); a dataset
    already among the run's inputs (a resumed run) is not logged again."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    have = {(d.dataset.name, d.dataset.digest) for d in client.get_run(run_id).inputs.dataset_inputs}
    new = []
    for d in inputs.get("datasets", []):
        if (d["name"], d["digest"]) in have:
            continue
        profile = f'{{"num_rows": {int(d["rows"])}}}'
        entity = Dataset(d["name"], d["digest"], "tavaal", d["source"], profile=profile)
        new.append(DatasetInput(entity, [InputTag("mlflow.data.context", d["context"])]))
    if new:
        client.log_inputs(run_id, datasets=new)


# ---------------------------------------------------------------- system metrics


def start_system_metrics(run_id: str, tracking_uri: str, interval: float | None, resume: bool):
    """MLflow's own monitor (CPU, memory, disk, network, and GPUs where present) for a run made with
    ``MlflowClient.create_run`` (MLflow starts it only for ``mlflow.start_run``); None when ``interval`` is None."""
    if interval is None:
        return None
    # the monitor's own lines (started, stopped, "failed to get run" during a tracking outage) stay off the screen:
    # the tracker says what matters about an outage itself
    logging.getLogger("mlflow.system_metrics").setLevel(logging.ERROR)
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError:  # psutil missing (a dependency of tavaal; an environment without it): no system metrics
        return None

    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, resume_logging=resume, tracking_uri=tracking_uri)
    monitor.start()
    return monitor


def stop_system_metrics(monitor, last_sample: bool = True) -> None:
    """Stop the monitor and (``last_sample``) log one last sample, so that a run shorter than one interval still has
    its system metrics. Waits a few seconds at most: during a tracking outage the monitor's thread sits in mlflow's
    retries, and a run must not wait for them (the thread is a daemon and ends with the process)."""
    if monitor is None:
        return
    monitor._shutdown_event.set()
    if not last_sample:
        return  # a run left open by an outage: the thread ends at its next look at the run, or with the process
    thread = monitor._process
    if thread is not None:
        thread.join(timeout=5)
        if thread.is_alive():
            return  # still retrying against a store that does not answer: leave it
    monitor._process = None
    with contextlib.suppress(Exception):  # the run is complete without them; an outage is reported elsewhere
        monitor.collect_metrics()
        monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()


# ---------------------------------------------------------------- the final models


@contextlib.contextmanager
def using_tracking_uri(uri: str) -> Iterator[None]:
    """mlflow's model functions read the process-wide tracking URI: point it at ``uri`` for the call only."""
    import mlflow

    try:
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri
    except ImportError:  # a future mlflow without it: set and restore
        before = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(before)
        return
    with _use_tracking_uri(uri):
        yield


def final_modules(inputs: dict[str, Any], states: dict[str, Any]) -> dict[str, Any]:
    """name -> torch module taking a batch of normalized inputs: ``model`` returns the class logits (segmentation:
    per pixel), ``ranker`` the predicted loss r̂ of each input (the task model's features through the ranker). Our
    task models return logits, embedding and features at once; MLflow serves one tensor per model."""
    import torch

    from tavaal.core.training import ModelSpec

    class Logits(torch.nn.Module):
        def __init__(self, net) -> None:
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x).logits

    class PredictedLoss(torch.nn.Module):
        def __init__(self, net, ranker) -> None:
            super().__init__()
            self.net, self.ranker = net, ranker

        def forward(self, x):
            return self.ranker(self.net(x).features)

    s = inputs["spec"]
    spec = ModelSpec(s["name"], tuple(s["input_shape"]), s["num_classes"], s["ranker_hidden"])
    net, ranker = spec.build(with_ranker=states.get("ranker") is not None)
    net.load_state_dict(states["model"])
    out: dict[str, Any] = {"model": Logits(net).eval()}
    if ranker is not None:
        ranker.load_state_dict(states["ranker"])
        out["ranker"] = PredictedLoss(net, ranker).eval()
    return out


def log_models(
    tracking_uri: str, run_id: str, inputs: dict[str, Any], states: dict[str, Any], register: str | None = None
) -> dict[str, str]:
    """Log the final task model (and ranker) of a run as MLflow PyTorch models with a signature and an input example,
    saved with ``torch.export`` (MLflow's ``pt2`` format: loading it runs no pickle); ``register`` names a registered
    model the task model becomes a new version of. Returns name -> model URI (``models:/m-...``)."""
    import mlflow
    import torch
    from mlflow.models import infer_signature

    example = np.asarray(inputs["example"], dtype=np.float32)
    uris = {}
    with using_tracking_uri(tracking_uri):
        for name, module in final_modules(inputs, states).items():
            with torch.no_grad():
                output = module(torch.from_numpy(example)).numpy()
            info = mlflow.pytorch.log_model(
                module,
                name=name,
                run_id=run_id,
                signature=infer_signature(example, output),
                input_example=example,
                serialization_format="pt2",
                # given, not inferred: inferring loads the model in a subprocess, seconds for nothing
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
                registered_model_name=register if name == "model" else None,
            )
            uris[name] = info.model_uri
    return uris


def register_model(tracking_uri: str, model_uri: str, name: str) -> str:
    """A new version of registered model ``name`` from ``model_uri``; returns its version."""
    import mlflow

    with using_tracking_uri(tracking_uri):
        return str(mlflow.register_model(model_uri, name).version)
