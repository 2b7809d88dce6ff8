"""In-process backend: the core functions, called directly."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from tavaal.core.scoring import Scorer, score_pool
from tavaal.core.training import TaskJob, TaskResult, train_task
from tavaal.core.vae_training import VAEJob, VAEResult, train_vae
from tavaal.data.base import ALData


class LocalBackend:
    name = "local"

    def __init__(self) -> None:
        self.data: ALData | None = None
        self.device = torch.device("cpu")

    def prepare(self, data: ALData, device: torch.device) -> None:
        self.data, self.device = data, device

    def relabel(self, data: ALData) -> None:
        self.data = data

    def train_task(self, job: TaskJob, on_epoch_end: Callable[[dict], None] | None = None) -> TaskResult:
        return train_task(job, self._data(), self.device, on_epoch_end)

    def train_vae(self, job: VAEJob, on_progress: Callable[[dict], None] | None = None) -> VAEResult:
        return train_vae(job, self._data(), self.device, on_progress)

    def score(self, scorer: Scorer, indices: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
        return score_pool(scorer, self._data(), indices, batch_size, self.device)

    def close(self) -> None:
        self.data = None

    def _data(self) -> ALData:
        if self.data is None:
            raise RuntimeError("LocalBackend.prepare(data, device) must be called first")
        return self.data
