"""The driver side of ``python -m tavaal.sweep``: check everything, then build (or restore) the Tuner."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tavaal.config import load_config, parse_override
from tavaal.errors import ConfigError
from tavaal.redact import redact
from tavaal.search_space import check_space, default_point, read_space, to_tune
from tavaal.sweep.presets import PRESETS, STATE_FILE
from tavaal.sweep.trial import al_trial

if TYPE_CHECKING:
    from ray.tune.search import SearchAlgorithm, Searcher

REPO = Path(__file__).resolve().parents[2]  # the project root: tavaal/sweep/runner.py


def _preset_file(path: str) -> str:
    """Preset files resolve against the working directory, then the project root (any cwd works)."""
    return path if Path(path).exists() or not (REPO / path).exists() else str(REPO / path)


def _base_and_space(args) -> tuple[dict, dict, str]:
    preset = PRESETS[args.preset]
    overrides = dict(preset["overrides"]) if not args.config else {}
    overrides |= dict(parse_override(o) for o in args.overrides)
    base = load_config(args.config or _preset_file(preset["config"]), overrides).to_dict()
    if base["al"]["oracle"] in ("manual", "labelstudio"):
        raise ConfigError(
            f"al.oracle={base['al']['oracle']} stops a run until people label its batch: sweeps need the simulated "
            f"oracle; run single experiments with python -m tavaal.run --oracle {base['al']['oracle']}"
        )
    space_path = args.space or _preset_file(preset["space"])
    space = read_space(space_path)
    check_space(space, base, space_path)
    return base, space, space_path


RESOURCES = {"cpus_per_trial": 1.0, "gpus_per_trial": 0.0, "max_failures": 1}  # defaults, kept in the state file


def join(base: str, name: str) -> str:
    """``base/name`` for a local directory or a URI (``s3://b/sweeps`` stays a URI: pathlib would make it
    ``s3:/b/sweeps``)."""
    return f"{base.rstrip('/')}/{name}" if "://" in base else str(Path(base) / name)


def _fs(path: str):
    """(pyarrow filesystem, path inside it) for a local path or a URI (s3://, gs://, file://)."""
    import pyarrow.fs

    if "://" in path:
        try:
            return pyarrow.fs.FileSystem.from_uri(path)
        except Exception as e:  # an unknown scheme, a bucket without credentials, ...
            raise ConfigError(
                f"storage path {redact(path)} cannot be opened ({type(e).__name__}: "
                f"{redact(' '.join(str(e).split()))[:160]}); check the URI and its credentials"
            ) from None
    return pyarrow.fs.LocalFileSystem(), str(Path(path).resolve())


def is_file(path: str) -> bool:
    import pyarrow.fs

    fs, p = _fs(path)
    return fs.get_file_info(p).type == pyarrow.fs.FileType.File


def read_text(path: str) -> str:
    fs, p = _fs(path)
    with fs.open_input_stream(p) as f:
        return f.read().decode()


def write_text(path: str, text: str) -> None:
    fs, p = _fs(path)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(text.encode())


def _sweep_dir(args) -> tuple[str, str, str]:
    """(name, storage path, sweep directory) of a new sweep, or of the one ``--resume`` names."""
    if args.resume:
        given = args.resume.rstrip("/")
        if "://" not in given and Path(given).is_dir():
            given = str(Path(given).resolve())
        path = given if is_file(join(given, STATE_FILE)) else join(args.storage_path, given)
        if not is_file(join(path, STATE_FILE)):
            raise ConfigError(
                f"no sweep '{args.resume}' to resume (looked for {redact(join(path, STATE_FILE))}); pass the "
                "sweep name (with the --storage-path it was started with) or its directory"
            )
        if "://" not in path:
            path = str(Path(path).resolve())  # Tune restores from an absolute path
        base, _, name = path.rstrip("/").rpartition("/")
        return name, base, path
    name = args.name or time.strftime("sweep-%Y%m%d-%H%M%S")
    storage = args.storage_path if "://" in args.storage_path else str(Path(args.storage_path).resolve())
    path = join(storage, name)
    if is_file(join(path, STATE_FILE)):
        raise ConfigError(f"sweep '{name}' already exists in {redact(storage)}; pass --resume {name} or a new --name")
    return name, storage, path


def _resources(args, saved: dict) -> None:
    """Resource flags: given now > kept with the sweep (a resume) > defaults."""
    for key, default in RESOURCES.items():
        if getattr(args, key) is None:
            setattr(args, key, saved.get(key, default))


def check_fits_this_machine(args) -> None:
    """A sweep that starts its own Ray has this machine's CPUs and GPUs and no more: a trial that asks for more would
    wait for them forever. One-line ConfigError instead (a cluster joined by address may grow: not checked)."""
    import os

    from tavaal.backends.ray.connect import starts_local_ray

    if not starts_local_ray(args.address):
        return
    import torch

    have = {"CPUs": os.cpu_count() or 1, "GPUs": torch.cuda.device_count()}
    for flag, asked, what in (
        ("--cpus-per-trial", args.cpus_per_trial, "CPUs"),
        ("--gpus-per-trial", args.gpus_per_trial, "GPUs"),
    ):
        if asked > have[what]:
            fix = f"ask for at most {have[what]}" if have[what] else f"leave {flag} at 0"
            raise ConfigError(
                f"{flag} {asked:g}: this machine has {have[what]} {what} and the sweep starts its own Ray on it, "
                f"so no trial could ever start; {fix}, or pass --address of a cluster that has them"
            )


# Ray Tune's own reporter (an experiment box, a TensorBoard hint, per-trial tables) and the colour codes of worker
# lines stay out of a sweep's output: it prints the project's lines and table. Set before Ray starts or Tune reads
# them; a user's own setting wins.
QUIET_ENV = {"RAY_AIR_NEW_OUTPUT": "0", "RAY_COLOR_PREFIX": "0"}


def run_sweep(args) -> int:
    import os

    from tavaal.backends.ray.connect import connect_ray
    from tavaal.tracking import MLflowTracker
    from tavaal.tracking.parent import start_parent_run
    from tavaal.tracking.runinfo import run_tags

    if args.register_model is not None and not args.register_model.strip():
        raise ConfigError("--register-model NAME: give the registered model a non-empty name")
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    name, storage, path = _sweep_dir(args)
    if args.resume:
        state = json.loads(read_text(join(path, STATE_FILE)))
        args.tracking_uri, args.experiment, args.objective = (
            state["tracking_uri"],
            state["experiment"],
            state["objective"],
        )
        base, space = state["base"], {k: tuple(v) for k, v in state["space"].items()}
        _resources(args, state.get("resources", {}))
        check_fits_this_machine(args)
        connect_ray(args.address, log_to_driver=True)  # a Ray that refuses us: before the parent run is touched
        start_parent_run(args.tracking_uri, args.experiment, name, run_id=state["parent_run_id"])  # RUNNING again
    else:
        _resources(args, {})
        check_fits_this_machine(args)  # before the MLflow store is touched (a SQLite file would be created)
        base, space, space_path = _base_and_space(args)
        MLflowTracker(args.tracking_uri, args.experiment).check()  # one-line error before any trial
        connect_ray(args.address, log_to_driver=True)  # likewise, before the parent run exists
        parent = start_parent_run(
            args.tracking_uri,
            args.experiment,
            name,
            {
                "sweep.space": space_path,
                "sweep.objective": args.objective,
                "sweep.search": args.search,
                "sweep.scheduler": args.scheduler,
            },
            tags=run_tags(base, sweep=name, source="python -m tavaal.sweep") | {"tavaal.role": "sweep"},
        )
        state = {
            "parent_run_id": parent,
            "tracking_uri": args.tracking_uri,
            "experiment": args.experiment,
            "objective": args.objective,
            "base": base,
            "space": {k: list(v) for k, v in space.items()},
            "num_samples": args.num_samples or PRESETS[args.preset]["num_samples"],
            "resources": {key: getattr(args, key) for key in RESOURCES},
        }
        write_text(join(path, STATE_FILE), json.dumps(state, indent=2))
    tuner = _tuner(args, name, storage, path, state, base, space)
    print(
        f"tavaal.sweep: {name}: {state['num_samples']} trials; checkpoints in {redact(path)}; MLflow "
        f"{redact(state['tracking_uri'])} experiment '{state['experiment']}'",
        flush=True,
    )
    results = tuner.fit()
    return _summarize(results, state, args.register_model)


def _tuner(args, name: str, storage: str, path: str, state: dict, base: dict, space: dict):
    import ray
    from ray import tune

    from tavaal.sweep.callback import MLflowSweepCallback

    cpus = max(1, int(args.cpus_per_trial))
    trainable = tune.with_resources(
        tune.with_parameters(al_trial, base=base, threads=cpus),
        {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial},
    )
    if args.resume:
        # the tuner.pkl of a sweep started when the callback was tavaal/sweep_tracking.py names it by that module
        sys.modules.setdefault("tavaal.sweep_tracking", sys.modules[MLflowSweepCallback.__module__])
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    total_cpus = int(ray.cluster_resources().get("CPU", 1))
    total_gpus = int(ray.cluster_resources().get("GPU", 0))
    fits = int(total_cpus // args.cpus_per_trial)
    if args.gpus_per_trial > 0:
        fits = min(fits, int(total_gpus // args.gpus_per_trial))
    # nothing fits yet (an autoscaling cluster whose head runs no trials): let the autoscaler see them all
    limit = args.max_concurrent or (fits if fits >= 1 else state["num_samples"])
    point = default_point(space, base)
    search: Searcher | SearchAlgorithm
    if args.search == "hyperopt":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.hyperopt import HyperOptSearch

        search = ConcurrencyLimiter(
            HyperOptSearch(points_to_evaluate=[point], random_state_seed=args.seed), max_concurrent=limit
        )
    else:
        from ray.tune.search.basic_variant import BasicVariantGenerator

        search = BasicVariantGenerator(points_to_evaluate=[point], max_concurrent=limit, random_state=args.seed)
    scheduler = None
    if args.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=base["al"]["stages"],
            grace_period=min(2, base["al"]["stages"]),
            reduction_factor=2,
        )
    callback = MLflowSweepCallback(state["tracking_uri"], state["experiment"], state["parent_run_id"], base, name)
    return tune.Tuner(
        trainable,
        param_space=to_tune(space),
        tune_config=tune.TuneConfig(
            metric=state["objective"],
            mode="max",
            search_alg=search,
            scheduler=scheduler,
            num_samples=state["num_samples"],
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            callbacks=[callback],
            failure_config=tune.FailureConfig(max_failures=args.max_failures),
            verbose=0,
        ),
    )


def _summarize(results, state: dict, register: str | None = None) -> int:
    from tavaal.tracking.parent import log_parent_summary

    objective = state["objective"]
    rows: list[dict[str, Any]] = []
    for r in results:
        m = r.metrics or {}
        rows.append(
            {
                "trial_id": m.get("trial_id", ""),
                "status": "ERROR" if r.error else "OK",
                "stages": m.get("training_iteration", 0),
                "auc": m.get("auc"),
                "final_accuracy": m.get("final_accuracy"),
                **{f"param.{k}": v for k, v in (r.config or {}).items()},
            }
        )
    rows.sort(key=lambda row: -(row[objective] if row[objective] is not None else -1))
    best = log_parent_summary(state["tracking_uri"], state["parent_run_id"], rows, objective)
    print(f"\ntrials, best {objective} first:")
    keys = ["trial_id", "status", "stages", "auc", "final_accuracy"] + sorted(
        {k for row in rows for k in row if k.startswith("param.")}
    )
    print("  ".join(k.replace("param.", "") for k in keys))
    for row in rows:
        print("  ".join(_fmt(row.get(k)) for k in keys))
    if register and best.get("model_uri"):
        from tavaal.tracking.runinfo import register_model

        version = register_model(state["tracking_uri"], best["model_uri"], register)
        print(f"\nregistered the best trial's model ({best['trial_id']}) as '{register}' version {version}")
    elif register:
        print(f"\nwarning: no finished trial logged a model: nothing registered as '{register}'", file=sys.stderr)
    uri = redact(state["tracking_uri"])  # a password in it stays off the screen and out of logs
    # the runs table (not MLflow 3's GenAI view), best trials first
    page = (
        f"#/experiments/{experiment_id(state)}/runs?workflowType=machine_learning"
        f"&orderByKey=metrics.%60{objective}%60&orderByAsc=false"
    )
    if uri.startswith("http"):
        ui = f"open {uri}/{page}"
    else:
        ui = f"mlflow ui --backend-store-uri {uri}   then open http://127.0.0.1:5000/{page}"
    print(f"\nbrowse the runs: {ui}   (experiment '{state['experiment']}')")
    errors = sum(1 for row in rows if row["status"] != "OK")
    return 1 if errors == len(rows) else 0


def experiment_id(state: dict) -> str:
    """The experiment's id, for the link to its runs table (MLflow 3 opens an experiment on its GenAI view unless
    the link asks for the machine-learning one)."""
    from tavaal.tracking.store import connect

    exp = connect(state["tracking_uri"]).get_experiment_by_name(state["experiment"])
    return exp.experiment_id if exp is not None else "0"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
