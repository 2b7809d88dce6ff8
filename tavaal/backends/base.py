"""The Backend protocol: the three heavy steps of a stage, behind one seam."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from tavaal.core.scoring import Scorer
from tavaal.core.training import TaskJob, TaskResult
from tavaal.core.vae_training import VAEJob, VAEResult
from tavaal.data.base import ALData


class Backend(Protocol):
    """Runs task training, VAE/discriminator training and pool scoring for the AL loop.

    ``prepare`` is called once per experiment with the data set and the device the config asks for.
    """

    def prepare(self, data: ALData, device: torch.device) -> None: ...

    def relabel(self, data: ALData) -> None:
        """The pool's labels changed mid-run (an oracle that answers at once): later jobs read ``data``."""
        ...

    def train_task(self, job: TaskJob, on_epoch_end: Callable[[dict], None] | None = None) -> TaskResult: ...

    def train_vae(self, job: VAEJob, on_progress: Callable[[dict], None] | None = None) -> VAEResult: ...

    def score(self, scorer: Scorer, indices: np.ndarray, batch_size: int) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...
