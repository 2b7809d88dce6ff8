"""Ray Data pool scoring (tier: Ray, 2 CPUs): the same numbers and selections as the local loop, streaming
memory on a 1,000,000-image pool, and bad input."""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time

import numpy as np
import pytest
import ray
import torch

from tavaal.backends import LocalBackend
from tavaal.backends.ray.data import _MAX_BATCHES_PER_BLOCK, _index_blocks, score_with_ray_data
from tavaal.config import DataConfig, load_config
from tavaal.core.scoring import score_pool
from tavaal.core.vae_training import VAEJob
from tavaal.data import build_dataset
from tavaal.registry import STRATEGIES
from tavaal.strategies import QueryContext, build_strategy
from tavaal.strategies.scorers import DiscriminatorScorer, TaskScorer

from conftest import trained_stage

# the test's own classes (a combined scorer) reach the actors by value: the workers cannot import tests/
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

CFG = load_config("configs/smoke.yaml", ["train.epochs=1", "vae.iterations=3", "al.score_batch_size=37"])
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def stage():
    """Really trained tiny weights (1 epoch; VAE/discriminator 3 iterations) on the synthetic pool."""
    return trained_stage(CFG, 200)


class CountsSetups:
    """Outputs, per row: its pool index (``pool_index``), the process that scored it, how many scorer setups that
    process has done so far, and how many rows it has scored since its latest setup (this call's scorer)."""

    def setup(self, device: torch.device) -> None:
        os.environ["TAVAAL_TEST_SETUPS"] = str(int(os.environ.get("TAVAAL_TEST_SETUPS", "0")) + 1)
        os.environ["TAVAAL_TEST_ROWS"] = "0"

    def __call__(self, x: torch.Tensor, idx: np.ndarray) -> dict[str, torch.Tensor]:
        n = len(idx)
        rows = int(os.environ["TAVAAL_TEST_ROWS"]) + n
        os.environ["TAVAAL_TEST_ROWS"] = str(rows)
        return {
            "pool_index": torch.as_tensor(idx),
            "pid": torch.full((n,), os.getpid()),
            "setups": torch.full((n,), int(os.environ["TAVAAL_TEST_SETUPS"])),
            "rows": torch.full((n,), rows),
        }


def test_tasks_set_the_scorer_up_once_per_process_and_call(ray_cluster, stage):
    """Which processes score which share of the rows is Ray's scheduling (one may score all of them on a busy
    machine); what holds regardless: each process sets a call's scorer up once, a new call sets up again, and
    every row is scored exactly once, in order."""
    data = stage[0]
    ref = ray.put(data)
    seen: dict[int, int] = {}  # process -> its setup count in the previous call
    for _ in range(2):  # a second call (a new stage's scorer) sets up again, once per process
        got = score_with_ray_data(CountsSetups(), ref, np.arange(300), batch_size=10, concurrency=2, compute="tasks")
        np.testing.assert_array_equal(got["pool_index"], np.arange(300))  # every row back, in order
        scored = 0
        for pid in np.unique(got["pid"]):
            mine = got["pid"] == pid
            assert np.unique(got["setups"][mine]).size == 1  # one setup in this process for the whole call
            setups = int(got["setups"][mine][0])
            assert pid not in seen or setups == seen[pid] + 1  # and one more than in its previous call
            seen[pid] = setups
            # rows since that setup: exactly the rows of this process, so none was scored twice
            assert int(got["rows"][mine].max()) == int(mine.sum())
            scored += int(mine.sum())
        assert scored == 300


class Combined:
    """Several scorers as one (outputs prefixed by their key), so one Ray Data run covers every kind."""

    def __init__(self, scorers: dict) -> None:
        self.scorers = scorers

    def setup(self, device: torch.device) -> None:
        for s in self.scorers.values():
            s.setup(device)

    def __call__(self, x: torch.Tensor, idx: np.ndarray) -> dict[str, torch.Tensor]:
        return {f"{key}/{name}": v for key, s in self.scorers.items() for name, v in s(x, idx).items()}


def _disc_scorer(stage, conditional: bool, vae_cfg=CFG.vae) -> DiscriminatorScorer:
    from tavaal.core.vae_training import vae_input_shape

    data, pool, cand, spec, local, tasks = stage
    rhat = None
    if conditional:  # as the tavaal strategy does: r̂ of every labeled and candidate sample, once
        both = np.union1d(pool.labeled_indices(), cand)
        rhat = np.full(len(data.train), np.nan, dtype=np.float32)
        rhat[both] = local.score(TaskScorer(spec, tasks["rank"], "rhat"), both, 64)["rhat"]
    v = dataclasses.replace(vae_cfg, vae_steps=1, kl_reduction="mean")
    job = VAEJob(
        vae_input_shape(data.input_shape, v.input_size), v, pool.labeled_indices(), cand, 3, 0, conditional, rhat=rhat
    )
    return DiscriminatorScorer(job, local.train_vae(job))


