"""The active-learning loop: per stage, train -> evaluate -> (query -> label) -> checkpoint -> track.

Stage ``s`` trains on the labeled set, evaluates on the test split and, unless it is the last stage,
scores a fresh random candidate subset and labels the top-K (``labeled_at = s + 1``). Every source of
randomness in a stage derives from (seed, stage), so a resumed run makes exactly the same picks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from tavaal import checkpoint
from tavaal.backends import Backend, build_backend
from tavaal.config import Config, from_dict
from tavaal.core.memory import batch_bytes, check_fits
from tavaal.core.metrics import label_counts, label_entropy
from tavaal.core.pool import PoolState, draw_candidates
from tavaal.core.precision import for_device, resolve_device, score_batch_size
from tavaal.core.seeding import derive_seed, numpy_rng
from tavaal.core.training import ModelSpec, TaskJob, TaskResult, evaluate
from tavaal.data import build_dataset
from tavaal.data.base import ALData
from tavaal.errors import CheckpointError, ConfigError
from tavaal.labelfiles import has_initial_request, run_config
from tavaal.oracle import LabelsPending, Oracle, build_oracle
from tavaal.strategies import QueryContext, Strategy, build_strategy
from tavaal.tracking import NullTracker, Tracker


@dataclass
class StageRecord:
    """What one stage produced: the metrics computed in the core, returned and checkpointed."""

    stage: int
    num_labeled: int  # labeled samples the stage trained on
    accuracy: float  # test split, final-epoch model (segmentation: pixel accuracy)
    balanced_accuracy: float  # segmentation: mean class (pixel) accuracy
    per_class_accuracy: list[float]
    label_counts: list[int]  # per class, of the labeled set trained on (segmentation: its pixels)
    label_entropy: float  # nats (paper Fig. 7a)
    label_entropy_norm: float  # divided by log C
    selected: list[int] = field(default_factory=list)  # indices labeled by this stage's query
    time_train: float = 0.0
    time_query: float = 0.0
    time_stage: float = 0.0
    info: dict = field(default_factory=dict)
    miou: float | None = None  # segmentation: mean IoU over the classes present in prediction or target
    per_class_iou: list[float] = field(default_factory=list)  # segmentation (nan: class absent from both)
    health: dict = field(default_factory=dict)  # vaal/tavaal: the adversarial game's health (core/health.py)
    train_accuracy: float | None = None  # the final model on its own labeled set, unaugmented (segmentation: pixel
    # accuracy): how well the task model fits what it was trained on

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Run:
    """What every stage of one run shares, settled before its first stage."""

    cfg: Config
    data: ALData  # the pool's labels grow as the oracle answers
    spec: ModelSpec
    strategy: Strategy
    oracle: Oracle
    backend: Backend
    tracker: Tracker
    device: torch.device
    out_dir: str | Path | None
    meta: dict  # the run's identity (and tracking run id), saved with every checkpoint
    log: Callable[[str], None]  # one line per stage
    detail: Callable[[str], None]  # epochs and the strategy's progress (verbose)


def run_experiment(
    cfg: Config,
    *,
    out_dir: str | Path | None = None,
    resume: bool = False,
    labels: str | Path | None = None,
    oracle: Oracle | None = None,
    backend: Backend | None = None,
    tracker: Tracker | None = None,
    log: Callable[[str], None] = print,
    verbose: bool = False,
    on_stage: Callable[[StageRecord, Path | None], None] | None = None,
) -> list[StageRecord]:
    """Run (or resume from ``out_dir``) the whole experiment; returns one record per stage.

    The run's labels come from ``oracle`` (default: ``build_oracle``: simulated when the data knows every pool
    label, else manual). A manual run stops where labels are missing by raising ``LabelsPending`` after writing
    the batch to annotate; ``labels`` (the filled-in CSV) answers it on resume. ``on_stage(record, stage_dir)``
    is called after each stage's checkpoint is written (a Tune trial reports it from there).
    """
    with checkpoint.run_dir_lock(out_dir):  # one process at a time per run directory
        run, pool, records, unqueried = _open(cfg, out_dir, resume, labels, oracle, backend, tracker, log, verbose)
        return _loop(run, pool, records, unqueried, on_stage)


def _loop(
    run: _Run,
    pool: PoolState,
    records: list[StageRecord],
    unqueried: TaskResult | None,
    on_stage: Callable[[StageRecord, Path | None], None] | None,
) -> list[StageRecord]:
    """Per stage: train, evaluate, query, checkpoint, track, label the next; the backend and tracker run around it."""
    stages = run.cfg.al.stages
    first = len(records) - (unqueried is not None)  # a stage that was the last of a shorter plan gets its query
    with _started(run, records):
        for stage in range(first, stages):
            if unqueried is None:
                record, task = train_stage(
                    run.cfg, stage, pool, run.data, run.spec, run.strategy, run.backend, run.device, run.detail
                )
            else:  # trained and evaluated before, as the last stage of a shorter plan: it queries now
                record, task = records.pop(), unqueried
            states = task.states()
            if stage + 1 < stages:
                record, pool, picked = query_stage(
                    run.cfg, record, pool, run.data, run.spec, run.strategy, run.backend, task, run.detail
                )
                states |= picked
            records.append(record)
            stage_dir = _save(run, stage, pool, records, states, replace=unqueried is not None)
            unqueried = None
            run.tracker.log_stage(record.to_dict())
            run.log(format_record(record, stages))
            if on_stage is not None:
                on_stage(record, stage_dir)
            if stage + 1 < stages:  # the next stage's labels (the first stage's came before the start)
                answered = run.oracle.label(stage + 1, run.data, pool)  # LabelsPending: people answer first
                if answered is not run.data:  # an oracle that answered at once: later jobs read its labels
                    run.data = answered
                    run.backend.relabel(answered)
    return records


@contextmanager
def _started(run: _Run, records: list[StageRecord]) -> Iterator[None]:
    """The backend prepared and the tracking run started around the stages; the run's end status recorded and a
    Ray this run started stopped on every path. A stop for labels ends the tracking run as finished."""
    status = "FAILED"
    try:
        run.backend.prepare(run.data, run.device)  # may start a Ray; first, so a Ray that refuses leaves no run
        run_id = run.tracker.start(run.cfg.to_dict(), run_id=run.meta.get("tracking_run_id"))  # fails fast
        if run_id is not None:
            run.meta["tracking_run_id"] = run_id
        log_inputs = getattr(run.tracker, "log_inputs", None)  # optional: a tracker that records data and model
        if log_inputs is not None:
            log_inputs(run.data, run.spec)
        for record in records:  # idempotent: stages checkpointed but not yet tracked (killed in between) get sent
            run.tracker.log_stage(record.to_dict())
        yield
        status = "FINISHED"
    except LabelsPending as stop:
        status, stop.records = "FINISHED", list(records)
        raise
    except BaseException as e:
        status = "FAILED" if isinstance(e, Exception) else "KILLED"  # KeyboardInterrupt, SystemExit
        raise
    finally:
        try:
            run.backend.close()
        finally:
            run.tracker.end(status)  # a no-op for a run that never started


def _save(
    run: _Run, stage: int, pool: PoolState, records: list[StageRecord], states: dict, replace: bool
) -> Path | None:
    """The stage's checkpoint (``replace``: it supersedes the same stage saved unqueried), old ones pruned."""
    if run.out_dir is None:
        return None
    path = checkpoint.save_stage(
        run.out_dir, stage, pool, [r.to_dict() for r in records], states, run.cfg.to_dict(), run.meta, replace
    )
    checkpoint.prune(run.out_dir, run.cfg.al.keep_checkpoints)
    return path


