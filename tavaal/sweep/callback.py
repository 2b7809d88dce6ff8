"""A Tune callback that writes MLflow on the driver: one child run per trial, under the sweep's parent run.

Trials report their stage records; the callback forwards each to the trial's ``MLflowTracker``, whose
``log_stage`` is idempotent per stage, so a resumed trial (or a resumed sweep) never logs a step twice.
The child run of a trial is found again by its ``tavaal.trial_id`` tag. A trial's first report carries what its
data and models are (``inputs``: the run's dataset inputs, and what the final models are built from); when the trial
completes, its final task model and ranker are logged from its last Tune checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray import tune


class MLflowSweepCallback(tune.Callback):
    def __init__(
        self, tracking_uri: str, experiment: str, parent_run_id: str, base: dict[str, Any], sweep: str | None = None
    ) -> None:
        self.tracking_uri, self.experiment, self.parent_run_id, self.base = (
            tracking_uri,
            experiment,
            parent_run_id,
            base,
        )
        self.sweep = sweep
        self._trackers: dict[str, Any] = {}

    def __getstate__(self) -> dict:  # pickled into the Tuner state: no live clients
        return {k: v for k, v in self.__dict__.items() if k != "_trackers"} | {"_trackers": {}}

    def _tracker(self, trial):
        if trial.trial_id in self._trackers:
            return self._trackers[trial.trial_id]
        from tavaal.search_space import resolve_trial_config
        from tavaal.tracking import MLflowTracker
        from tavaal.tracking.parent import find_child_run

        existing = find_child_run(self.tracking_uri, self.parent_run_id, trial.trial_id)
        config = resolve_trial_config(self.base, trial.config).to_dict()
        tracker = MLflowTracker(
            self.tracking_uri,
            self.experiment,
            # named for what it is: the strategy, the seed and the trial (a hyperparameter point of the sweep)
            run_name=f"{config['al']['strategy']}-seed{config['seed']}-trial-{trial.trial_id}",
            parent_run_id=self.parent_run_id,
            tags={"tavaal.trial_id": trial.trial_id},
            sweep=getattr(self, "sweep", None),  # a callback pickled before sweeps named themselves has none
            source="python -m tavaal.sweep",
        )
        tracker.start(config, run_id=existing)
        self._trackers[trial.trial_id] = tracker
        return tracker

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        record = result.get("record")
        if result.get("inputs") is not None:  # the trial's data and model shape, as JSON (sweep/trial.py)
            self._tracker(trial).use_inputs(json.loads(result["inputs"]))
        if record is not None:
            self._tracker(trial).log_stage(record)
            quality = (
                f"acc {record['accuracy']:.4f}"
                if record.get("miou") is None  # segmentation: mIoU
                else f"miou {record['miou']:.4f}"
            )
            print(
                f"trial {trial.trial_id}  stage {record['stage']} of 0..{self.base['al']['stages'] - 1}  labeled "
                f"{record['num_labeled']}  {quality}  auc {result.get('auc', 0):.4f}  "
                f"time {record['time_stage']:.1f}s",
                flush=True,
            )

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._end(trial, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._end(trial, "FAILED")

    def _end(self, trial, status: str) -> None:
        tracker = self._trackers.pop(trial.trial_id, None)
        if tracker is not None:
            tracker.end(status, states=final_states(trial, tracker.warn) if status == "FINISHED" else None)


def final_states(trial, warn) -> dict | None:
    """The model states of a trial's last Tune checkpoint (our stage format: ``state.pt`` holds them), read on the
    driver with ``weights_only`` loading; None (after one warning line) when it cannot be read."""
    import torch

    checkpoint = trial.checkpoint
    if checkpoint is None:
        return None
    try:
        with checkpoint.as_directory() as d:
            return dict(torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)["states"])
    except Exception as e:  # noqa: BLE001 - the trial's results stand; only its MLflow model is missing
        warn(f"warning: trial {trial.trial_id}: its final model is not logged ({type(e).__name__}: {e})"[:300])
        return None
