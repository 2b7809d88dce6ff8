"""The Strategy protocol: what a query strategy sees (a QueryContext) and returns (a QueryResult).

Strategies never see the pool object: they get the labeled indices, the stage's candidate indices and
the stage's trained weights, run their scorer through the backend, and return the indices to label.
Every strategy's score follows one convention: higher = query first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from tavaal.config import Config
from tavaal.core.precision import resolve_device, score_batch_size
from tavaal.core.training import ModelSpec, TaskResult
from tavaal.data.base import ALData

if TYPE_CHECKING:  # type-only: the strategies need no backend module at import time
    from tavaal.backends.base import Backend


@dataclass
class QueryContext:
    cfg: Config
    data: ALData
    backend: Backend
    spec: ModelSpec
    task: TaskResult  # the stage's trained task model (+ ranker) weights
    labeled: np.ndarray  # absolute indices of the labeled set
    candidates: np.ndarray  # absolute indices of the stage's random candidate subset (sorted)
    budget: int  # K: how many to label
    stage: int
    seed: int  # the stage's seed
    log: Callable[[str], None] = lambda msg: None

    @property
    def score_batch_size(self) -> int:
        """``al.score_batch_size`` (a run resolves null per device at its start; a config that was not resolved
        gets the same choice here)."""
        return score_batch_size(self.cfg.al.score_batch_size, resolve_device(self.cfg.device))


@dataclass
class QueryResult:
    selected: np.ndarray  # absolute indices to label, in pick order
    scores: np.ndarray | None = None  # [M] aligned with candidates; higher = query first
    states: dict[str, dict] = field(default_factory=dict)  # extra weights to checkpoint (e.g. vae, disc)
    info: dict = field(default_factory=dict)  # scalars for the stage record (e.g. final VAE loss)
    health: dict = field(default_factory=dict)  # adversarial strategies: the game's health (core/health.py)


class Strategy:
    """Base class: ``ranker_loss`` says how the task model's ranker is trained (None: no ranker)."""

    name: ClassVar[str]
    ranker_loss: ClassVar[str | None] = None
    direction: ClassVar[str]  # which samples it queries, in words (shown by --list)

    def query(self, ctx: QueryContext) -> QueryResult:
        raise NotImplementedError

    def build_models(self, cfg: Config, data: ALData) -> None:
        """Build the models this strategy trains besides the task model and ranker (none by default). A run
        calls it on the meta device before any work, so that shapes that cannot work are refused at once."""