def _open(
    cfg: Config,
    out_dir: str | Path | None,
    resume: bool,
    labels: str | Path | None,
    oracle: Oracle | None,
    backend: Backend | None,
    tracker: Tracker | None,
    log: Callable[[str], None],
    verbose: bool,
) -> tuple[_Run, PoolState, list[StageRecord], TaskResult | None]:
    """Everything before the first stage, in the order that leaves nothing behind when a check fails: the data
    and the oracle's labels, every config check, the checkpoint to resume from, the labels of the first stage
    to run (a labels file is validated in full before it is stored); nothing is started yet."""
    device = resolve_device(cfg.device)
    cfg = for_device(cfg, device)  # precision auto, score batch per device: resolved once, recorded as run
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    data = build_dataset(cfg.data, cfg.seed)
    oracle = oracle or build_oracle(cfg, data, out_dir)
    data, initial = oracle.start(data)  # checks the labeling plan against the pool
    if len(data.test) == 0:
        log(
            "note: the test split is empty (no labeled rows to hold out): accuracy is not measured (nan); "
            "set data.test_path to a labeled test set"
        )
    strategy = build_strategy(cfg.al.strategy)
    check_compatible(
        cfg, data, ModelSpec(cfg.model.name, data.input_shape, data.num_classes, cfg.model.ranker_hidden), device
    )
    pool, records, meta, unqueried = _start(cfg, data, out_dir, resume, log, initial)
    first = len(records) - (unqueried is not None)
    if labels is not None:
        data = oracle.answer(first, data, pool, labels)
    try:  # the first stage's labels now, so that a stop for them starts nothing
        data = oracle.label(first, data, pool)
    except LabelsPending as stop:
        stop.records = list(records)
        raise
    # built after the answers: their labels may bring new classes (data.new_classes)
    spec = ModelSpec(cfg.model.name, data.input_shape, data.num_classes, cfg.model.ranker_hidden)
    run = _Run(
        cfg,
        data,
        spec,
        strategy,
        oracle,
        backend or build_backend(cfg.backend, cfg.data),  # builds only: nothing is started yet
        tracker or NullTracker(),
        device,
        out_dir,
        meta,
        log,
        log if verbose else _quiet,
    )
    return run, pool, records, unqueried


