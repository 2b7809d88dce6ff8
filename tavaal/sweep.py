"""python -m tavaal.sweep — a Ray Tune sweep of AL experiments (HyperOpt search), tracked in MLflow.

  python -m tavaal.sweep                                # the embedded default: small TA-VAAL sweep on CPU
  python -m tavaal.sweep --preset smoke                 # seconds-scale sweep on synthetic data
  python -m tavaal.sweep --config configs/cifar10_tavaal.yaml --space tune/tavaal.yaml --num-samples 32 \\
      --tracking-uri http://mlflow:5000 --storage-path s3://bucket/sweeps
  python -m tavaal.sweep --resume NAME                  # continue an interrupted sweep
  ray job submit --working-dir . -- python -m tavaal.sweep ...

Each trial is one AL experiment: a Tune function trainable runs the loop and reports once per stage with
the AL checkpoint of that stage; a restarted trial resumes from ``tune.get_checkpoint()``. MLflow is
written on the driver, by a Tune callback: a parent run per sweep, a child run per trial.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from tavaal.core.metrics import objective_metrics
from tavaal.errors import TavaalError

PRESETS = {
    # the embedded default: real Fashion-MNIST, a few minutes per trial on one core
    "default": {"config": "configs/fashionmnist_tavaal_cpu.yaml", "space": "tune/tavaal_cpu.yaml",
                "num_samples": 4, "overrides": {"al.stages": 4, "vae.iterations": 150, "train.epochs": 10,
                                                "train.milestones": [8], "train.ranker_stop_grad_epoch": 6,
                                                "data.num_test": 5000}},
    "smoke": {"config": "configs/smoke.yaml", "space": "tune/smoke.yaml", "num_samples": 2,
              "overrides": {"al.stages": 2, "train.epochs": 1, "vae.iterations": 4}},
}
OBJECTIVES = ("auc", "final_accuracy")
STATE_FILE = "tavaal_sweep.json"


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
            "stage": record.stage, "accuracy": record.accuracy, "num_labeled": record.num_labeled,
            "record": record.to_dict(),
        }
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(stage_path))
        ckpt.prune(out, 1)  # Tune keeps its own copy; keep the newest locally
        _maybe_fail(record.stage)

    try:
        run_experiment(cfg, out_dir=out, resume=restored is not None, log=lambda m: None, on_stage=on_stage)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tavaal.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="config + space + size used for whatever is not given (default: %(default)s)")
    p.add_argument("--config", help="base YAML config (default: the preset's)")
    p.add_argument("--space", help="search space YAML, dotted config keys (default: the preset's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a base config field (repeatable)")
    p.add_argument("--num-samples", type=int, help="trials (default: the preset's)")
    p.add_argument("--max-concurrent", type=int,
                   help="trials at once (default: the trials that fit in the cluster's CPUs and GPUs now; all of "
                        "them when none fits yet, as on an autoscaling cluster whose head runs no trials)")
    p.add_argument("--cpus-per-trial", type=float,
                   help="CPUs per trial (default: 1, or what the sweep was started with when resuming)")
    p.add_argument("--gpus-per-trial", type=float,
                   help="GPUs per trial (default: 0, or what the sweep was started with when resuming)")
    p.add_argument("--search", choices=["hyperopt", "random"], default="hyperopt")
    p.add_argument("--scheduler", choices=["none", "asha"], default="none",
                   help="asha: stop weak trials early along the stage axis")
    p.add_argument("--objective", choices=OBJECTIVES, default="auc",
                   help="auc: area under accuracy (segmentation: mIoU) vs labels, normalized; final_accuracy: "
                        "last stage")
    p.add_argument("--seed", type=int, default=0, help="seed of the search algorithm")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else %(default)s)")
    p.add_argument("--experiment", default="tavaal-sweep", help="MLflow experiment name (default: %(default)s)")
    p.add_argument("--name", help="sweep name (Tune experiment dir; default: sweep-<time>)")
    p.add_argument("--storage-path", default=os.environ.get("TAVAAL_STORAGE_PATH", str(Path("runs/sweeps").resolve())),
                   help="where Tune keeps trial checkpoints (local dir, s3://, gs://; default: $TAVAAL_STORAGE_PATH, "
                        "else %(default)s)")
    p.add_argument("--resume", metavar="NAME_OR_PATH", help="continue an interrupted sweep")
    p.add_argument("--max-failures", type=int,
                   help="retries of a failed trial from its last stage (default: 1, or the sweep's when resuming)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or a local Ray)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from tavaal.sweep_runner import run_sweep

        return run_sweep(args)
    except TavaalError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