@pytest.mark.parametrize("compute", ["tasks", "actors"])
def test_every_scorer_kind_equals_the_local_loop(ray_cluster, stage, compute):
    data, pool, cand, spec, local, tasks = stage
    scorers = {kind: TaskScorer(spec, tasks["rank"], kind) for kind in ("entropy", "rhat", "embedding", "logits")}
    scorers |= {"vaal": _disc_scorer(stage, False), "tavaal": _disc_scorer(stage, True)}
    # shuffled, one index twice, labeled ones too: the output must follow this order exactly
    idx = np.random.default_rng(3).permutation(np.concatenate([cand, pool.labeled_indices()[:10], cand[:1]]))
    got = score_with_ray_data(Combined(scorers), ray.put(data), idx, batch_size=37, concurrency=2, compute=compute)
    names = set()
    for key, scorer in scorers.items():
        want = score_pool(scorer, data, idx, 37, CPU)
        for name, w in want.items():
            names.add(f"{key}/{name}")
            g = got[f"{key}/{name}"]
            assert g.shape == w.shape == (idx.size, *w.shape[1:]) and g.dtype == w.dtype
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-5, err_msg=f"{key}/{name}")
    assert set(got) == names
    assert got["embedding/embedding"].shape == (idx.size, 128)  # [B, D] outputs survive the round trip
    assert np.ptp(got["entropy/entropy"]) > 0 and np.ptp(got["tavaal/logit"]) > 0  # not constant outputs


def test_segmentation_scores_equal_the_local_loop(ray_cluster):
    """Per-image scores of a segmentation model (mean pixel entropy, r̂, pooled embedding) and TA-VAAL's
    discriminator on images resized for the VAE (vae.input_size) come out of Ray Data as from the local loop."""
    from test_segmentation import TINY_SEG

    cfg = load_config("configs/shapes_seg_cpu.yaml", TINY_SEG + ["vae.input_size=32"])
    seg = trained_stage(cfg, 48)
    data, pool, cand, spec, local, tasks = seg
    scorers = {kind: TaskScorer(spec, tasks["rank"], kind) for kind in ("entropy", "rhat", "embedding")}
    scorers["tavaal"] = _disc_scorer(seg, True, cfg.vae)
    idx = np.concatenate([cand, pool.labeled_indices()[:5]])
    got = score_with_ray_data(Combined(scorers), ray.put(data), idx, batch_size=13, concurrency=2, compute="tasks")
    for key, scorer in scorers.items():
        for name, w in score_pool(scorer, data, idx, 13, CPU).items():
            np.testing.assert_allclose(got[f"{key}/{name}"], w, rtol=0, atol=1e-5, err_msg=f"{key}/{name}")
    assert got["entropy/entropy"].shape == (idx.size,) and np.ptp(got["entropy/entropy"]) > 0


class RayDataBackend:
    """LocalBackend for training, Ray Data for scoring (records every score call for comparison)."""

    def __init__(self, local: LocalBackend) -> None:
        self.local, self.data_ref, self.calls = local, ray.put(local.data), []

    def train_vae(self, job, on_progress=None):
        return self.local.train_vae(job, on_progress)

    def score(self, scorer, indices, batch_size):
        out = score_with_ray_data(
            scorer, self.data_ref, indices, batch_size, concurrency=2, pool_size=len(self.local.data.train)
        )
        self.calls.append(out)
        return out


class RecordingLocal(RayDataBackend):
    def __init__(self, local: LocalBackend) -> None:
        self.local, self.calls = local, []

    def score(self, scorer, indices, batch_size):
        out = self.local.score(scorer, indices, batch_size)
        self.calls.append(out)
        return out


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_strategy_selects_the_same_through_ray_data(ray_cluster, stage, name):
    data, pool, cand, spec, local, tasks = stage
    strategy = build_strategy(name)
    results = {}
    for label, backend in (("local", RecordingLocal(local)), ("ray", RayDataBackend(local))):
        ctx = QueryContext(
            CFG,
            data,
            backend,
            spec,
            tasks[strategy.ranker_loss],
            pool.labeled_indices(),
            cand,
            budget=16,
            stage=0,
            seed=5,
        )
        results[label] = (strategy.query(ctx), backend.calls)
    (loc, loc_calls), (ray_res, ray_calls) = results["local"], results["ray"]
    assert ray_res.selected.tolist() == loc.selected.tolist() and loc.selected.size == 16
    # tavaal: r̂, then the discriminator on the candidates and on the labeled set (the game's health); vaal: the last two
    assert len(ray_calls) == len(loc_calls) == {"random": 0, "coreset": 2, "tavaal": 3, "vaal": 2}.get(name, 1)
    for r, lo in zip(ray_calls, loc_calls):
        assert set(r) == set(lo)
        for key in r:
            np.testing.assert_allclose(r[key], lo[key], rtol=0, atol=1e-5, err_msg=key)
    if loc.scores is not None:
        np.testing.assert_allclose(ray_res.scores, loc.scores, rtol=0, atol=1e-5)


