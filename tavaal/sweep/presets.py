"""The sweep's presets and names, shared by the CLI and the driver (imports nothing of the sweep)."""

from __future__ import annotations

from typing import Any, TypedDict


class Preset(TypedDict):
    config: str  # the base config file
    space: str  # the search space file
    num_samples: int
    overrides: dict[str, Any]  # dotted config keys -> values


PRESETS: dict[str, Preset] = {
    # the embedded default: real Fashion-MNIST, a few minutes per trial on one core
    "default": {
        "config": "configs/fashionmnist_tavaal_cpu.yaml",
        "space": "tune/tavaal_cpu.yaml",
        "num_samples": 4,
        "overrides": {
            "al.stages": 4,
            "vae.iterations": 150,
            "train.epochs": 10,
            "train.milestones": [8],
            "train.ranker_stop_grad_epoch": 6,
            "data.num_test": 5000,
        },
    },
    "smoke": {
        "config": "configs/smoke.yaml",
        "space": "tune/smoke.yaml",
        "num_samples": 2,
        "overrides": {"al.stages": 2, "train.epochs": 1, "vae.iterations": 4},
    },
}
OBJECTIVES = ("auc", "final_accuracy")
STATE_FILE = "tavaal_sweep.json"
