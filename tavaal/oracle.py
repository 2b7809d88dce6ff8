"""Where labels come from: the data set (``SimulatedOracle``, benchmarks) or people (``ManualOracle``, and
``LabelStudioOracle`` in ``tavaal/labelstudio.py``, which hands the batch to Label Studio).

The loop asks the run's oracle once per stage, before the stage trains: ``label(stage, data, pool)`` returns the
data with every label that stage trains on, or raises ``LabelsPending`` when people must label a batch first.
A query labels its picks in the ``PoolState`` at once, whichever the oracle; with people as the oracle those
picks' labels stay unknown (-1) until they answer. The manual oracle then writes the batch to annotate and stops
the run; ``python -m tavaal.run --resume OUT --labels FILE.csv`` hands the answers to ``ManualOracle.answer``,
which checks them all and stores them before the stage trains. The files it reads and writes are
``tavaal/labelfiles.py``'s.

Initial labeled set: ``simulated``: ``al.initial`` random rows (the benchmark protocol). ``manual``: the rows
whose labels the data already has; if there are none, ``al.initial`` random rows drawn exactly as the simulated
oracle draws them, asked for as the batch of stage 0 (so a manual run answered with the true labels selects
what the simulated run selects).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

import numpy as np

from tavaal.config import Config, check_pool_size
from tavaal.core.pool import PoolState, initial_pool
from tavaal.core.seeding import numpy_rng
from tavaal.data.base import ALData
from tavaal.errors import ConfigError
from tavaal.labelfiles import apply_stored_labels, ingest_labels, pending, request_message, row_ids, write_request


class LabelsPending(Exception):  # noqa: N818 (not an error: the run stops as planned, exit code 0)
    """The run stops until people label a batch: the message names the file to fill in and the command that goes
    on. ``records`` holds the stages completed before the stop (the loop sets it)."""

    def __init__(self, stage: int, request: Path, count: int, message: str) -> None:
        super().__init__(message)
        self.stage, self.request, self.count = stage, request, count
        self.records: list = []


class Oracle:
    """Where one run's labels come from. The loop calls ``start`` once, then ``label`` before every stage."""

    mode: ClassVar[str]  # al.oracle

    def __init__(self, cfg: Config, out_dir: str | Path | None = None) -> None:
        self.cfg, self.out_dir = cfg, out_dir

    def start(self, data: ALData) -> tuple[ALData, PoolState]:
        """The data with the labels people gave this run so far, and the stage-0 labeled set; both checked
        against the pool."""
        initial = self.initial_state(data)  # from the data as loaded: a resume draws the same stage-0 set
        return apply_stored_labels(data, self.out_dir, self.cfg.data.new_classes), initial

    def initial_state(self, data: ALData) -> PoolState:
        """``al.initial`` random rows (the benchmark protocol), after checking the labeling plan fits the pool."""
        check_pool_size(self.cfg, len(data.train))
        return initial_pool(len(data.train), self.cfg.al.initial, numpy_rng(self.cfg.seed, "initial"))

    def label(self, stage: int, data: ALData, pool: PoolState) -> ALData:
        """The data with the label of every row stage ``stage`` trains on (``data`` itself when it has them all);
        raises ``LabelsPending`` when people must answer first."""
        raise NotImplementedError

    def answer(self, stage: int, data: ALData, pool: PoolState, file: str | Path) -> ALData:
        """The labels file given with ``--labels`` on resume, for the batch stage ``stage`` waits for."""
        raise ConfigError(
            f"no labels are pending in '{self.out_dir}' (the data knows every pool label: the oracle is "
            "simulated); resume without --labels"
        )


class SimulatedOracle(Oracle):
    """The data set knows every label (benchmarks): a pick is labeled the moment it is picked."""

    mode = "simulated"

    def label(self, stage: int, data: ALData, pool: PoolState) -> ALData:
        return data


class ManualOracle(Oracle):
    """People label the picks: a batch with missing labels is written to ``to_label/`` and the run stops
    (``LabelsPending``); ``answer`` takes their labels file when the run resumes."""

    mode = "manual"

    def initial_state(self, data: ALData) -> PoolState:
        """The rows labeled in the data, else ``al.initial`` random rows drawn as the simulated oracle draws them
        (asked for as the batch of stage 0)."""
        known = np.flatnonzero(data.known_rows)
        if not known.size:
            return super().initial_state(data)
        # the labeling plan is checked with the rows at hand, not al.initial
        cfg = self.cfg
        check_pool_size(dataclasses.replace(cfg, al=dataclasses.replace(cfg.al, initial=known.size)), len(data.train))
        return PoolState.empty(len(data.train)).label(known, 0)

    def label(self, stage: int, data: ALData, pool: PoolState) -> ALData:
        missing = pending(pool, data)
        if not missing.size:
            return data
        if self.out_dir is None:
            raise ConfigError("the manual oracle writes the batch to annotate into the run's directory: pass --out DIR")
        request = write_request(self.out_dir, stage, data, missing, self.cfg.to_dict())
        raise LabelsPending(
            stage, request, int(missing.size), request_message(request, self.out_dir, stage, missing.size, data)
        )

    def answer(self, stage: int, data: ALData, pool: PoolState, file: str | Path) -> ALData:
        """The pending labels from ``file``, validated in full before ``labels/stage_K.json`` is written."""
        if self.out_dir is None:
            raise ConfigError("--labels needs the run's directory: pass --resume DIR")
        missing = pending(pool, data)
        if not missing.size:
            raise ConfigError(
                f"no labels are pending in '{self.out_dir}' (stage {stage} has every label it needs); "
                "resume without --labels"
            )
        return ingest_labels(file, self.out_dir, stage, data, missing, self.cfg.data.new_classes)


def resolve_oracle(cfg: Config, data: ALData) -> str:
    """``al.oracle`` made concrete ("auto": simulated when every pool label is known) and checked against the data."""
    known = data.known_rows
    unknown = np.flatnonzero(~known)
    mode = cfg.al.oracle if cfg.al.oracle != "auto" else ("manual" if unknown.size else "simulated")
    people = "people" if mode == "manual" else "annotators in Label Studio"
    if mode == "simulated" and unknown.size:
        raise ConfigError(
            f"{unknown.size} of {known.size} pool rows of {data.name} have no label (e.g. id "
            f"'{row_ids(data, unknown[:1])[0]}'); the simulated oracle needs them all: run with "
            "--oracle manual to have people label them"
        )
    if mode in ("manual", "labelstudio") and not unknown.size:
        raise ConfigError(
            f"every pool row of {data.name} already has a label: nothing is left to ask {people}; "
            "use --oracle simulated (or leave the labels of the pool out of the data)"
        )
    return mode


def build_oracle(cfg: Config, data: ALData, out_dir: str | Path | None = None) -> Oracle:
    """The run's oracle: ``al.oracle`` made concrete (``resolve_oracle``) and checked against the data."""
    mode = resolve_oracle(cfg, data)
    if mode == "labelstudio":
        from tavaal.labelstudio import LabelStudioOracle  # a ManualOracle whose files are Label Studio's

        return LabelStudioOracle(cfg, out_dir)
    return (ManualOracle if mode == "manual" else SimulatedOracle)(cfg, out_dir)