def _rss() -> int:
    """This process's resident set size in bytes (Linux ``/proc``; shared-memory pages it touched count)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples this process's resident set size every 5 ms; ``peak - base`` is the growth while active."""

    def __enter__(self):
        self.stop = threading.Event()
        self.base = self.peak = _rss()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.base) / 2**20


class MeanPixel:
    """A trivial scorer (each image's mean pixel): the million-image test is about streaming, not the CNN."""

    def setup(self, device: torch.device) -> None:
        pass

    def __call__(self, x: torch.Tensor, idx: np.ndarray) -> dict[str, torch.Tensor]:
        return {"mean": x.float().mean(dim=(1, 2, 3))}


def test_million_image_pool_streams_without_holding_images(ray_cluster):
    data = build_dataset(DataConfig(name="synthetic_large"), seed=0)
    n = len(data.train)
    assert n == 1_000_000 and data.input_shape == (1, 16, 16)
    scorer = MeanPixel()
    ref = ray.put(data)  # a label array and a seed: the images are drawn in the actors
    indices = np.arange(n)
    with PeakRSS() as rss:
        out = score_with_ray_data(scorer, ref, indices, batch_size=8192, concurrency=2, pool_size=n)
    scores = out["mean"]
    assert scores.shape == (n,) and np.isfinite(scores).all()
    images_mb = n * 16 * 16 / 2**20  # 244 MiB of uint8 pixels, never materialized in this process
    assert rss.growth_mb < 150, f"driver RSS grew {rss.growth_mb:.0f} MiB while scoring ({images_mb:.0f} MiB of images)"
    spots = np.random.default_rng(0).choice(n, 300, replace=False)
    spots = np.concatenate([spots, [0, 8191, 8192, n - 1]])  # batch edges and the last index
    want = score_pool(scorer, data, spots, 64, CPU)["mean"]
    np.testing.assert_allclose(scores[spots], want, rtol=0, atol=1e-5)  # in index order, the local numbers
    assert np.ptp(scores[spots]) > 0  # real images, not a constant


def test_bad_or_empty_indices(ray_cluster, stage):
    data, pool, cand, spec, local, tasks = stage
    scorer = TaskScorer(spec, tasks[None], "entropy")
    n = len(data.train)
    assert score_with_ray_data(scorer, data, np.array([], dtype=np.int64), 37) == {}
    assert score_with_ray_data(scorer, data, [], 37) == score_pool(scorer, data, np.array([], np.int64), 37, CPU) == {}
    with pytest.raises(ValueError, match="1-D integer array"):
        score_with_ray_data(scorer, data, np.array([[1, 2]]), 37)
    with pytest.raises(ValueError, match="1-D integer array"):
        score_with_ray_data(scorer, data, np.array([1.0, 2.0]), 37)
    with pytest.raises(ValueError, match=">= 0"):
        score_with_ray_data(scorer, data, np.array([3, -1]), 37)
    with pytest.raises(IndexError, match=f"pool index {n} is out of range: the train split has {n} samples"):
        score_with_ray_data(scorer, data, np.array([0, n]), 37)
    with pytest.raises(ValueError, match="concurrency must be >= 1"):
        score_with_ray_data(scorer, data, np.array([0]), 37, concurrency=0)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        score_with_ray_data(scorer, data, np.array([0]), 0)
    with pytest.raises(ValueError, match="compute must be one of auto, tasks, actors, got 'threads'"):
        score_with_ray_data(scorer, data, np.array([0]), 37, compute="threads")
    # with only an object ref the driver cannot see the pool size: the actor rejects the index, and the run
    # fails with Ray's error carrying the same message (nothing is returned half-filled)
    with pytest.raises(Exception, match=f"pool index {n + 5} is out of range"):
        score_with_ray_data(scorer, ray.put(data), np.array([0, 1, n + 5]), 37)


@pytest.mark.parametrize(
    "n, batch, workers, per_worker, blocks",
    [
        (59_000, 512, 1, 1, 2),  # 116 batches: 2 blocks of at most 64
        (59_000, 512, 2, 1, 2),  # tasks: one block per worker
        (59_000, 512, 2, 4, 8),  # actors: 4 each, queued at the actor
        (1_000_000, 512, 2, 1, 32),  # 1,954 batches: a multiple of 2 blocks of at most 64 batches
        (100, 256, 2, 4, 1),  # fewer batches than workers: one block
    ],
)
def test_index_blocks_are_whole_batches_in_equal_shares(n, batch, workers, per_worker, blocks):
    indices = np.random.default_rng(0).permutation(2 * n)[:n]
    tables = _index_blocks(indices, batch, workers, per_worker)
    assert len(tables) == blocks
    rows = [t.num_rows for t in tables]
    assert all(r % batch == 0 and r <= _MAX_BATCHES_PER_BLOCK * batch for r in rows[:-1])  # whole batches
    assert np.array_equal(np.concatenate([t["position"].to_numpy() for t in tables]), np.arange(n))
    assert np.array_equal(np.concatenate([t["index"].to_numpy() for t in tables]), indices)
