"""Search spaces for sweeps: YAML files of dotted config keys -> distributions (``tune/*.yaml``).

    train.eta: {loguniform: [0.25, 4.0]}      # η, the ranking-loss weight
    vae.latent_dim: {choice: [16, 32, 64]}
    vae.iterations: {qrandint: [100, 400, 50]}

Distributions: uniform [lo, hi], loguniform [lo, hi], quniform [lo, hi, q], randint [lo, hi) (hi excluded),
qrandint [lo, hi, q], choice [v1, v2, ...]. Every key must be a config field, every range non-empty, and
both ends (every choice) must pass the config's validation: errors come before any trial starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tavaal.config import Config, apply_overrides, from_dict, read_yaml, validate
from tavaal.errors import ConfigError

DISTRIBUTIONS = ("uniform", "loguniform", "quniform", "randint", "qrandint", "choice")


def read_space(path: str | Path) -> dict[str, tuple[str, list]]:
    """Parse and check the file's syntax: ``{key: (distribution, args)}``."""
    p = Path(path)
    raw = read_yaml(p, "search space", "tune/tavaal_cpu.yaml")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"search space '{p}' must map dotted config keys to distributions; it is empty")
    space = {}
    for key, spec in raw.items():
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
            raise ConfigError(
                f"search space '{p}': '{key}' must be one of {{{', '.join(DISTRIBUTIONS)}: [...]}}, got {spec!r}"
            )
        dist, args = next(iter(spec.items()))
        if not isinstance(args, list):
            raise ConfigError(f"search space '{p}': '{key}' {dist} needs a list, got {args!r}")
        space[str(key)] = (dist, args)
    return space


def check_space(space: dict[str, tuple[str, list]], base: dict[str, Any], where: str) -> None:
    """Unknown keys, empty ranges and out-of-range ends raise ConfigError (one line each)."""
    known = set(from_dict(base).flat())
    for key, (dist, args) in space.items():
        if key not in known:
            raise ConfigError(
                f"search space '{where}': unknown config key '{key}'; use dotted config fields such "
                "as train.eta or vae.latent_dim"
            )
        if dist == "choice":
            if not args:
                raise ConfigError(f"search space '{where}': '{key}' has an empty choice list")
            ends = args
        else:
            need = 3 if dist in ("quniform", "qrandint") else 2
            if len(args) != need or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
                raise ConfigError(f"search space '{where}': '{key}' {dist} needs {need} numbers, got {args}")
            lo, hi = args[0], args[1]
            if not lo < hi:
                raise ConfigError(
                    f"search space '{where}': '{key}' has an empty range [{lo}, {hi}]; "
                    "the low end must be below the high end"
                )
            if dist == "loguniform" and lo <= 0:
                raise ConfigError(f"search space '{where}': '{key}' loguniform needs a low end > 0, got {lo}")
            ends = [lo, hi - 1] if dist == "randint" else [lo, hi]
        for value in ends:
            try:
                validate(from_dict(apply_overrides(base, {key: value})))
            except ConfigError as e:
                raise ConfigError(f"search space '{where}': '{key}' = {value!r} is invalid: {e}") from None


def to_tune(space: dict[str, tuple[str, list]]) -> dict[str, Any]:
    """Ray Tune domains for the parsed space (HyperOptSearch converts them to hyperopt's)."""
    from ray import tune

    make = {
        "uniform": lambda a: tune.uniform(a[0], a[1]),
        "loguniform": lambda a: tune.loguniform(a[0], a[1]),
        "quniform": lambda a: tune.quniform(a[0], a[1], a[2]),
        "randint": lambda a: tune.randint(int(a[0]), int(a[1])),
        "qrandint": lambda a: tune.qrandint(int(a[0]), int(a[1]), int(a[2])),
        "choice": lambda a: tune.choice(list(a)),
    }
    return {key: make[dist](args) for key, (dist, args) in space.items()}


def default_point(space: dict[str, tuple[str, list]], base: dict[str, Any]) -> dict[str, Any]:
    """The base config's values of the searched keys (the paper's defaults, evaluated first)."""
    flat = from_dict(base).flat()
    point = {}
    for key, (dist, args) in space.items():
        value = flat[key]
        if dist == "choice" and value not in args:
            value = args[0]  # hyperopt can only start from a listed choice
        elif dist != "choice" and (value is None or not args[0] <= value <= args[1]):
            value = args[0] if value is None else min(max(value, args[0]), args[1])
        point[key] = value
    return point


def resolve_trial_config(base: dict[str, Any], params: dict[str, Any]) -> Config:
    """Base config + one trial's sampled dotted keys, validated."""
    cfg = from_dict(apply_overrides(base, {k: _plain(v) for k, v in params.items()}))
    validate(cfg)
    return cfg


def _plain(v: Any) -> Any:
    """numpy scalars (from samplers) -> Python numbers, so the config's type checks accept them."""
    return v.item() if hasattr(v, "item") else v
