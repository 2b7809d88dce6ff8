"""The worker side of ``python -m tavaal.sweep``: the Tune function trainable, one AL experiment per trial.

It reports once per stage with the AL checkpoint of that stage; a restarted trial resumes from
``tune.get_checkpoint()``. Ray is imported inside the trainable, on the worker.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

from tavaal.core.metrics import objective_metrics

TRIAL_FAULT_ENV = "TAVAAL_TRIAL_FAULT"  # tests: "STAGE:DIR" makes one trial fail after reporting STAGE


def _maybe_fail(stage: int) -> None:
    """Fault injection for tests: with ``$TAVAAL_TRIAL_FAULT = STAGE:DIR`` and no ``DIR/fired`` yet, the first
    trial to report STAGE raises once (``DIR/fired`` marks it); Tune retries it from that stage's checkpoint."""
    spec = os.environ.get(TRIAL_FAULT_ENV, "")
    if not spec:
        return
    at, folder = spec.split(":", 1)
    fired = Path(folder) / "fired"
    if int(at) == stage and not fired.exists():
        fired.write_text(f"trial failed on purpose after stage {stage}\n")
        raise RuntimeError(f"injected trial fault after stage {stage} ({TRIAL_FAULT_ENV})")


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
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(stage_path))
        ckpt.prune(out, 1)  # Tune keeps its own copy; keep the newest locally
        _maybe_fail(record.stage)

    try:
        run_experiment(cfg, out_dir=out, resume=restored is not None, log=lambda m: None, on_stage=on_stage)
    finally:
        shutil.rmtree(out, ignore_errors=True)