def check_compatible(cfg: Config, data: ALData, spec: ModelSpec, device: torch.device | None = None) -> None:
    """Build the stage's models once on the data's input shape: a model that cannot take the data is a
    ConfigError now, not a traceback after the first stage's training. Also that one batch of inputs fits in the
    device's memory (a lower bound: a data.image_size far too large is refused before any work)."""
    device = device or resolve_device(cfg.device)
    batch = max(cfg.train.batch_size, score_batch_size(cfg.al.score_batch_size, device), 2 * cfg.vae.batch_size)
    check_fits(
        batch_bytes(batch, data.input_shape),
        device,
        f"one batch of {batch} inputs of shape {list(data.input_shape)} (float32)",
        "lower data.image_size (or the batch sizes: train.batch_size, al.score_batch_size, vae.batch_size)",
    )
    if cfg.task != data.task:
        raise ConfigError(
            f"config field 'task' is '{cfg.task}' but data '{cfg.data.name}' is a {data.task} data set; "
            f"set task: {data.task} (--set task={data.task})"
        )
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated or initialized
            _build_stage_models(cfg, data, spec)
    except ValueError as e:
        raise ConfigError(
            f"{e}; choose model.name for data '{cfg.data.name}' (small_cnn or resnet18 for images, mlp "
            "for vectors, seg_small or deeplabv3_resnet50 for segmentation; see python -m tavaal.run "
            "--list)"
        ) from None


def _build_stage_models(cfg: Config, data: ALData, spec: ModelSpec) -> None:
    from tavaal.models.base import model_task

    strategy = build_strategy(cfg.al.strategy)
    model, _ = spec.build(with_ranker=strategy.ranker_loss is not None)
    if model_task(model) != data.task:
        raise ValueError(
            f"model '{cfg.model.name}' solves {model_task(model)} but data '{cfg.data.name}' is a {data.task} data set"
        )
    strategy.build_models(cfg, data)


def _quiet(msg: str) -> None:
    pass


