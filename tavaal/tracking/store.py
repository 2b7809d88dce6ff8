"""The MLflow store: connecting (in seconds, with one-line errors), experiments and runs, what a stage logs, and a
sweep's parent run with a child per trial. mlflow is imported inside the functions: importing this module does
not load it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import numbers
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tavaal.config import flatten
from tavaal.csvsafe import write_csv
from tavaal.errors import TrackingError
from tavaal.redact import has_credentials, redact, redact_values
from tavaal.tracking.plots import accuracy_figure

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # the embedded default store, in the working directory
FALLBACK_HINT = "start it or pass --tracking-uri sqlite:///mlflow.db"
MARKER = "test/accuracy"  # logged last in a stage's batch: its steps are the stages already logged
PICKED = "labels/picked"  # labels a stage's query picked: its steps are the stages whose query is logged
HEALTH_TIMEOUT_S = 5.0  # an unreachable server fails in seconds, not after mlflow's minutes of retries
PARENT_TAG = "mlflow.parentRunId"


# ---------------------------------------------------------------- connecting


def connect(tracking_uri: str):
    """An ``MlflowClient`` for a server or store that answers; otherwise TrackingError, in seconds."""
    if tracking_uri.startswith(("http://", "https://")):
        check_health(tracking_uri)
    import mlflow

    with tracking_errors(tracking_uri, "opening the store"):
        client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        client.search_experiments(max_results=1)
    return client


def check_health(url: str) -> None:
    """A plain GET of ``/health`` with a short timeout (mlflow's own retries take minutes to give up).

    User info in the URL (``http://user:pass@host``) goes out as a basic-auth header, as mlflow's own requests
    send it (urllib would read it as part of the host name); the messages name the URL redacted."""
    parts = urllib.parse.urlsplit(url)
    request = urllib.request.Request(
        parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl().rstrip("/") + "/health"
    )
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=HEALTH_TIMEOUT_S):
            pass
    except urllib.error.HTTPError:
        return  # something answered (a proxy or auth layer, say): the API call that follows will tell
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        name = type(reason).__name__ if isinstance(reason, BaseException) else type(e).__name__
        raise TrackingError(f"MLflow tracking server {redact(url)} is unreachable ({name}); {FALLBACK_HINT}") from None


@contextlib.contextmanager
def tracking_errors(uri: str, doing: str) -> Iterator[None]:
    """Turn any failure of the tracking client into a one-line TrackingError naming the URI (credentials in the
    URI, or in the client's own message, masked: ``tavaal.redact``)."""
    try:
        yield
    except TrackingError:
        raise
    except Exception as e:
        detail = redact(" ".join(str(e).split()))[:200]
        raise TrackingError(
            f"MLflow tracking at {redact(uri)} failed while {doing} ({type(e).__name__}: {detail}); "
            f"check the server or store, or pass --tracking-uri {DEFAULT_TRACKING_URI}"
        ) from None


# MLflow 3's UI opens an experiment in its training view with this tag (without it: an empty GenAI traces page)
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def ensure_experiment(client, tracking_uri: str, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created (tagged as model training, ``EXPERIMENT_KIND``) if it is new."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = artifact_location or default_artifact_location(tracking_uri, name)
    try:
        return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
    except Exception:  # another driver created it in between
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def default_artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """A SQLite store keeps its artifacts beside the file (``<db dir>/mlruns/<experiment>``), not in whatever
    directory the process happens to run in (mlflow's default, ``./mlruns``)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = tracking_uri[len("sqlite:///") :].split("?", 1)[0]
    if not db or db == ":memory:":
        return None
    return str(Path(db).resolve().parent / "mlruns" / re.sub(r"[^\w\-.]", "_", experiment))


def reopen_run(client, run_id: str, uri: str):
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise TrackingError(
            f"MLflow run {run_id} not found at {redact(uri)}; resume with the tracking URI the run started with"
        ) from None
    client.update_run(run_id, status="RUNNING")
    return run


def safe_tags(tags: dict | None) -> dict[str, str]:
    """Tags as text, values with the credentials of any URI in them masked."""
    return {str(k): redact(v) for k, v in (tags or {}).items()}


def set_terminated(client, uri: str, run_id: str, status: str) -> None:
    """``client.set_terminated``; against a server whose URI carries credentials, without mlflow's "View run at
    <URI>" lines on stdout (they would print the password)."""
    if not (uri.startswith(("http://", "https://")) and has_credentials(uri)):
        client.set_terminated(run_id, status)
        return
    key = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
    before = os.environ.get(key)
    os.environ[key] = "true"
    try:
        client.set_terminated(run_id, status)
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


# ---------------------------------------------------------------- what gets logged


def log_params(client, run_id: str, params: dict[str, Any]) -> None:
    """Flattened params (``al.budget``), values as text with the credentials of any URI in them masked."""
    from mlflow.entities import Param
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

    items = [Param(k, redact(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in flatten(params)]
    for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=items[i : i + MAX_PARAMS_TAGS_PER_BATCH])


def set_tags(client, run_id: str, tags: dict[str, Any]) -> None:
    """Tags in one batch (values as text, credentials in any URI masked)."""
    from mlflow.entities import RunTag

    items = [RunTag(k, v) for k, v in safe_tags(tags).items()]
    if items:
        client.log_batch(run_id, tags=items)


def log_config(client, run_id: str, config: dict[str, Any]) -> None:
    """``config.json`` and ``config.yaml``, with the credentials of any URI in them masked."""
    import yaml

    config = redact_values(json.loads(json.dumps(config, default=str)))
    client.log_text(run_id, json.dumps(config, indent=2, default=str), "config.json")
    client.log_text(run_id, yaml.safe_dump(json.loads(json.dumps(config, default=str)), sort_keys=False), "config.yaml")


def stage_metrics(rec: dict[str, Any]) -> dict[str, float]:
    """Metric name -> value for one StageRecord dict; ``MARKER`` comes last."""
    m = {
        "test/balanced_accuracy": rec["balanced_accuracy"],
        "labels/count": rec["num_labeled"],
        "labels/entropy": rec["label_entropy"],
        "labels/entropy_norm": rec["label_entropy_norm"],
        "time/stage": rec.get("time_stage", 0.0),
        "time/train": rec.get("time_train", 0.0),
        "time/query": rec.get("time_query", 0.0),
    }
    m |= {f"labels/class_{c}": n for c, n in enumerate(rec.get("label_counts", []))}
    m |= {f"test/accuracy_class_{c}": a for c, a in enumerate(rec.get("per_class_accuracy", []))}
    if rec.get("miou") is not None:  # segmentation
        m |= {"test/miou": rec["miou"], "test/pixel_accuracy": rec["accuracy"]}
        m |= {f"test/iou_class_{c}": v for c, v in enumerate(rec.get("per_class_iou", []))}
    if rec.get("train_accuracy") is not None:
        m["train/accuracy"] = rec["train_accuracy"]
    m |= query_metrics(rec)
    return {k: float(v) for k, v in m.items()} | {MARKER: float(rec["accuracy"])}


def query_metrics(rec: dict[str, Any]) -> dict[str, float]:
    """The metrics of a stage's query alone (its picks, the game's health, the strategy's numbers): what a stage
    that was the last of a shorter plan adds when an extended run queries it."""
    m: dict[str, Any] = {}
    health = dict(rec.get("health") or {})  # vaal/tavaal: game/disc_loss_tail, game/disc_auroc, ...
    m |= {f"game/picks_class_{c}": n for c, n in enumerate(health.pop("pick_counts", []))}
    m |= {f"game/{k}": v for k, v in health.items() if v is not None}
    for key, v in flatten(rec.get("info") or {}):
        if isinstance(v, numbers.Real) and not isinstance(v, bool):
            m["info/" + re.sub(r"[^\w\-. /]", "_", key)] = v
    if rec.get("selected"):  # last: in a batch of the query alone, it marks the batch as stored
        m[PICKED] = len(rec["selected"])
    return {k: float(v) for k, v in m.items()}


def log_metrics(client, run_id: str, step: int, metrics: dict[str, float]) -> None:
    import time

    from mlflow.entities import Metric
    from mlflow.utils.validation import MAX_METRICS_PER_BATCH

    now = int(time.time() * 1000)
    items = [Metric(k, v, now, step) for k, v in metrics.items()]
    for i in range(0, len(items), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=items[i : i + MAX_METRICS_PER_BATCH])


def log_selected(client, run_id: str, stage: int, selected: list[int]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"stage": pa.array([stage] * len(selected), pa.int64()), "index": pa.array(selected, pa.int64())})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"stage-{stage:04d}.parquet"
        pq.write_table(table, path)
        client.log_artifact(run_id, str(path), "selected")


def metric_steps(client, run_id: str, key: str) -> dict[int, float]:
    """step -> value of one metric (the latest value where a step somehow appears twice)."""
    return {m.step: m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)}


def curve_points(client, run_id: str) -> dict[int, tuple[float, float]]:
    """stage -> (labels/count, test/accuracy) already in the run: one history read per metric."""
    acc, labels = metric_steps(client, run_id, MARKER), metric_steps(client, run_id, "labels/count")
    return {s: (labels.get(s, math.nan), a) for s, a in acc.items()}


def log_figure(client, run_id: str, fig, name: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        fig.savefig(path)
        client.log_artifact(run_id, str(path))


# ---------------------------------------------------------------- sweeps: a parent run with a child per trial


def start_parent_run(
    tracking_uri: str | None,
    experiment: str,
    run_name: str,
    params: dict | None = None,
    run_id: str | None = None,
    tags: dict | None = None,
    artifact_location: str | None = None,
) -> str:
    """Create a sweep's parent run (or reopen ``run_id``) and return its id; children pass it as parent_run_id."""
    uri = tracking_uri or DEFAULT_TRACKING_URI
    client = connect(uri)
    with tracking_errors(uri, "starting the parent run"):
        if run_id is not None:
            return reopen_run(client, run_id, uri).info.run_id
        exp_id = ensure_experiment(client, uri, experiment, artifact_location)
        run = client.create_run(exp_id, run_name=redact(run_name), tags=safe_tags(tags))
        log_params(client, run.info.run_id, params or {})
    return run.info.run_id


def child_runs(client, parent_run_id: str) -> list:
    exp_id = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs(
        [exp_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
        max_results=5000,
        order_by=["attributes.start_time ASC"],
    )


def find_child_run(tracking_uri: str | None, parent_run_id: str, trial_id: str) -> str | None:
    """The id of the child run tagged ``tavaal.trial_id = trial_id`` under the parent, if there is one."""
    uri = tracking_uri or DEFAULT_TRACKING_URI
    client = connect(uri)
    with tracking_errors(uri, "looking up a child run"):
        runs = [r for r in child_runs(client, parent_run_id) if r.data.tags.get("tavaal.trial_id") == str(trial_id)]
    return runs[0].info.run_id if runs else None


def log_parent_summary(
    tracking_uri: str | None,
    parent_run_id: str,
    trials: list[dict[str, Any]],
    objective: str,
    status: str | None = "FINISHED",
) -> dict[str, str]:
    """``trials.csv`` (the rows as given) and ``comparison.png`` (every child's curve) on the parent run, and the best
    trial at a glance: its ``auc`` and ``final_accuracy`` as the parent's metrics (the runs table sorts the collapsed
    parent by them), its trial id, child run, model and parameters as ``tavaal.best_*`` tags (filterable:
    ``tags.tavaal.best_trial_id = '...'``), and ``trials/finished``, ``trials/errored``; then the parent's terminal
    ``status`` (None leaves it running). Returns the best trial's ``trial_id``, ``run_id`` and ``model_uri`` (those
    known)."""
    uri = tracking_uri or DEFAULT_TRACKING_URI
    client = connect(uri)
    best: dict[str, str] = {}
    with tracking_errors(uri, "writing the sweep summary"), tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trials.csv"
        columns = list(dict.fromkeys(k for row in trials for k in row))
        # every cell through csvsafe: people open trials.csv in a spreadsheet, and config values are free text
        write_csv(path, columns, ([row.get(c) for c in columns] for row in redact_values(trials)))
        client.log_artifact(parent_run_id, str(path))
        by_trial = {str(row.get("trial_id")): row.get(objective) for row in trials}
        children = child_runs(client, parent_run_id)
        curves = {}
        for run in children:
            name = run.info.run_name or run.info.run_id[:8]
            score = by_trial.get(run.data.tags.get("tavaal.trial_id", ""))
            label = f"{name} ({objective} {score:.4g})" if isinstance(score, numbers.Real) else name
            curves[label] = curve_points(client, run.info.run_id)
        title = f"sweep: test accuracy vs labels of its {len(curves)} trials ({objective} in the legend)"
        log_figure(client, parent_run_id, accuracy_figure(curves, title), "comparison.png")
        scored = [row for row in trials if isinstance(row.get(objective), numbers.Real)]
        metrics = {"trials/finished": float(sum(row.get("status") == "OK" for row in trials))}
        metrics["trials/errored"] = float(len(trials)) - metrics["trials/finished"]
        tags: dict[str, Any] = {}
        if scored:
            top = max(scored, key=lambda row: row[objective])
            metrics |= {k: float(top[k]) for k in ("auc", "final_accuracy") if isinstance(top.get(k), numbers.Real)}
            best["trial_id"] = str(top.get("trial_id"))
            tags["tavaal.best_trial_id"] = best["trial_id"]
            tags |= {f"tavaal.best.{k[len('param.') :]}": v for k, v in top.items() if k.startswith("param.")}
            child = [r for r in children if r.data.tags.get("tavaal.trial_id") == best["trial_id"]]
            if child:
                best["run_id"] = child[0].info.run_id
                tags["tavaal.best_run_id"] = best["run_id"]
                if child[0].data.tags.get("tavaal.model_uri"):
                    best["model_uri"] = child[0].data.tags["tavaal.model_uri"]
                    tags["tavaal.best_model_uri"] = best["model_uri"]
        log_metrics(client, parent_run_id, 0, metrics)
        set_tags(client, parent_run_id, {k: str(v)[:5000] for k, v in tags.items()})
        log_children_inputs(client, parent_run_id, children)
        if status is not None:
            set_terminated(client, uri, parent_run_id, status)
    return best


def log_children_inputs(client, parent_run_id: str, children: list) -> None:
    """The data sets the trials ran on, as the parent's inputs too: the collapsed parent row of the runs table then
    shows which data the sweep was on (two sweeps on different data differ at a glance)."""
    have = {(d.dataset.name, d.dataset.digest) for d in client.get_run(parent_run_id).inputs.dataset_inputs}
    new: dict[tuple[str, str], Any] = {}
    for run in children:
        for d in run.inputs.dataset_inputs:
            key = (d.dataset.name, d.dataset.digest)
            if key not in have:
                new.setdefault(key, d)
    if new:
        client.log_inputs(parent_run_id, datasets=list(new.values()))
