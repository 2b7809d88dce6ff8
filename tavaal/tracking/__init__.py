"""The Tracker seam: the loop reports each stage through it (MLflow lives behind it, driver side only).

  tracker.py  the ``Tracker`` protocol, ``NullTracker``, ``MLflowTracker`` with its outage buffer
  store.py    the MLflow store: connecting, experiments, runs, what a stage logs, a sweep's parent and children
  plots.py    accuracy-vs-labels figures (a run, a sweep, ``python -m tavaal.report``)

``MLflowTracker`` writes one MLflow run per experiment through its own ``MlflowClient`` (no global active
run), so one driver can hold a tracker per Tune trial. Per stage, with ``step = stage``:

  test/accuracy, test/balanced_accuracy, test/accuracy_class_{c}, labels/count, labels/entropy,
  labels/entropy_norm, labels/class_{c}, time/stage, time/train, time/query, info/{key}
  and for segmentation also test/miou, test/pixel_accuracy (= test/accuracy), test/iou_class_{c}
  (labels/* then count the labeled set's pixels per class)

plus the artifact ``selected/stage-NNNN.parquet`` (columns ``stage``, ``index``). ``config.json`` and
``config.yaml`` are logged when the run is created, ``accuracy.png`` when it ends. mlflow is imported
lazily: importing this module (or the loop) must not load it.
"""

from __future__ import annotations

from tavaal.tracking.plots import accuracy_figure
from tavaal.tracking.store import (
    DEFAULT_TRACKING_URI,
    EXPERIMENT_KIND,
    FALLBACK_HINT,
    HEALTH_TIMEOUT_S,
    MARKER,
    PARENT_TAG,
    check_health,
    child_runs,
    connect,
    curve_points,
    default_artifact_location,
    ensure_experiment,
    find_child_run,
    flatten,
    log_config,
    log_figure,
    log_metrics,
    log_params,
    log_parent_summary,
    log_selected,
    metric_steps,
    reopen_run,
    stage_metrics,
    start_parent_run,
    tracking_errors,
)
from tavaal.tracking.tracker import MLflowTracker, NullTracker, Tracker

__all__ = [
    "DEFAULT_TRACKING_URI",
    "EXPERIMENT_KIND",
    "FALLBACK_HINT",
    "HEALTH_TIMEOUT_S",
    "MARKER",
    "PARENT_TAG",
    "MLflowTracker",
    "NullTracker",
    "Tracker",
    "accuracy_figure",
    "check_health",
    "child_runs",
    "connect",
    "curve_points",
    "default_artifact_location",
    "ensure_experiment",
    "find_child_run",
    "flatten",
    "log_config",
    "log_figure",
    "log_metrics",
    "log_params",
    "log_parent_summary",
    "log_selected",
    "metric_steps",
    "reopen_run",
    "stage_metrics",
    "start_parent_run",
    "tracking_errors",
]
