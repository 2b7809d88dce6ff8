"""The Tracker seam: the loop reports each stage through it (MLflow lives behind it, driver side only).

  tracker.py  the ``Tracker`` protocol, ``NullTracker``, ``MLflowTracker`` with its outage buffer
  store.py    the MLflow store: connecting, experiments, opening and ending runs
  metrics.py  what a run logs (params, config, a stage's metrics and picks, figures) and reads back
  parent.py   a sweep: the parent run, its child per trial, the parent's summary
  runinfo.py  a run's tags, system metrics, data set inputs and logged model
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

from tavaal.tracking.tracker import MLflowTracker, NullTracker, Tracker

__all__ = ["MLflowTracker", "NullTracker", "Tracker"]
