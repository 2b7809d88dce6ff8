"""Experiment config: frozen dataclasses, YAML presets, dotted ``--set`` overrides, validation.

Every field says which paper symbol or which piece of the official code its default comes from.
Defaults are the paper's CIFAR-10 protocol (TA-VAAL, Kim et al. 2021; official code cubeyoung/TA-VAAL).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import types
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from tavaal.errors import ConfigError
from tavaal.registry import DATASETS, MODELS, STRATEGIES


@dataclass(frozen=True)
class DataConfig:
    name: str = "cifar10"  # registered dataset (see `python -m tavaal.run --list`)
    data_dir: str | None = None  # where the files are; None: the dataset's default places
    num_train: int | None = None  # use a seeded random subset of the training split as the pool (None: all)
    num_test: int | None = None  # evaluate on a seeded random subset of the test split (None: all)
    imbalance_ratio: float = 1.0  # largest/smallest class count in the pool: 10 or 100 in the paper; 1: as is
    minority_classes: str = "even"  # classes cut by the ratio: "even" (paper: 0,2,4,6,8), "odd", or "0,3,5"
    download: bool = True  # let torchvision download missing files (needs internet)
    # your own images (data.name parquet or imagefolder; docs/own-data.md)
    path: str | None = None  # parquet: a .parquet file, a directory of them or s3://...; imagefolder: the root
    test_path: str | None = None  # a labeled test set in the same format; None: hold out test_fraction of labeled rows
    test_fraction: float = 0.2  # without test_path: share of the labeled rows held out (by a hash of the id)
    image_size: int = 32  # images are resized to image_size x image_size when decoded
    channels: int = 3  # 1 (grayscale) or 3 (RGB) after decoding
    classes: tuple[str, ...] = ()  # class names in model order; (): the labels found in the data, sorted
    new_classes: bool = False  # manual oracle: accept labels outside the known classes (appended to the list)
    id_column: str = "id"  # parquet: a stable, unique id per row
    image_column: str = "image"  # parquet: encoded PNG/JPEG bytes, or a path (relative: to the Parquet's folder)
    label_column: str = "label"  # parquet: class name or integer; null = unlabeled (the column may be absent)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "resnet18"  # task model: resnet18 (paper), small_cnn (CPU scale), mlp (vectors), seg_small or
    # deeplabv3_resnet50 (segmentation)
    ranker_hidden: int = 128  # loss-prediction module: width of each per-block FC layer (LL4AL)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 200  # paper / official code: 200 epochs per stage
    batch_size: int = 128  # paper: 128
    lr: float = 0.1  # SGD lr, task model and ranker (official code LR = 0.1)
    momentum: float = 0.9  # official code MOMENTUM
    weight_decay: float = 5e-4  # official code WDECAY
    milestones: tuple[int, ...] = (160,)  # lr x gamma here; the code's second milestone (240) never fires
    gamma: float = 0.1  # lr factor at each milestone (paper: x 0.1 at epoch 160)
    eta: float = 1.0  # η: weight of the ranking loss in L_task + η·L_rank (eq. 2; official WEIGHT = 1)
    margin: float = 1.0  # ξ: margin of LL4AL's loss (baseline lloss only)
    ranker_stop_grad_epoch: int = 120  # after this epoch the ranker's input features are detached (official EPOCHL)
    precision: str = "fp32"  # fp32, bf16 (autocast: task model, VAE, evaluation, scoring; halves conv cost on CPUs
    # with avx512_bf16) or auto (bf16 where the device supports it, else fp32: tavaal/core/precision.py)
    channels_last: bool = False  # NHWC memory format for the image models and their batches (same maths)


@dataclass(frozen=True)
class VAEConfig:
    latent_dim: int = 32  # VAE latent size (official: 32; 28 for Fashion-MNIST)
    base_channels: int = 128  # encoder widths base·(1,2,4,8): 128..1024 as published; smaller for CPU
    iterations: int | None = None  # None: int((|L| + M) · iteration_epochs / batch_size), the official formula
    iteration_epochs: int = 100  # the "100" of the official iteration formula
    batch_size: int = 128  # labeled and unlabeled batch size of the VAE/discriminator (official: 128)
    vae_steps: int | None = None  # VAE steps per iteration; None: 1 (tavaal, official) or 2 (vaal, VAAL's code)
    lr: float = 5e-4  # Adam lr of the VAE (official: 5e-4)
    disc_lr: float = 5e-4  # Adam lr of the discriminator (official: 5e-4)
    beta: float = 1.0  # β: KL weight
    adv_weight: float = 1.0  # λ_adv: weight of the adversarial term in the VAE loss
    kl_reduction: str | None = None  # None: "mean" (tavaal, official TA-VAAL) or "sum" (vaal, official VAAL)
    first_iter_noise: bool = False  # official TA-VAAL quirk: U(0,1) instead of r at the very first iteration
    disc_hidden: int = 512  # discriminator MLP width (official: 512)
    input_size: int | None = None  # images resized to input_size x input_size for the VAE (None: the data's size)
    normalize: bool = True  # the VAE's images: normalized by the data's mean/std as the task model sees them (true),
    # or raw [0, 1] pixels (false), as the official TA-VAAL code feeds its VAE on Fashion-MNIST (transforms.ToTensor
    # only); only the VAE's input and reconstruction target change, never the task model's
    score_bn: str = "batch"  # VAE BatchNorm when scoring: "batch" (each batch of vae.batch_size normalized by its
    # own statistics, as every training batch was: the official TA-VAAL and VAAL code, whose VAE stays in train mode)
    # or "running" (eval mode: running statistics that mix labeled and unlabeled batches)


@dataclass(frozen=True)
class ALConfig:
    strategy: str = "tavaal"  # random, entropy, coreset, lloss, lloss_rank, vaal, tavaal
    initial: int = 1000  # labels drawn uniformly at random before stage 0 (paper: 1,000)
    budget: int = 1000  # K: labels added per stage (paper: 1,000)
    stages: int = 10  # stages trained and evaluated (paper: 10, i.e. 1k..10k labels)
    subset_size: int = 10_000  # M: random unlabeled candidates scored per stage (paper: 10,000)
    score_batch_size: int | None = None  # batch size for scoring and evaluation (no effect on results); null: per
    # device, 128 on CPUs (smaller batches stay in the CPU's caches: benchmarks/README.md has the timing) and 512 on
    # GPUs
    keep_checkpoints: int = 0  # newest stage checkpoints kept on disk (0: all); resume falls back among them
    oracle: str = "auto"  # simulated (labels from the data), manual (people label to_label/ files); auto: simulated
    # when every pool label is known, else manual


@dataclass(frozen=True)
class BackendConfig:
    name: str = "local"  # local (in-process) or ray (Ray Train for training, Ray Data for scoring)
    address: str | None = None  # Ray cluster to join ("auto", "ray://host:10001"); None: a local Ray
    num_workers: int = 1  # Ray Train workers per training job (DDP; gloo on CPU, nccl on GPU)
    cpus_per_worker: float = 1.0  # CPUs reserved by each training worker
    gpus_per_worker: float = 0.0  # GPUs per training worker (> 0 trains on GPU with nccl)
    threads_per_worker: int | None = None  # torch threads in each worker/actor; None: max(1, int(cpus))
    max_failures: int = 2  # worker failures one training job survives, resuming from its last epoch checkpoint
    # (with keep_workers: the whole experiment's worker group)
    keep_workers: bool = False  # one Ray Train worker group for all of an experiment's training jobs (saves Ray
    # Train's start-up of every job); its workers hold their CPUs/GPUs throughout, so scoring needs its own
    storage_path: str | None = None  # Ray Train checkpoint storage (local dir or s3://, gs://); None: a temp dir
    score_concurrency: int = 1  # Ray Data workers scoring the pool at once (each sets the stage's models up once)
    score_cpus_per_actor: float = 1.0  # CPUs per scoring worker
    score_gpus_per_actor: float = 0.0  # GPUs per scoring worker
    score_compute: str = "auto"  # tasks (reused processes), actors (a pool per stage), auto: actors iff GPUs


@dataclass(frozen=True)
class Config:
    seed: int = 0  # fixes the initial set, candidates, inits, augmentation and selection
    task: str = "classification"  # or "segmentation" (per-pixel labels: mIoU, mean pixel CE; docs/segmentation.md)
    device: str = "auto"  # auto (cuda if available), cpu, cuda, cuda:N
    num_threads: int | None = None  # torch CPU threads (None: torch default)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    al: ALConfig = field(default_factory=ALConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> values (``{"train.lr": 0.1, ...}``), e.g. for tracking params."""
        return dict(flatten(self.to_dict()))


