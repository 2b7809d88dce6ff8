"""python -m tavaal.run — one active-learning experiment (the local backend by default, or --backend ray).

python -m tavaal.run --config configs/fashionmnist_tavaal_cpu.yaml --out runs/fm
python -m tavaal.run --resume runs/fm              # continue after a kill, from the last complete stage
python -m tavaal.run --config configs/smoke.yaml --set al.strategy=random --set train.lr=0.05
python -m tavaal.run --set data.name=parquet --set data.path=pool.parquet --oracle manual --out runs/mine
python -m tavaal.run --resume runs/mine --labels runs/mine/to_label/stage_1.csv   # answers, then continues
python -m tavaal.run ... --oracle labelstudio --labelstudio-url http://127.0.0.1:8080   # people label in Label Studio
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from tavaal.errors import TavaalError


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and exit code 2, as argparse's own)."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m tavaal.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", help="YAML preset (configs/*.yaml); default: the paper's CIFAR-10 protocol")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.lr=0.05 (repeatable)",
    )
    p.add_argument(
        "--out", help="output directory for per-stage checkpoints (default: runs/<strategy>-<data>-seed<N>-<time>)"
    )
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last complete stage")
    p.add_argument(
        "--oracle",
        choices=["auto", "simulated", "manual", "labelstudio"],
        help="where labels come from: simulated (the data's own labels, benchmarks), manual (the run "
        "stops and writes DIR/to_label/stage_K.csv for people to label), labelstudio (the same batch as Label "
        "Studio tasks, DIR/to_label/stage_K.labelstudio.json, or sent to --labelstudio-url); default auto: "
        "simulated when every pool label is known (shortcut for --set al.oracle=...)",
    )
    p.add_argument(
        "--labelstudio-url",
        metavar="URL",
        help="with --oracle labelstudio: the Label Studio server whose API takes the tasks and gives the "
        "annotations back (token from LABEL_STUDIO_API_KEY; shortcut for --set labelstudio.url=...)",
    )
    p.add_argument(
        "--labels",
        metavar="FILE",
        help="with --resume: the labels people gave for the pending batch (columns id, label: the "
        "request CSV with its label column filled in; or Label Studio's JSON export, FILE.json); checked in "
        "full before anything is written",
    )
    p.add_argument("--strategy", help="shortcut for --set al.strategy=...")
    p.add_argument("--seed", type=int, help="shortcut for --set seed=...")
    p.add_argument("--data-dir", help="shortcut for --set data.data_dir=...")
    p.add_argument("--device", help="shortcut for --set device=... (auto, cpu, cuda, cuda:N)")
    p.add_argument("--backend", choices=["local", "ray"], help="shortcut for --set backend.name=...")
    p.add_argument("--address", help="Ray cluster address (shortcut for --set backend.address=...)")
    p.add_argument("--num-workers", type=int, help="Ray Train workers per stage (backend.num_workers)")
    p.add_argument("--cpus-per-worker", type=float, help="CPUs per Ray Train worker (backend.cpus_per_worker)")
    p.add_argument("--gpus-per-worker", type=float, help="GPUs per Ray Train worker (backend.gpus_per_worker)")
    p.add_argument(
        "--keep-workers",
        action="store_const",
        const=True,
        help="one Ray Train worker group for the whole experiment (backend.keep_workers=true)",
    )
    p.add_argument(
        "--tracking-uri",
        help="track the run in MLflow at this URI (e.g. sqlite:///mlflow.db, "
        "http://127.0.0.1:5000); default: no tracking",
    )
    p.add_argument("--experiment", default="tavaal", help="MLflow experiment name (default: %(default)s)")
    p.add_argument(
        "--register-model",
        metavar="NAME",
        help="with --tracking-uri: register the run's final task model (logged as an MLflow model) as a new "
        "version of registered model NAME",
    )
    p.add_argument("--json", metavar="FILE", help="also write the stage records to FILE as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="progress lines for epochs and VAE iterations")
    p.add_argument("--list", action="store_true", help="list datasets, models and strategies, then exit")
    p.add_argument(
        "--check",
        action="store_true",
        help="check the config and the data (pool size, files), print the plan, and exit without "
        "training or writing anything",
    )
    return p


def resolve_config(args: argparse.Namespace):
    from tavaal.config import apply_overrides, from_dict, load_config, parse_override, validate

    overrides = dict(parse_override(o) for o in args.overrides)
    for flag, key in (
        ("strategy", "al.strategy"),
        ("seed", "seed"),
        ("data_dir", "data.data_dir"),
        ("oracle", "al.oracle"),
        ("device", "device"),
        ("backend", "backend.name"),
        ("address", "backend.address"),
        ("num_workers", "backend.num_workers"),
        ("cpus_per_worker", "backend.cpus_per_worker"),
        ("gpus_per_worker", "backend.gpus_per_worker"),
        ("keep_workers", "backend.keep_workers"),
        ("labelstudio_url", "labelstudio.url"),
    ):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    if args.resume and not args.config:
        # the run's own resolved config, with only the overrides given now
        from tavaal.labelfiles import run_config

        cfg = from_dict(apply_overrides(run_config(args.resume), overrides))
        validate(cfg)
        return cfg
    return load_config(args.config, overrides)


def check_paths(args: argparse.Namespace) -> None:
    """The files a run writes, checked before any work: ``--out`` must be a directory (or creatable) and ``--json``
    a file in an existing, writable directory, so that neither fails after the stages have run."""
    from tavaal.errors import ConfigError

    for flag, value in (("--out", args.out), ("--resume", args.resume)):
        if value and Path(value).exists() and not Path(value).is_dir():
            raise ConfigError(f"{flag} '{value}' is an existing file, not a directory; choose a directory path")
    if args.json:
        target = Path(args.json)
        parent = target.parent if str(target.parent) else Path(".")
        if target.is_dir():
            raise ConfigError(f"--json '{target}' is a directory; pass a file path, e.g. {target / 'records.json'}")
        if not parent.is_dir():
            raise ConfigError(
                f"--json '{target}': directory '{parent}' does not exist; create it or choose another path"
            )
        if not os.access(parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
            raise ConfigError(f"--json '{target}' cannot be written (no permission); choose another path")


def check_only(cfg) -> int:
    """``--check``: everything a run checks before its first stage, without training or writing."""
    from tavaal.core.precision import resolve_device
    from tavaal.core.training import ModelSpec
    from tavaal.data import build_dataset
    from tavaal.experiment import check_compatible
    from tavaal.oracle import build_oracle

    device = resolve_device(cfg.device)  # a GPU the machine does not have
    data = build_dataset(cfg.data, cfg.seed)
    build_oracle(cfg, data).start(data)  # the labeling plan against the pool; a Label Studio server answers
    check_compatible(
        cfg, data, ModelSpec(cfg.model.name, data.input_shape, data.num_classes, cfg.model.ranker_hidden), device
    )
    a = cfg.al
    print(
        f"config OK: {a.strategy} on {cfg.data.name} ({len(data.train)} pool, {len(data.test)} test samples), "
        f"{a.initial} initial labels + {a.budget} per stage x {a.stages - 1} queries = "
        f"{a.initial + a.budget * (a.stages - 1)} labels; backend {cfg.backend.name}"
    )
    return 0


def list_registered() -> None:
    from tavaal.registry import DATASETS, MODELS, STRATEGIES

    print("datasets:   " + ", ".join(DATASETS.names()))
    print("models:     " + ", ".join(MODELS.names()))
    print("strategies:")
    for name in STRATEGIES.names():
        print(f"  {name:<11} {STRATEGIES.get(name).direction}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        list_registered()
        return 0
    out = args.resume or args.out
    try:
        from tavaal.experiment import run_experiment

        if args.labels and not args.resume:
            from tavaal.errors import ConfigError

            raise ConfigError("--labels answers a stopped run: pass --resume DIR with it")
        if args.register_model is not None and (not args.tracking_uri or not args.register_model.strip()):
            from tavaal.errors import ConfigError

            raise ConfigError(
                "--register-model NAME registers the model an MLflow run logs: pass --tracking-uri with it, "
                "and a non-empty NAME"
            )
        check_paths(args)
        cfg = resolve_config(args)
        if args.check:
            return check_only(cfg)
        from tavaal.core.precision import resolve_device

        resolve_device(cfg.device)  # a GPU the machine does not have: refused before the run's first line
        out = out or (f"runs/{cfg.al.strategy}-{cfg.data.name}-seed{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}")
        print(
            f"tavaal: {cfg.al.strategy} on {cfg.data.name}, {cfg.al.stages} stages, seed {cfg.seed}; "
            f"checkpoints in {out}",
            flush=True,
        )
        tracker = None
        if args.tracking_uri:
            from tavaal.tracking import MLflowTracker

            name = Path(out).name
            if not name.startswith(f"{cfg.al.strategy}-"):  # a run is named for what it is, then its directory
                name = f"{cfg.al.strategy}-{cfg.data.name}-seed{cfg.seed}-{name}"
            tracker = MLflowTracker(
                args.tracking_uri,
                args.experiment,
                run_name=name,
                checkpoint_dir=out,  # the final model is logged from the last stage's checkpoint
                register_model=args.register_model,
            )
        from tavaal.oracle import LabelsPending

        try:
            records = run_experiment(
                cfg,
                tracker=tracker,
                out_dir=out,
                resume=bool(args.resume),
                log=lambda m: print(m, flush=True),
                verbose=args.verbose,
                labels=args.labels,
            )
        except LabelsPending as stop:  # the planned stop of a manual run: what to label and how to go on
            print(stop, flush=True)
            records = stop.records
    except TavaalError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; resume with --resume " + str(out), file=sys.stderr)
        return 130
    if args.json:
        try:
            Path(args.json).write_text(json.dumps([r.to_dict() for r in records], indent=2))
        except OSError as e:  # checked before the run; this is a disk that filled or a path removed since
            print(f"error: cannot write --json '{args.json}' ({e.strerror}); the stages are in {out}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
