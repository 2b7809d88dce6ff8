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
import math
import os
import sys
from pathlib import Path

from tavaal.errors import ConfigError, TavaalError
from tavaal.sweep.presets import OBJECTIVES, PRESETS


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and exit code 2, as argparse's own)."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; see {self.prog} --help\n")


def _number(text: str) -> int | float:
    """A numeric flag as given: an int when it is written as one, else a float (nan and inf included: the
    bounds below name them)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


# numeric flags: (whole number?, lowest allowed, highest allowed, what the flag is). Each is checked before any Ray
# starts or anything is written: a zero or negative request, nan, or inf would otherwise fail deep inside Tune
# (a traceback), or leave trials waiting for resources no machine has (a sweep that never ends)
BOUNDS: dict[str, tuple[bool, float, float, str]] = {
    "num_samples": (True, 1, math.inf, "the number of trials"),
    "max_concurrent": (True, 1, math.inf, "trials at once"),
    "cpus_per_trial": (False, math.ulp(0.0), math.inf, "CPUs each trial reserves, e.g. 1 or 0.5"),
    "gpus_per_trial": (False, 0, math.inf, "GPUs each trial reserves: 0, a fraction such as 0.5, or whole GPUs"),
    "max_failures": (True, 0, math.inf, "retries of a failed trial, 0 for none"),
    "seed": (True, 0, 2**32 - 1, "the search algorithm's seed"),
}


def check_flags(args: argparse.Namespace) -> None:
    """One-line ConfigError for a numeric flag out of its ``BOUNDS``; whole-number flags become ints."""
    for key, (whole, low, high, what) in BOUNDS.items():
        value = getattr(args, key)
        if value is None:
            continue
        flag = "--" + key.replace("_", "-")
        ok = isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high
        if whole:
            ok = ok and float(value).is_integer()
            expected = f"a whole number >= {low:g}" + (f" and <= {high:.0f}" if high < math.inf else "")
        else:
            expected = "a finite number " + ("> 0" if low > 0 else f">= {low:g}")
        if not ok:
            raise ConfigError(f"{flag} {value}: expected {expected} ({what})")
        setattr(args, key, int(value) if whole else float(value))


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m tavaal.sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="default",
        help="config + space + size used for whatever is not given (default: %(default)s)",
    )
    p.add_argument("--config", help="base YAML config (default: the preset's)")
    p.add_argument("--space", help="search space YAML, dotted config keys (default: the preset's)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a base config field (repeatable)",
    )
    p.add_argument("--num-samples", type=_number, help="trials (default: the preset's)")
    p.add_argument(
        "--max-concurrent",
        type=_number,
        help="trials at once (default: the trials that fit in the cluster's CPUs and GPUs now; all of "
        "them when none fits yet, as on an autoscaling cluster whose head runs no trials)",
    )
    p.add_argument(
        "--cpus-per-trial",
        type=_number,
        help="CPUs per trial (default: 1, or what the sweep was started with when resuming)",
    )
    p.add_argument(
        "--gpus-per-trial",
        type=_number,
        help="GPUs per trial (default: 0, or what the sweep was started with when resuming)",
    )
    p.add_argument("--search", choices=["hyperopt", "random"], default="hyperopt")
    p.add_argument(
        "--scheduler",
        choices=["none", "asha"],
        default="none",
        help="asha: stop weak trials early along the stage axis",
    )
    p.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="auc",
        help="auc: area under accuracy (segmentation: mIoU) vs labels, normalized; final_accuracy: last stage",
    )
    p.add_argument("--seed", type=_number, default=0, help="seed of the search algorithm")
    p.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else %(default)s)",
    )
    p.add_argument("--experiment", default="tavaal-sweep", help="MLflow experiment name (default: %(default)s)")
    p.add_argument("--name", help="sweep name (Tune experiment dir; default: sweep-<time>)")
    p.add_argument(
        "--storage-path",
        default=os.environ.get("TAVAAL_STORAGE_PATH", str(Path("runs/sweeps").resolve())),
        help="where Tune keeps trial checkpoints (local dir, s3://, gs://; default: $TAVAAL_STORAGE_PATH, "
        "else %(default)s)",
    )
    p.add_argument("--resume", metavar="NAME_OR_PATH", help="continue an interrupted sweep")
    p.add_argument(
        "--max-failures",
        type=_number,
        help="retries of a failed trial from its last stage (default: 1, or the sweep's when resuming)",
    )
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or a local Ray)")
    p.add_argument(
        "--register-model",
        metavar="NAME",
        help="register the best trial's final task model (each trial logs its own as an MLflow model) as a new "
        "version of registered model NAME",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_flags(args)  # before the runner (and Ray) is imported
        from tavaal.sweep.runner import run_sweep

        return run_sweep(args)
    except TavaalError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