def flatten(d: dict, prefix: str = ""):
    """``(dotted key, value)`` of every leaf of a nested dict: ``{"train": {"lr": 0.1}}`` -> ``("train.lr", 0.1)``."""
    for k, v in d.items():
        if isinstance(v, dict):
            yield from flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


# ---------------------------------------------------------------- building from dicts


def from_dict(d: dict[str, Any] | None, cls: type = Config, path: str = "") -> Any:
    """Build a (nested) config dataclass; unknown keys and wrong types raise ConfigError."""
    d = d or {}
    if not isinstance(d, dict):
        raise ConfigError(f"config section '{path or 'top'}' must be a mapping, got {type(d).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(str(k) for k in set(d) - names)  # YAML keys may be numbers, null, ...
    if unknown:
        where = f"in '{path}' " if path else ""
        raise ConfigError(f"unknown config field {where}'{unknown[0]}'; valid fields: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in d.items():
        key = f"{path}.{name}" if path else name
        tp = hints[name]
        if isinstance(tp, type) and is_dataclass(tp):  # a nested section (hints are classes, never instances)
            kwargs[name] = from_dict(value, tp, key)
        else:
            kwargs[name] = _coerce(value, tp, key)
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if origin is Union or origin is types.UnionType:  # Optional[X] and X | None
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is tuple:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config field '{key}' must be a list, got {value!r}")
        return tuple(_coerce(v, args[0], key) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config field '{key}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"config field '{key}' must be an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config field '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config field '{key}' must be a string, got {value!r}")
        return value
    return value


class NumberLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads floats as people type them: ``1e-3``, ``5e-4``, ``1E5``, ``-.5e-2``.

    YAML 1.1 (PyYAML) wants a dot and a signed exponent (``5.0e-4``), so ``5e-4`` was a string that float fields
    refused. Integers, booleans, null and quoted strings resolve as before.
    """

    # own copy of the resolvers (keyed by first character), so yaml.SafeLoader itself is unaffected
    yaml_implicit_resolvers = {ch: list(rs) for ch, rs in yaml.SafeLoader.yaml_implicit_resolvers.items()}


# YAML 1.2 / Python float spellings; a dot or an exponent is required, so integers never match. Tried after
# PyYAML's own float and int patterns, so only the spellings they leave as strings land here.
NumberLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+)$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse YAML text as the project does everywhere (configs, search spaces, ``--set``): see ``NumberLoader``."""
    return yaml.load(text, Loader=NumberLoader)  # noqa: S506 - a SafeLoader subclass


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=5e-4"`` -> ``("train.lr", 0.0005)``; the value is parsed as YAML by ``load_yaml``."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value, e.g. train.lr=0.05")
    key, raw = text.split("=", 1)
    try:
        value = load_yaml(raw) if raw.strip() else None
    except Exception:  # noqa: BLE001 - not YAML (or YAML too deep to parse): the text itself
        value = raw
    return key.strip(), value


def apply_overrides(d: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of the nested dict ``d`` with dotted-key ``overrides`` set."""
    out = copy.deepcopy(d)
    for key, value in overrides.items():
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            if p not in node or not isinstance(node[p], dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return out


def read_yaml(path: str | Path, what: str, example: str) -> Any:
    """Parse a user's YAML file; a missing or unparsable file is a one-line ConfigError naming it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} '{p}' not found; pass an existing YAML file, e.g. {example}")
    try:
        return load_yaml(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} '{p}' is not valid YAML ({str(e).splitlines()[0]}); fix the file") from None


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | list[str] | None = None) -> Config:
    """Load a YAML preset (or the defaults), apply dotted overrides, validate."""
    d: dict[str, Any] = read_yaml(path, "config file", "configs/smoke.yaml") if path is not None else {}
    if not isinstance(d, dict):
        raise ConfigError(
            f"config file '{path}' must hold a mapping of sections (data:, train:, al:, ...), got a "
            f"{type(d).__name__}; see configs/smoke.yaml"
        )
    if isinstance(overrides, list):
        overrides = dict(parse_override(o) for o in overrides)
    cfg = from_dict(apply_overrides(d, overrides or {}))
    validate(cfg)
    return cfg


# ---------------------------------------------------------------- validation


MAX_WIDTH = 65_536  # layer widths, latent sizes and image sides: beyond this a model cannot be held in memory
MAX_BATCH = 1_048_576  # samples per batch
MAX_POOL = 100_000_000  # samples in a split (the AL state holds a few integers per pool sample)
# Caps on loop lengths, so that a typo (1e20) is refused instead of running until killed. Each is far beyond
# what any published protocol uses: the paper trains 200 epochs per stage, and the official VAE formula gives
# at most int((50,000 + 10,000) · 100 / 128) = 46,875 iterations on a whole CIFAR pool.
MAX_EPOCHS = 10_000  # 50x the paper's 200
MAX_ITERATIONS = 10_000_000  # VAE/discriminator iterations per stage: over 200x the formula's largest value
MAX_STEPS = 1_000  # VAE steps per iteration (VAAL: 2)
MAX_THREADS = 4_096  # torch CPU threads: more than any machine's cores, and within torch's int range


def _check(ok: bool, key: str, expected: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"config field '{key}' must be {expected}, got {value!r}")


def validate(cfg: Config) -> None:
    """Raise ConfigError naming the first field that is out of range."""
    DATASETS.get(cfg.data.name)
    MODELS.get(cfg.model.name)
    STRATEGIES.get(cfg.al.strategy)
    for key, value in cfg.flat().items():  # every number: no NaN or infinity, anywhere
        if isinstance(value, float):
            _check(math.isfinite(value), key, "a finite number", value)
    _check(0 <= cfg.seed < 2**63, "seed", "an integer in [0, 2^63)", cfg.seed)
    _check(cfg.task in ("classification", "segmentation"), "task", "classification or segmentation", cfg.task)
    if cfg.task == "segmentation":  # both act on one class per row
        _check(
            cfg.data.imbalance_ratio == 1,
            "data.imbalance_ratio",
            "1 for segmentation (pools are cut by image class, which a mask does not have)",
            cfg.data.imbalance_ratio,
        )
        _check(
            cfg.al.oracle != "manual",
            "al.oracle",
            "simulated or auto for segmentation (the manual oracle takes one class name per image)",
            cfg.al.oracle,
        )
    dev = cfg.device
    _check(
        dev in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", dev) is not None,
        "device",
        "auto, cpu, cuda or cuda:N",
        dev,
    )
    _check(
        cfg.num_threads is None or 1 <= cfg.num_threads <= MAX_THREADS,
        "num_threads",
        f"in [1, {MAX_THREADS}] or null (torch's default)",
        cfg.num_threads,
    )
    d = cfg.data
    _check(
        d.num_train is None or 1 <= d.num_train <= MAX_POOL,
        "data.num_train",
        f"in [1, {MAX_POOL:_}] or null",
        d.num_train,
    )
    _check(
        d.num_test is None or 1 <= d.num_test <= MAX_POOL, "data.num_test", f"in [1, {MAX_POOL:_}] or null", d.num_test
    )
    _check(
        d.imbalance_ratio >= 1 and math.isfinite(d.imbalance_ratio),
        "data.imbalance_ratio",
        ">= 1 (10 or 100 as in the paper; 1 = as is)",
        d.imbalance_ratio,
    )
    _check(
        d.minority_classes in ("even", "odd") or all(c.strip().isdigit() for c in d.minority_classes.split(",")),
        "data.minority_classes",
        "'even', 'odd' or a comma list of class ids",
        d.minority_classes,
    )
    own = d.name in ("parquet", "imagefolder")
    _check(
        not own or bool(d.path),
        "data.path",
        f"a Parquet file/directory or an image folder for data.name={d.name}",
        d.path,
    )
    _check(0 <= d.test_fraction < 1, "data.test_fraction", "in [0, 1)", d.test_fraction)
    _check(1 <= d.image_size <= MAX_WIDTH, "data.image_size", f"in [1, {MAX_WIDTH}]", d.image_size)
    _check(d.channels in (1, 3), "data.channels", "1 or 3", d.channels)
    _check(len(set(d.classes)) == len(d.classes), "data.classes", "distinct class names", list(d.classes))
    _check(
        1 <= cfg.model.ranker_hidden <= MAX_WIDTH,
        "model.ranker_hidden",
        f"in [1, {MAX_WIDTH}]",
        cfg.model.ranker_hidden,
    )
    t = cfg.train
    _check(1 <= t.epochs <= MAX_EPOCHS, "train.epochs", f"in [1, {MAX_EPOCHS:_}]", t.epochs)
    _check(
        2 <= t.batch_size <= MAX_BATCH and t.batch_size % 2 == 0,
        "train.batch_size",
        f"an even integer in [2, {MAX_BATCH}] (the ranking loss pairs the two halves of a batch)",
        t.batch_size,
    )
    _check(t.lr > 0, "train.lr", "> 0", t.lr)
    _check(0 <= t.momentum < 1, "train.momentum", "in [0, 1)", t.momentum)
    _check(t.weight_decay >= 0, "train.weight_decay", ">= 0", t.weight_decay)
    _check(
        all(1 <= m <= MAX_EPOCHS for m in t.milestones) and list(t.milestones) == sorted(t.milestones),
        "train.milestones",
        f"increasing epochs in [1, {MAX_EPOCHS:_}]",
        list(t.milestones),
    )
    _check(0 < t.gamma <= 1, "train.gamma", "in (0, 1]", t.gamma)
    _check(t.eta >= 0, "train.eta", ">= 0", t.eta)
    _check(t.margin >= 0, "train.margin", ">= 0", t.margin)
    _check(
        0 <= t.ranker_stop_grad_epoch <= MAX_EPOCHS,
        "train.ranker_stop_grad_epoch",
        f"in [0, {MAX_EPOCHS:_}]",
        t.ranker_stop_grad_epoch,
    )
    _check(t.precision in ("fp32", "bf16", "auto"), "train.precision", "fp32, bf16 or auto", t.precision)
    v = cfg.vae
    _check(1 <= v.latent_dim <= MAX_WIDTH, "vae.latent_dim", f"in [1, {MAX_WIDTH}]", v.latent_dim)
    _check(
        1 <= v.base_channels <= MAX_WIDTH // 8,
        "vae.base_channels",
        f"in [1, {MAX_WIDTH // 8}] (widths go to 8x)",
        v.base_channels,
    )
    _check(
        v.iterations is None or 1 <= v.iterations <= MAX_ITERATIONS,
        "vae.iterations",
        f"in [1, {MAX_ITERATIONS:_}] or null (official formula)",
        v.iterations,
    )
    _check(1 <= v.iteration_epochs <= MAX_EPOCHS, "vae.iteration_epochs", f"in [1, {MAX_EPOCHS:_}]", v.iteration_epochs)
    _check(1 <= v.batch_size <= MAX_BATCH, "vae.batch_size", f"in [1, {MAX_BATCH}]", v.batch_size)
    _check(
        v.vae_steps is None or 1 <= v.vae_steps <= MAX_STEPS,
        "vae.vae_steps",
        f"in [1, {MAX_STEPS}] or null",
        v.vae_steps,
    )
    _check(v.lr > 0, "vae.lr", "> 0", v.lr)
    _check(v.disc_lr > 0, "vae.disc_lr", "> 0", v.disc_lr)
    _check(v.beta >= 0, "vae.beta", ">= 0", v.beta)
    _check(v.adv_weight >= 0, "vae.adv_weight", ">= 0", v.adv_weight)
    _check(v.kl_reduction in (None, "mean", "sum"), "vae.kl_reduction", "mean, sum or null", v.kl_reduction)
    _check(v.score_bn in ("running", "batch"), "vae.score_bn", "running or batch", v.score_bn)
    _check(1 <= v.disc_hidden <= MAX_WIDTH, "vae.disc_hidden", f"in [1, {MAX_WIDTH}]", v.disc_hidden)
    _check(
        v.input_size is None or 16 <= v.input_size <= 4096,
        "vae.input_size",
        "in [16, 4096] or null (the data's size)",
        v.input_size,
    )
    a = cfg.al
    _check(1 <= a.initial <= MAX_POOL, "al.initial", f"in [1, {MAX_POOL:_}]", a.initial)
    _check(1 <= a.budget <= MAX_POOL, "al.budget", f"in [1, {MAX_POOL:_}]", a.budget)
    _check(1 <= a.stages <= MAX_POOL, "al.stages", f"in [1, {MAX_POOL:_}]", a.stages)
    _check(
        a.budget <= a.subset_size <= MAX_POOL,
        "al.subset_size",
        f"in [al.budget ({a.budget}), {MAX_POOL:_}]",
        a.subset_size,
    )
    _check(
        a.score_batch_size is None or 1 <= a.score_batch_size <= MAX_BATCH,
        "al.score_batch_size",
        f"in [1, {MAX_BATCH}] or null (per device)",
        a.score_batch_size,
    )
    _check(a.keep_checkpoints >= 0, "al.keep_checkpoints", ">= 0 (0 keeps all)", a.keep_checkpoints)
    _check(a.oracle in ("auto", "simulated", "manual"), "al.oracle", "auto, simulated or manual", a.oracle)
    b = cfg.backend
    _check(b.name in ("local", "ray"), "backend.name", "local or ray", b.name)
    _check(b.num_workers >= 1, "backend.num_workers", ">= 1", b.num_workers)
    _check(b.cpus_per_worker > 0, "backend.cpus_per_worker", "> 0", b.cpus_per_worker)
    _check(b.gpus_per_worker >= 0, "backend.gpus_per_worker", ">= 0", b.gpus_per_worker)
    _check(
        b.threads_per_worker is None or b.threads_per_worker >= 1,
        "backend.threads_per_worker",
        ">= 1 or null",
        b.threads_per_worker,
    )
    _check(b.max_failures >= 0, "backend.max_failures", ">= 0", b.max_failures)
    _check(b.score_concurrency >= 1, "backend.score_concurrency", ">= 1", b.score_concurrency)
    _check(b.score_cpus_per_actor > 0, "backend.score_cpus_per_actor", "> 0", b.score_cpus_per_actor)
    _check(b.score_gpus_per_actor >= 0, "backend.score_gpus_per_actor", ">= 0", b.score_gpus_per_actor)
    _check(
        b.score_compute in ("auto", "tasks", "actors"),
        "backend.score_compute",
        "auto, tasks or actors",
        b.score_compute,
    )


def check_pool_size(cfg: Config, pool_size: int) -> None:
    """The checks that need the data: the whole labeling plan must fit in the pool."""
    a = cfg.al
    need = a.initial + a.budget * (a.stages - 1)
    if a.initial > pool_size:
        raise ConfigError(f"config field 'al.initial' ({a.initial}) exceeds the pool of {pool_size} samples; lower it")
    if need > pool_size:
        raise ConfigError(
            f"config fields 'al.initial' + 'al.budget' x ('al.stages' - 1) = {need} exceed the pool of "
            f"{pool_size} samples; lower al.budget or al.stages"
        )
