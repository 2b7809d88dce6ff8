"""A Tune callback that writes MLflow on the driver: one child run per trial, under the sweep's parent run.

Trials report their stage records; the callback forwards each to the trial's ``MLflowTracker``, whose
``log_stage`` is idempotent per stage, so a resumed trial (or a resumed sweep) never logs a step twice.
The child run of a trial is found again by its ``tavaal.trial_id`` tag.
"""

from __future__ import annotations

from typing import Any

from ray import tune


class MLflowSweepCallback(tune.Callback):
    def __init__(self, tracking_uri: str, experiment: str, parent_run_id: str, base: dict[str, Any]) -> None:
        self.tracking_uri, self.experiment, self.parent_run_id, self.base = (
            tracking_uri,
            experiment,
            parent_run_id,
            base,
        )
        self._trackers: dict[str, Any] = {}

    def __getstate__(self) -> dict:  # pickled into the Tuner state: no live clients
        return {k: v for k, v in self.__dict__.items() if k != "_trackers"} | {"_trackers": {}}

    def _tracker(self, trial):
        if trial.trial_id in self._trackers:
            return self._trackers[trial.trial_id]
        from tavaal.search_space import resolve_trial_config
        from tavaal.tracking import MLflowTracker, find_child_run

        existing = find_child_run(self.tracking_uri, self.parent_run_id, trial.trial_id)
        tracker = MLflowTracker(
            self.tracking_uri,
            self.experiment,
            run_name=f"trial-{trial.trial_id}",
            parent_run_id=self.parent_run_id,
            tags={"tavaal.trial_id": trial.trial_id},
        )
        config = resolve_trial_config(self.base, trial.config).to_dict()
        tracker.start(config, run_id=existing)
        self._trackers[trial.trial_id] = tracker
        return tracker

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        record = result.get("record")
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
            tracker.end(status)
