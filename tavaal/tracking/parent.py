"""A sweep in MLflow: a parent run with a child run per trial, and the parent's summary of them (trials.csv,
the comparison figure, the best trial's tags). mlflow is imported inside the functions.
"""

from __future__ import annotations

import numbers
import tempfile
from pathlib import Path
from typing import Any

from tavaal.csvsafe import write_csv
from tavaal.redact import redact, redact_values
from tavaal.tracking.metrics import curve_points, log_figure, log_metrics, log_params, set_tags
from tavaal.tracking.plots import accuracy_figure
from tavaal.tracking.store import (
    DEFAULT_TRACKING_URI,
    connect,
    ensure_experiment,
    reopen_run,
    safe_tags,
    set_terminated,
    tracking_errors,
)

PARENT_TAG = "mlflow.parentRunId"


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
