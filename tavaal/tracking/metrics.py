"""What a run logs to MLflow: params, tags, config files, a stage's metrics, its picks, figures; and the metric
histories read back. mlflow is imported inside the functions: importing this module does not load it.
"""

from __future__ import annotations

import json
import math
import numbers
import re
import tempfile
from pathlib import Path
from typing import Any

from tavaal.config import flatten
from tavaal.redact import redact, redact_values
from tavaal.tracking.store import safe_tags

MARKER = "test/accuracy"  # logged last in a stage's batch: its steps are the stages already logged
PICKED = "labels/picked"  # labels a stage's query picked: its steps are the stages whose query is logged


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