def _start(
    cfg: Config, data: ALData, out_dir, resume: bool, log, initial: PoolState
) -> tuple[PoolState, list[StageRecord], dict, TaskResult | None]:
    """Fresh: the initial labels, and the run's identity written. Resume: the pool and records of the newest
    complete stage, and (when that stage was the last of a shorter plan and ``al.stages`` now goes further) its
    models' states, from which it queries without training again: an extended run picks what a run planned this
    long from the start would pick."""
    if resume:
        if out_dir is None:
            raise ConfigError("--resume needs the run's output directory")
        if not checkpoint.list_stages(out_dir) and has_initial_request(out_dir):
            check_resumable(run_config(out_dir), cfg)  # stopped before stage 0, for its labels
            ident = checkpoint.read_identity(out_dir)
            log(f"resuming {out_dir} before stage 0 (its labels were requested)")
            return initial, [], {"run_id": ident["run_id"]} if ident else {}, None
        ck = checkpoint.load_latest(out_dir, log=log)
        check_resumable(ck.config, cfg)
        if len(ck.pool) != len(data.train):
            raise CheckpointError(
                f"checkpoint {ck.path} has a pool of {len(ck.pool)} samples but the data set has "
                f"{len(data.train)}; resume with the data the run started with"
            )
        if ck.stage + 1 > cfg.al.stages:
            raise ConfigError(
                f"config field 'al.stages' is {cfg.al.stages} but {out_dir} has stages 0..{ck.stage} complete; "
                f"set al.stages >= {ck.stage + 1} (or leave it as the run had it)"
            )
        records = [StageRecord(**r) for r in ck.records]
        meta = dict(ck.meta)
        ident = checkpoint.run_identity(out_dir)
        meta["run_id"] = ident["run_id"] if ident and ident.get("run_id") else meta.get("run_id")
        last = records[-1]
        unqueried = None
        if not last.selected and last.stage + 1 < cfg.al.stages:
            unqueried = TaskResult(ck.states["model"], ck.states.get("ranker"))
        nxt = f"stage {last.stage} queries next" if unqueried else f"stage {last.stage + 1} next"
        log(
            f"resuming from {ck.path}: stages 0..{ck.stage} complete, {nxt}, "
            f"{ck.pool.num_labeled} labeled ({last.num_labeled} trained on by stage {last.stage})"
        )
        return ck.pool, records, meta, unqueried
    if out_dir is not None and (checkpoint.list_stages(out_dir) or has_initial_request(out_dir)):
        raise CheckpointError(
            f"'{out_dir}' already holds stage checkpoints; pass --resume {out_dir} to continue "
            "that run, or choose a new --out"
        )
    meta = {}
    if out_dir is not None:
        meta["run_id"] = checkpoint.write_identity(out_dir, cfg.to_dict())["run_id"]
    return initial, [], meta, None


def check_resumable(saved: dict, cfg: Config) -> None:
    """The config of a resume must match the checkpoint's except in fields that do not change picks."""
    old, new = from_dict(saved).flat(), cfg.flat()
    for key in sorted(set(old) | set(new)):
        if checkpoint.resumable(key):
            continue
        if old.get(key) != new.get(key):
            raise ConfigError(
                f"config field '{key}' is {new.get(key)!r} but the checkpoint was made with "
                f"{old.get(key)!r}; resume with the same config (or start a new --out)"
            )


def run_stage(
    cfg: Config,
    stage: int,
    pool: PoolState,
    data: ALData,
    spec: ModelSpec,
    strategy: Strategy,
    backend: Backend,
    device: torch.device,
    log: Callable[[str], None],
) -> tuple[StageRecord, PoolState, dict]:
    """One whole stage outside the loop (the benchmarks' entry): train, evaluate, and query unless it is the last
    stage; returns the record, the pool after the query and every model's state."""
    record, task = train_stage(cfg, stage, pool, data, spec, strategy, backend, device, log)
    if stage + 1 == cfg.al.stages:
        return record, pool, task.states()
    record, pool, picked = query_stage(cfg, record, pool, data, spec, strategy, backend, task, log)
    return record, pool, task.states() | picked


