"""The worker side of ``python -m tavaal.sweep``: the Tune function trainable, one AL experiment per trial.

It reports once per stage with the AL checkpoint of that stage; a restarted trial resumes from
``tune.get_checkpoint()``. Ray is imported inside the trainable, on the worker.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

from tavaal import faults
from tavaal.core.metrics import objective_metrics


class InputsOnly:
    """The Tracker a trial runs its experiment with: it tracks nothing (MLflow is written on the driver) and keeps
    what the loop's ``log_inputs`` describes (the data's digests, the model's spec, an input example), which the
    trial's first report carries to the driver's tracker."""

    def __init__(self) -> None:
        self.config: dict = {}
        self.inputs: dict | None = None

    def start(self, config: dict, run_id: str | None = None) -> None:
        self.config = config

    def log_inputs(self, data, spec) -> None:
        from tavaal.tracking.runinfo import describe_inputs

        self.inputs = describe_inputs(data, spec, self.config)

    def log_stage(self, record: dict) -> None:
        pass

    def end(self, status: str = "FINISHED") -> None:
        pass


def al_trial(params: dict, base: dict, threads: int) -> None:
    """Tune function trainable: one AL experiment, one ``tune.report`` per stage with its checkpoint."""
    import logging

    from ray import tune

    from tavaal import checkpoint as ckpt
    from tavaal.experiment import run_experiment
    from tavaal.search_space import resolve_trial_config

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # no "Checkpoint successfully created" per stage
    cfg = resolve_trial_config(base, params)
    if cfg.num_threads is None:
        cfg = dataclasses.replace(cfg, num_threads=threads)
    out = Path(tempfile.mkdtemp(prefix="tavaal-trial-"))
    restored = tune.get_checkpoint()
    records: list[dict] = []
    collector = InputsOnly()
    if restored is not None:
        with restored.as_directory() as d:
            stage = json.loads((Path(d) / "manifest.json").read_text())["stage"]
            shutil.copytree(d, ckpt.stage_dir(out, stage))
        records = ckpt.load_latest(out).records

    def on_stage(record, stage_path) -> None:
        records.append(record.to_dict())
        metrics = objective_metrics(records) | {
            "stage": record.stage,
            "accuracy": record.accuracy,
            "num_labeled": record.num_labeled,
            "record": record.to_dict(),
        }
        if collector.inputs is not None:  # once per trial process: the driver's tracker keeps it
            # as JSON text: Tune's TensorBoard logger warns about every nested list it cannot plot, and skips text
            metrics["inputs"], collector.inputs = json.dumps(collector.inputs), None
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(stage_path))
        ckpt.prune(out, 1)  # Tune keeps its own copy; keep the newest locally
        faults.point("trial", record.stage)  # tests: Tune retries the trial from this stage's checkpoint

    try:
        run_experiment(
            cfg,
            tracker=collector,
            out_dir=out,
            resume=restored is not None,
            log=lambda m: None,
            on_stage=on_stage,
        )
    finally:
        shutil.rmtree(out, ignore_errors=True)
