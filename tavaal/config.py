"""Experiment config: frozen dataclasses, YAML presets, dotted ``--set`` overrides, validation.

Every field is a ``setting``: its default, what it is and which paper symbol or piece of the official code the default
comes from (the text of ``docs/configuration.md``), and the range it must be in. Each section checks its own fields
(``Section.check``); ``validate`` adds the checks that span sections. Defaults are the paper's CIFAR-10 protocol
(TA-VAAL, Kim et al. 2021; official code cubeyoung/TA-VAAL).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import types
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from tavaal.errors import ConfigError
from tavaal.registry import DATASETS, MODELS, STRATEGIES

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

OWN_DATA = ("parquet", "imagefolder")  # the datasets that read a user's files from data.path


def setting(
    default: Any,
    doc: str,
    *,
    check: Callable[[Any], bool] | None = None,
    expected: str | None = None,
    heading: str | None = None,
) -> Any:
    """A config field: its ``default``; ``doc``, what it is and where the default comes from (its row in
    ``docs/configuration.md``); ``check(value)``, false for a value refused as ``must be <expected>``; ``heading``,
    a title the reference page shows above this field for it and the fields after it."""
    if (check is None) != (expected is None):
        raise TypeError("a setting's check and expected go together")
    return field(default=default, metadata={"doc": doc, "check": check, "expected": expected, "heading": heading})


def _check(ok: bool, key: str, expected: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"config field '{key}' must be {expected}, got {value!r}")


@dataclass(frozen=True)
class Section:
    """A config section: it checks its own fields, each against its ``setting``'s ``check``, then what relates them
    (``check_within``); a section nested in it checks itself in turn."""

    def check(self, prefix: str = "") -> None:
        """Raise ConfigError naming the first field out of range (``prefix``: the section's place, ``train.``)."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Section):
                value.check(f"{prefix}{f.name}.")
            elif f.metadata.get("check") is not None:
                shown = list(value) if isinstance(value, tuple) else value  # as YAML writes it
                _check(f.metadata["check"](value), prefix + f.name, f.metadata["expected"], shown)
        self.check_within(prefix)

    def check_within(self, prefix: str) -> None:
        """The checks that relate two of this section's fields (none unless a section has some)."""


def _minority(value: str) -> bool:
    return value in ("even", "odd") or all(c.strip().isdigit() for c in value.split(","))


@dataclass(frozen=True)
class DataConfig(Section):
    name: str = setting("cifar10", "registered dataset (see `python -m tavaal.run --list`)")
    data_dir: str | None = setting(None, "where the files are; None: the dataset's default places")
    num_train: int | None = setting(
        None,
        "use a seeded random subset of the training split as the pool (None: all)",
        check=lambda v: v is None or 1 <= v <= MAX_POOL,
        expected=f"in [1, {MAX_POOL:_}] or null",
    )
    num_test: int | None = setting(
        None,
        "evaluate on a seeded random subset of the test split (None: all)",
        check=lambda v: v is None or 1 <= v <= MAX_POOL,
        expected=f"in [1, {MAX_POOL:_}] or null",
    )
    imbalance_ratio: float = setting(
        1.0,
        "largest/smallest class count in the pool: 10 or 100 in the paper; 1: as is",
        check=lambda v: v >= 1 and math.isfinite(v),
        expected=">= 1 (10 or 100 as in the paper; 1 = as is)",
    )
    minority_classes: str = setting(
        "even",
        'classes cut by the ratio: "even" (paper: 0,2,4,6,8), "odd", or "0,3,5"',
        check=_minority,
        expected="'even', 'odd' or a comma list of class ids",
    )
    download: bool = setting(True, "let torchvision download missing files (needs internet)")
    path: str | None = setting(
        None,
        "parquet: a .parquet file, a directory of them or s3://...; imagefolder: the root",
        heading="your own images (data.name parquet or imagefolder; docs/own-data.md)",
    )
    test_path: str | None = setting(
        None, "a labeled test set in the same format; None: hold out test_fraction of labeled rows"
    )
    test_fraction: float = setting(
        0.2,
        "without test_path: share of the labeled rows held out (by a hash of the id)",
        check=lambda v: 0 <= v < 1,
        expected="in [0, 1)",
    )
    image_size: int = setting(
        32,
        "images are resized to image_size x image_size when decoded",
        check=lambda v: 1 <= v <= MAX_WIDTH,
        expected=f"in [1, {MAX_WIDTH}]",
    )
    channels: int = setting(
        3, "1 (grayscale) or 3 (RGB) after decoding", check=lambda v: v in (1, 3), expected="1 or 3"
    )
    classes: tuple[str, ...] = setting(
        (),
        "class names in model order; (): the labels found in the data, sorted",
        check=lambda v: len(set(v)) == len(v),
        expected="distinct class names",
    )
    new_classes: bool = setting(False, "manual oracle: accept labels outside the known classes (appended to the list)")
    id_column: str = setting("id", "parquet: a stable, unique id per row")
    image_column: str = setting(
        "image", "parquet: encoded PNG/JPEG bytes, or a path (relative: to the Parquet's folder)"
    )
    label_column: str = setting("label", "parquet: class name or integer; null = unlabeled (the column may be absent)")
    features: str = setting(
        "image",
        "parquet: what data.image_column holds: image, or vector (one float vector a row: fixed_size_list or "
        "list of floats, or binary cells of D little-endian float32; lists are vectors in either case)",
        check=lambda v: v in ("image", "vector"),
        expected="image or vector",
    )

    def check_within(self, prefix: str) -> None:
        _check(
            self.name not in OWN_DATA or bool(self.path),
            prefix + "path",
            f"a Parquet file/directory or an image folder for data.name={self.name}",
            self.path,
        )


@dataclass(frozen=True)
class ModelConfig(Section):
    name: str = setting(
        "resnet18",
        "task model: resnet18 (paper), small_cnn (CPU scale), mlp (vectors), seg_small or deeplabv3_resnet50 "
        "(segmentation)",
    )
    ranker_hidden: int = setting(
        128,
        "loss-prediction module: width of each per-block FC layer (LL4AL)",
        check=lambda v: 1 <= v <= MAX_WIDTH,
        expected=f"in [1, {MAX_WIDTH}]",
    )


@dataclass(frozen=True)
class TrainConfig(Section):
    epochs: int = setting(
        200,
        "paper / official code: 200 epochs per stage",
        check=lambda v: 1 <= v <= MAX_EPOCHS,
        expected=f"in [1, {MAX_EPOCHS:_}]",
    )
    batch_size: int = setting(
        128,
        "paper: 128",
        check=lambda v: 2 <= v <= MAX_BATCH and v % 2 == 0,
        expected=f"an even integer in [2, {MAX_BATCH}] (the ranking loss pairs the two halves of a batch)",
    )
    lr: float = setting(
        0.1, "SGD lr, task model and ranker (official code LR = 0.1)", check=lambda v: v > 0, expected="> 0"
    )
    momentum: float = setting(0.9, "official code MOMENTUM", check=lambda v: 0 <= v < 1, expected="in [0, 1)")
    weight_decay: float = setting(5e-4, "official code WDECAY", check=lambda v: v >= 0, expected=">= 0")
    milestones: tuple[int, ...] = setting(
        (160,),
        "lr x gamma here; the code's second milestone (240) never fires",
        check=lambda v: all(1 <= m <= MAX_EPOCHS for m in v) and list(v) == sorted(v),
        expected=f"increasing epochs in [1, {MAX_EPOCHS:_}]",
    )
    gamma: float = setting(
        0.1,
        "lr factor at each milestone (paper: x 0.1 at epoch 160)",
        check=lambda v: 0 < v <= 1,
        expected="in (0, 1]",
    )
    eta: float = setting(
        1.0,
        "η: weight of the ranking loss in L_task + η·L_rank (eq. 2; official WEIGHT = 1)",
        check=lambda v: v >= 0,
        expected=">= 0",
    )
    margin: float = setting(
        1.0, "ξ: margin of LL4AL's loss (baseline lloss only)", check=lambda v: v >= 0, expected=">= 0"
    )
    ranker_stop_grad_epoch: int = setting(
        120,
        "after this epoch the ranker's input features are detached (official EPOCHL)",
        check=lambda v: 0 <= v <= MAX_EPOCHS,
        expected=f"in [0, {MAX_EPOCHS:_}]",
    )
    precision: str = setting(
        "fp32",
        "fp32, bf16 (autocast: task model, VAE, evaluation, scoring; cheaper convolutions on CPUs with avx512_bf16) "
        "or auto (bf16 where the device supports it, else fp32: tavaal/core/precision.py)",
        check=lambda v: v in ("fp32", "bf16", "auto"),
        expected="fp32, bf16 or auto",
    )
    channels_last: bool = setting(False, "NHWC memory format for the image models and their batches (same maths)")


@dataclass(frozen=True)
class VAEConfig(Section):
    latent_dim: int = setting(
        32,
        "VAE latent size (official: 32; 28 for Fashion-MNIST)",
        check=lambda v: 1 <= v <= MAX_WIDTH,
        expected=f"in [1, {MAX_WIDTH}]",
    )
    base_channels: int = setting(
        128,
        "encoder widths base·(1,2,4,8): 128..1024 as published; smaller for CPU",
        check=lambda v: 1 <= v <= MAX_WIDTH // 8,
        expected=f"in [1, {MAX_WIDTH // 8}] (widths go to 8x)",
    )
    iterations: int | None = setting(
        None,
        "None: int((|L| + M) · iteration_epochs / batch_size), the official formula",
        check=lambda v: v is None or 1 <= v <= MAX_ITERATIONS,
        expected=f"in [1, {MAX_ITERATIONS:_}] or null (official formula)",
    )
    iteration_epochs: int = setting(
        100,
        'the "100" of the official iteration formula',
        check=lambda v: 1 <= v <= MAX_EPOCHS,
        expected=f"in [1, {MAX_EPOCHS:_}]",
    )
    batch_size: int = setting(
        128,
        "labeled and unlabeled batch size of the VAE/discriminator (official: 128)",
        check=lambda v: 1 <= v <= MAX_BATCH,
        expected=f"in [1, {MAX_BATCH}]",
    )
    vae_steps: int | None = setting(
        None,
        "VAE steps per iteration; None: 1 (tavaal, official) or 2 (vaal, VAAL's code)",
        check=lambda v: v is None or 1 <= v <= MAX_STEPS,
        expected=f"in [1, {MAX_STEPS}] or null",
    )
    lr: float = setting(5e-4, "Adam lr of the VAE (official: 5e-4)", check=lambda v: v > 0, expected="> 0")
    disc_lr: float = setting(
        5e-4, "Adam lr of the discriminator (official: 5e-4)", check=lambda v: v > 0, expected="> 0"
    )
    beta: float = setting(1.0, "β: KL weight", check=lambda v: v >= 0, expected=">= 0")
    adv_weight: float = setting(
        1.0, "λ_adv: weight of the adversarial term in the VAE loss", check=lambda v: v >= 0, expected=">= 0"
    )
    kl_reduction: str | None = setting(
        None,
        'None: "mean" (tavaal, official TA-VAAL) or "sum" (vaal, official VAAL)',
        check=lambda v: v in (None, "mean", "sum"),
        expected="mean, sum or null",
    )
    first_iter_noise: bool = setting(False, "official TA-VAAL quirk: U(0,1) instead of r at the very first iteration")
    disc_hidden: int = setting(
        512,
        "discriminator MLP width (official: 512)",
        check=lambda v: 1 <= v <= MAX_WIDTH,
        expected=f"in [1, {MAX_WIDTH}]",
    )
    input_size: int | None = setting(
        None,
        "images resized to input_size x input_size for the VAE (None: the data's size)",
        check=lambda v: v is None or 16 <= v <= 4096,
        expected="in [16, 4096] or null (the data's size)",
    )
    normalize: bool = setting(
        True,
        "the VAE's images: normalized by the data's mean/std as the task model sees them (true), or raw [0, 1] pixels "
        "(false), as the official TA-VAAL code feeds its VAE on Fashion-MNIST (transforms.ToTensor only); only the "
        "VAE's input and reconstruction target change, never the task model's",
    )
    score_bn: str = setting(
        "batch",
        'VAE BatchNorm when scoring: "batch" (each batch of vae.batch_size normalized by its own statistics, as every '
        'training batch was: the official TA-VAAL and VAAL code, whose VAE stays in train mode) or "running" (eval '
        "mode: running statistics that mix labeled and unlabeled batches)",
        check=lambda v: v in ("running", "batch"),
        expected="running or batch",
    )


@dataclass(frozen=True)
class ALConfig(Section):
    strategy: str = setting("tavaal", "random, entropy, coreset, lloss, lloss_rank, vaal, tavaal")
    initial: int = setting(
        1000,
        "labels drawn uniformly at random before stage 0 (paper: 1,000)",
        check=lambda v: 1 <= v <= MAX_POOL,
        expected=f"in [1, {MAX_POOL:_}]",
    )
    budget: int = setting(
        1000,
        "K: labels added per stage (paper: 1,000)",
        check=lambda v: 1 <= v <= MAX_POOL,
        expected=f"in [1, {MAX_POOL:_}]",
    )
    stages: int = setting(
        10,
        "stages trained and evaluated (paper: 10, i.e. 1k..10k labels)",
        check=lambda v: 1 <= v <= MAX_POOL,
        expected=f"in [1, {MAX_POOL:_}]",
    )
    subset_size: int = setting(10_000, "M: random unlabeled candidates scored per stage (paper: 10,000)")
    score_batch_size: int | None = setting(
        None,
        "batch size for scoring and evaluation (no effect on results); null: per device, 128 on CPUs (smaller batches "
        "stay in the CPU's caches: benchmarks/README.md has the timing) and 512 on GPUs",
        check=lambda v: v is None or 1 <= v <= MAX_BATCH,
        expected=f"in [1, {MAX_BATCH}] or null (per device)",
    )
    keep_checkpoints: int = setting(
        0,
        "newest stage checkpoints kept on disk (0: all); resume falls back among them",
        check=lambda v: v >= 0,
        expected=">= 0 (0 keeps all)",
    )
    oracle: str = setting(
        "auto",
        "simulated (labels from the data), manual (people label to_label/ files), labelstudio (people label in "
        "Label Studio: its tasks file, or its API with labelstudio.url); auto: simulated when every pool label is "
        "known, else manual",
        check=lambda v: v in ("auto", "simulated", "manual", "labelstudio"),
        expected="auto, simulated, manual or labelstudio",
    )

    def check_within(self, prefix: str) -> None:
        _check(
            self.budget <= self.subset_size <= MAX_POOL,
            prefix + "subset_size",
            f"in [al.budget ({self.budget}), {MAX_POOL:_}]",
            self.subset_size,
        )


@dataclass(frozen=True)
class BackendConfig(Section):
    name: str = setting(
        "local",
        "local (in-process) or ray (Ray Train for training, Ray Data for scoring)",
        check=lambda v: v in ("local", "ray"),
        expected="local or ray",
    )
    address: str | None = setting(None, 'Ray cluster to join ("auto", "ray://host:10001"); None: a local Ray')
    num_workers: int = setting(
        1,
        "Ray Train workers per training job (DDP; gloo on CPU, nccl on GPU)",
        check=lambda v: v >= 1,
        expected=">= 1",
    )
    cpus_per_worker: float = setting(
        1.0, "CPUs reserved by each training worker", check=lambda v: v > 0, expected="> 0"
    )
    gpus_per_worker: float = setting(
        0.0, "GPUs per training worker (> 0 trains on GPU with nccl)", check=lambda v: v >= 0, expected=">= 0"
    )
    threads_per_worker: int | None = setting(
        None,
        "torch threads in each worker/actor; None: max(1, int(cpus))",
        check=lambda v: v is None or v >= 1,
        expected=">= 1 or null",
    )
    max_failures: int = setting(
        2,
        "worker failures one training job survives, resuming from its last epoch checkpoint (with keep_workers: the "
        "whole experiment's worker group)",
        check=lambda v: v >= 0,
        expected=">= 0",
    )
    keep_workers: bool = setting(
        False,
        "one Ray Train worker group for all of an experiment's training jobs (saves Ray Train's start-up of every "
        "job); its workers hold their CPUs/GPUs throughout, so scoring needs its own",
    )
    storage_path: str | None = setting(
        None, "Ray Train checkpoint storage (local dir or s3://, gs://); None: a temp dir"
    )
    score_concurrency: int = setting(
        1,
        "Ray Data workers scoring the pool at once (each sets the stage's models up once)",
        check=lambda v: v >= 1,
        expected=">= 1",
    )
    score_cpus_per_actor: float = setting(1.0, "CPUs per scoring worker", check=lambda v: v > 0, expected="> 0")
    score_gpus_per_actor: float = setting(0.0, "GPUs per scoring worker", check=lambda v: v >= 0, expected=">= 0")
    score_compute: str = setting(
        "auto",
        "tasks (reused processes), actors (a pool per stage), auto: actors iff GPUs",
        check=lambda v: v in ("auto", "tasks", "actors"),
        expected="auto, tasks or actors",
    )


@dataclass(frozen=True)
class LabelStudioConfig(Section):
    url: str = setting(
        "",
        "al.oracle=labelstudio: the Label Studio server (http://host:8080) whose API gets each batch's tasks and "
        "gives their annotations back; the token comes from the environment (LABEL_STUDIO_API_KEY), never the "
        'config. "": write the tasks file and read the project\'s JSON export given with --labels',
        check=lambda v: v == "" or re.fullmatch(r"https?://[^\s/?#@]+(/[^\s?#]*)?", v) is not None,
        expected='"" or an http:// or https:// address without credentials (the token goes in LABEL_STUDIO_API_KEY), '
        "e.g. http://127.0.0.1:8080",
    )
    project: str = setting(
        "", 'the Label Studio project\'s title (created if absent); "": "tavaal" and the run directory\'s name'
    )
    image_root: str | None = setting(
        None,
        "the Label Studio server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT: tasks address each image by its path "
        "below it (images outside it are copied into the run's to_label/); null: that variable if this shell sets "
        "it, else the run's to_label/ folder",
    )
    predictions: bool = setting(
        True, "send the task model's prediction and its probability with each task (a pre-annotation)"
    )
    wait_minutes: float = setting(
        0.0,
        "with url: how long a run waits for annotators to finish a batch, checking every poll_seconds, before it "
        "stops (resume later without --labels); 0: stop at once",
        check=lambda v: v >= 0,
        expected=">= 0",
    )
    poll_seconds: float = setting(
        30.0, "with wait_minutes: seconds between checks of the project", check=lambda v: v > 0, expected="> 0"
    )


@dataclass(frozen=True)
class Config(Section):
    seed: int = setting(
        0,
        "fixes the initial set, candidates, inits, augmentation and selection",
        check=lambda v: 0 <= v < 2**63,
        expected="an integer in [0, 2^63)",
    )
    task: str = setting(
        "classification",
        'or "segmentation" (per-pixel labels: mIoU, mean pixel CE; docs/segmentation.md)',
        check=lambda v: v in ("classification", "segmentation"),
        expected="classification or segmentation",
    )
    device: str = setting(
        "auto",
        "auto (cuda if available), cpu, cuda, cuda:N",
        check=lambda v: v in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", v) is not None,
        expected="auto, cpu, cuda or cuda:N",
    )
    num_threads: int | None = setting(
        None,
        "torch CPU threads (None: torch default)",
        check=lambda v: v is None or 1 <= v <= MAX_THREADS,
        expected=f"in [1, {MAX_THREADS}] or null (torch's default)",
    )
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    al: ALConfig = field(default_factory=ALConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    labelstudio: LabelStudioConfig = field(default_factory=LabelStudioConfig)

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


def validate(cfg: Config) -> None:
    """Raise ConfigError naming the first field that is out of range: each section checks its own fields
    (``Section.check``), then the checks that span sections."""
    DATASETS.get(cfg.data.name)
    MODELS.get(cfg.model.name)
    STRATEGIES.get(cfg.al.strategy)
    for key, value in cfg.flat().items():  # every number: no NaN or infinity, anywhere
        if isinstance(value, float):
            _check(math.isfinite(value), key, "a finite number", value)
    cfg.check()
    if cfg.task == "segmentation":  # both act on one class per row
        _check(
            cfg.data.imbalance_ratio == 1,
            "data.imbalance_ratio",
            "1 for segmentation (pools are cut by image class, which a mask does not have)",
            cfg.data.imbalance_ratio,
        )
        _check(
            cfg.al.oracle not in ("manual", "labelstudio"),
            "al.oracle",
            "simulated or auto for segmentation (the manual oracle takes one class name per image)",
            cfg.al.oracle,
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