def train_stage(
    cfg: Config,
    stage: int,
    pool: PoolState,
    data: ALData,
    spec: ModelSpec,
    strategy: Strategy,
    backend: Backend,
    device: torch.device,
    log: Callable[[str], None],
) -> tuple[StageRecord, TaskResult]:
    """Train the task model (and the strategy's ranker) on the labeled set and evaluate it on the test split and
    on its own labeled set; returns the stage's record (no picks yet) and the trained weights."""
    t0 = time.perf_counter()
    labeled = pool.labeled_indices()
    every = max(1, cfg.train.epochs // 5)
    task = backend.train_task(
        TaskJob(spec, cfg.train, labeled, strategy.ranker_loss, derive_seed(cfg.seed, "stage", stage)),
        on_epoch_end=lambda s: (
            log(f"  epoch {s['epoch'] + 1}/{cfg.train.epochs} ce {s.get('ce', 0):.4f}")
            if (s["epoch"] + 1) % every == 0
            else None
        ),
    )
    t_train = time.perf_counter() - t0
    model, _ = spec.build(with_ranker=False)
    model.load_state_dict(task.model_state)
    t, batch = cfg.train, score_batch_size(cfg.al.score_batch_size, device)  # null: per device
    metrics = evaluate(model.to(device), data, device, batch, t.precision, channels_last=t.channels_last)
    fit = evaluate(model, data, device, batch, t.precision, "train", labeled, t.channels_last)
    counts = label_counts(data.train_targets, labeled, data.num_classes)
    h, h_norm = label_entropy(counts)
    record = StageRecord(
        stage=stage,
        num_labeled=int(labeled.size),
        accuracy=metrics["accuracy"],
        balanced_accuracy=metrics["balanced_accuracy"],
        per_class_accuracy=metrics["per_class_accuracy"],
        label_counts=[int(c) for c in counts],
        label_entropy=h,
        label_entropy_norm=h_norm,
        time_train=t_train,
        time_stage=time.perf_counter() - t0,
        miou=metrics.get("miou"),
        per_class_iou=metrics.get("per_class_iou", []),
        train_accuracy=fit["accuracy"],
    )
    return record, task


def query_stage(
    cfg: Config,
    record: StageRecord,
    pool: PoolState,
    data: ALData,
    spec: ModelSpec,
    strategy: Strategy,
    backend: Backend,
    task: TaskResult,
    log: Callable[[str], None],
) -> tuple[StageRecord, PoolState, dict]:
    """Score a fresh random candidate subset with the stage's trained models (``task``) and label the top-K
    (``labeled_at = stage + 1``); returns the record with the picks, the new pool and the states of the models
    the strategy trained (VAE, discriminator)."""
    t1 = time.perf_counter()
    stage, labeled = record.stage, pool.labeled_indices()
    candidates = draw_candidates(pool, cfg.al.subset_size, numpy_rng(cfg.seed, "candidates", stage))
    budget = min(cfg.al.budget, candidates.size)
    seed = derive_seed(cfg.seed, "stage", stage)
    result = strategy.query(QueryContext(cfg, data, backend, spec, task, labeled, candidates, budget, stage, seed, log))
    selected = np.asarray(result.selected, dtype=np.int64)
    check_selection(selected, candidates, budget, strategy.name)
    t_query = time.perf_counter() - t1
    record = replace(
        record,
        selected=[int(i) for i in selected],
        info=result.info,
        health=result.health,
        time_query=t_query,
        time_stage=record.time_stage + t_query,
    )
    return record, pool.label(selected, stage + 1), result.states


def check_selection(selected: np.ndarray, candidates: np.ndarray, budget: int, name: str) -> None:
    """A strategy must return ``budget`` distinct candidates: anything else is a bug, not user error."""
    if selected.size != budget or np.unique(selected).size != selected.size or not np.isin(selected, candidates).all():
        raise RuntimeError(
            f"strategy '{name}' returned an invalid selection of {selected.size} indices "
            f"(expected {budget} distinct candidates)"
        )


def format_record(r: StageRecord, stages: int) -> str:
    quality = f"acc {r.accuracy:.4f}" if r.miou is None else f"miou {r.miou:.4f}  pixel_acc {r.accuracy:.4f}"
    return (
        f"stage {r.stage} of 0..{stages - 1}  labeled {r.num_labeled}  {quality}  "
        f"bal_acc {r.balanced_accuracy:.4f}  label_entropy {r.label_entropy:.3f} "
        f"({r.label_entropy_norm:.3f})  time {r.time_stage:.1f}s (train {r.time_train:.1f}s, "
        f"query {r.time_query:.1f}s)"
    )
