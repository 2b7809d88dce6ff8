"""Does our TA-VAAL query pick what the official code picks, on identical inputs?

    git clone https://github.com/cubeyoung/TA-VAAL /path/to/TA-VAAL         # the official code: get it yourself
    python -m benchmarks.official_equivalence --official /path/to/TA-VAAL    # 5 seeds each, both vae.normalize
    python -m benchmarks.official_equivalence --official DIR --seeds 3 --ours-normalize false
    python -m benchmarks.official_equivalence --config configs/smoke.yaml --protocol none --iterations 4  # ours only

The official TA-VAAL code (github.com/cubeyoung/TA-VAAL) is not part of this repository: clone it and pass its
folder as ``--official``. It is imported from there (``sys.path``) and never edited on disk; what it needs to run
here is adapted in memory only, while it runs, and listed in the output header:

  device    it calls ``.cuda()`` and ``torch.cuda.device(0)`` unconditionally: on a machine without CUDA both are
            no-ops for the duration of its call (tensors and models stay on the CPU)
  widths    its Fashion-MNIST VAE, ``VAE(28, 1, 3)``, is 128..1024 channels wide; ``--base-channels W`` (default
            16, our CPU preset's ``vae.base_channels``) builds it W..8W wide by scaling the channel counts its
            constructor asks torch.nn for (its layers, init and forward are its own); ours gets the same width.
            ``--base-channels 128`` runs the published width unpatched
  sizes     its config constants: BATCH (the VAE batch, the same as ours: ``vae.batch_size``, 64 in our CPU preset,
            128 in the official config), SUBSET (M, the candidates) and ADDENDUM (|L|), so that its iteration
            formula int((|L| + M) * 100 / batch) counts this stage's sets; ``--iterations N`` sets both sides to N
  r̂         its query runs the frozen task model and ranker on every batch; here it gets our stage's task model
            and ranker as a lookup of the r̂ our code computes once for L and M (the same numbers for both sides)

The inputs are one stage of ours: the preset (``--config``, default the Fashion-MNIST CPU preset) with curves.py's
CPU protocol and ``data.imbalance_ratio=10`` (``--protocol cpu``; the even classes are the minority), fp32 and NCHW
on both sides, the preset's initial labels (100) and the stage's candidates (1,000), a task model and ranker trained
once by our code. Then, for each of ``--seeds`` seeds:

  official  ``selection_methods.query_samples(..., 'TA-VAAL', ...)``: its VAE and discriminator, ``train_vaal`` (one
            VAE step, KL mean, raw r̂ into the discriminator, sigmoid into the decoder, U(0, 1) noise in place of r̂
            at iteration 0, its loaders in fixed order: the candidates and the labeled set in a seeded random order
            per seed, as its main.py shuffles per trial) and its scoring (the VAE left in train mode); the picks are
            the last ``budget`` of its ranking, as its main.py takes them. Seeded with Python's, NumPy's and torch's
            global generators
  ours      the ``tavaal`` strategy's query as an experiment runs it (r̂ by ``task_scorer``, ``VAETraining`` via
            the core ``train_vae``, ``DiscriminatorScorer``), with ``vae.normalize`` true (normalized images), false
            (raw [0, 1] pixels, as the official Fashion-MNIST path) or both (``--ours-normalize``); QueryContext seed k

It prints the mean Jaccard overlap of the picks within the official seeds, within ours and across (official seed i
vs ours seed j), each side's share of picks from the minority classes, and the discriminator loss per tenth of the
iterations (mean over seeds; chance 2 ln 2 = 1.386). **Equal** means: across >= within-official - 0.05, and our
mean minority share inside the official seeds' range. When the official code's own seed-to-seed overlap is within
0.05 of chance (two random 100-of-1,000 picks overlap by Jaccard ~0.053), its picks at this budget are noise, and
it says so. Writes ``<out>/<name>.md`` (command, git, CPU, load, what was adapted, the tables, the verdict) and
``<out>/<name>.json`` (every seed's picks and loss curve). Without ``--official`` only our half runs (tests).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import datetime
import importlib
import io
import math
import multiprocessing
import os
import random
import sys
import time
import types
import warnings
from itertools import combinations, product
from pathlib import Path

if not __package__:  # run by path (python benchmarks/<script>.py, as older records say): as the module
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.official_equivalence", *sys.argv[1:]])

import numpy as np

import tavaal  # noqa: F401  (sets OMP passive waiting before torch loads)
from benchmarks.common import ROOT, command_line, results_header, write_json
from benchmarks.curves import CPU_PROTOCOL  # the protocol the curves are measured on
from tavaal.config import load_config
from tavaal.core.health import CHANCE_DISC_LOSS
from tavaal.data.imbalance import parse_minority
from tavaal.errors import TavaalError

CLONE = "git clone https://github.com/cubeyoung/TA-VAAL"
PROTOCOLS = {"cpu": [*CPU_PROTOCOL, "data.imbalance_ratio=10", "vae.iterations=null"], "none": []}
# both sides in fp32 and NCHW: the official code has neither autocast nor channels_last
SAME_PRECISION = ["train.precision=fp32", "train.channels_last=false"]
MARGIN = 0.05  # how far below the official code's own seed-to-seed overlap "across" may fall and still be equal
OFFICIAL_MODULES = ("config", "models", "models.query_models", "data", "data.sampler", "kcenterGreedy")
OFFICIAL_MODULES += ("selection_methods",)
SIDES = {"official": None, "ours, normalized": True, "ours, raw pixels": False}  # side -> vae.normalize


# ---------------------------------------------------------------- the comparison


def jaccard(a, b) -> float:
    a, b = set(map(int, a)), set(map(int, b))
    return len(a & b) / len(a | b) if a or b else 1.0


def mean_within(picks: list) -> float:
    """Mean Jaccard over the pairs of seeds of one side (nan with fewer than two)."""
    pairs = [jaccard(a, b) for a, b in combinations(picks, 2)]
    return float(np.mean(pairs)) if pairs else float("nan")


def mean_across(picks_a: list, picks_b: list) -> float:
    """Mean Jaccard over every (seed i of one side, seed j of the other)."""
    return float(np.mean([jaccard(a, b) for a, b in product(picks_a, picks_b)]))


def chance_jaccard(n: int, k: int) -> float:
    """Expected Jaccard overlap of two independent uniform k-of-n picks (the overlap is hypergeometric)."""
    total = math.comb(n, k)
    return sum(
        math.comb(k, x) * math.comb(n - k, k - x) / total * x / (2 * k - x) for x in range(max(0, 2 * k - n), k + 1)
    )


def minority_share(picks, targets: np.ndarray, minority: list[int]) -> float:
    return float(np.isin(targets[np.asarray(picks, dtype=np.int64)], minority).mean())


def verdict(within_official: float, across: float, our_shares: list[float], official_shares: list[float]) -> dict:
    """Equal: across >= within-official - MARGIN and our mean minority share within the official seeds' range."""
    share = float(np.mean(our_shares))
    lo, hi = min(official_shares), max(official_shares)
    overlap_ok = across >= within_official - MARGIN
    share_ok = lo <= share <= hi
    return {
        "equal": bool(overlap_ok and share_ok),
        "overlap_ok": bool(overlap_ok),
        "share_ok": bool(share_ok),
        "share": share,
        "official_range": [lo, hi],
    }


def tenths(losses: list[float]) -> list[float]:
    """Mean of each tenth of a loss curve (fewer parts for fewer than 10 iterations)."""
    return [float(np.mean(p)) for p in np.array_split(np.asarray(losses, dtype=np.float64), min(10, len(losses)))]


# ---------------------------------------------------------------- the official code, adapted in memory


def import_official(folder: str | Path) -> types.ModuleType:
    """The official ``selection_methods`` module, imported from the checkout ``folder``. Its top-level names
    (``config``, ``models``, ``data``, ...) are common words: any module of those names already imported is set
    aside while it imports and put back after, and the official ones are taken out of ``sys.modules`` again."""
    d = Path(folder).resolve()
    need = ("selection_methods.py", "config.py", "models/query_models.py", "data/sampler.py", "kcenterGreedy.py")
    missing = [p for p in need if not (d / p).is_file()]
    if missing:
        raise FileNotFoundError(
            f"--official {folder}: not a checkout of the official TA-VAAL code (no {', '.join(missing)}); get it "
            f"with `{CLONE}`"
        )
    saved = {n: sys.modules.pop(n) for n in OFFICIAL_MODULES if n in sys.modules}
    sys.path.insert(0, str(d))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module("selection_methods")
    finally:
        sys.path.remove(str(d))
        for n in OFFICIAL_MODULES:
            sys.modules.pop(n, None)
        sys.modules.update(saved)


class _NoDevice:
    """Stands in for ``torch.cuda.device(i)`` on a machine without CUDA."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return False


@contextlib.contextmanager
def on_cpu():
    """While the official code runs: ``.cuda()`` of tensors and modules and ``torch.cuda.device`` do nothing (it
    calls them unconditionally; without CUDA each raises). Put back afterwards."""
    import torch

    saved = (torch.Tensor.cuda, torch.nn.Module.cuda, torch.cuda.device)
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    torch.nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    torch.cuda.device = _NoDevice  # type: ignore[misc,assignment]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pin_memory without an accelerator; its deprecated kaiming_normal
            yield
    finally:
        torch.Tensor.cuda, torch.nn.Module.cuda, torch.cuda.device = saved  # type: ignore[method-assign,misc]


def _nn_with(**layers) -> types.SimpleNamespace:
    """A stand-in for the ``torch.nn`` module with some of its classes replaced."""
    import torch.nn as nn

    return types.SimpleNamespace(**{**{k: getattr(nn, k) for k in dir(nn) if not k.startswith("__")}, **layers})


def narrow_vae(vae_class: type, base: int):
    """A factory for the official ``VAE`` that builds it ``base`` .. 8 ``base`` channels wide instead of 128 .. 1024.

    While its constructor runs, the ``nn`` it looks up in its module's scope builds its layers with every hard-coded
    size that is a multiple of 128 (channels 128..1024, the flattened 1024*2*2 and 1024*4*4) scaled by base/128 and
    the rest (image channels, latent size, kernels) as asked; its own init then runs on the narrow layers, unchanged.
    Its ``View`` reshapes get the same sizes scaled once it is built."""
    import torch.nn as nn

    scope = vae_class.__init__.__globals__  # its module's namespace (the module itself is not kept importable)

    def s(c):
        return c * base // 128 if isinstance(c, int) and c >= 128 and c % 128 == 0 else c

    class Conv2d(nn.Conv2d):
        def __init__(self, c_in, c_out, *a, **k):
            super().__init__(s(c_in), s(c_out), *a, **k)

    class ConvTranspose2d(nn.ConvTranspose2d):
        def __init__(self, c_in, c_out, *a, **k):
            super().__init__(s(c_in), s(c_out), *a, **k)

    class BatchNorm2d(nn.BatchNorm2d):
        def __init__(self, n, *a, **k):
            super().__init__(s(n), *a, **k)

    class Linear(nn.Linear):
        def __init__(self, n_in, n_out, *a, **k):
            super().__init__(s(n_in), s(n_out), *a, **k)

    narrow_nn = _nn_with(Conv2d=Conv2d, ConvTranspose2d=ConvTranspose2d, BatchNorm2d=BatchNorm2d, Linear=Linear)

    def build(*args, **kwargs):
        saved = scope["nn"]
        scope["nn"] = narrow_nn
        try:
            vae = vae_class(*args, **kwargs)
        finally:
            scope["nn"] = saved
        for m in vae.modules():  # its reshapes (View's size: 1024*2*2, then 1024 x 4 x 4) to the narrow sizes
            if isinstance(m, scope["View"]):
                m.size = tuple(s(c) for c in m.size)
        return vae

    return build


def _rhat_modules(table: dict[bytes, float]):
    """The official query's ``_, _, features = backbone(x)`` and ``ranker(features)``: the images pass through
    the 'backbone' and the 'ranker' looks up each image's r̂ (``table``: raw float32 image bytes -> r̂)."""
    import torch

    class Backbone(torch.nn.Module):
        def forward(self, x):
            return None, None, x

    class Ranker(torch.nn.Module):
        def forward(self, x):
            rows = x.detach().cpu().float().contiguous().numpy()
            return torch.tensor([table[r.tobytes()] for r in rows], dtype=torch.float32, device=x.device).view(-1, 1)

    return Backbone(), Ranker()


class PoolImages:
    """The pool as the official Fashion-MNIST ``MyDataset`` gives it: ``(ToTensor image in [0, 1], label,
    index)``, by absolute index."""

    def __init__(self, data) -> None:
        self.x, self.y = data.train.x, data.train.y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i].float().div(255), int(self.y[i]), i


def raw_image(data, i: int):
    return data.train.x[i].float().div(255)


def run_official(
    sm, data, labeled, candidates, rhat, seed: int, batch: int, iterations: int, base: int, budget: int
) -> dict:
    """One official TA-VAAL query (``query_samples``, its training and scoring) on our stage; returns the picks
    (the last ``budget`` of its ranking, the lowest P(labeled): main.py takes the last ADDENDUM, its budget), its
    discriminator loss per iteration and the seconds it took."""
    import torch

    n_l, n_m = len(labeled), len(candidates)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    order = np.random.default_rng(seed)  # main.py shuffles the labeled set and the candidates per trial
    labeled_set = [int(i) for i in order.permutation(labeled)]
    subset = [int(i) for i in order.permutation(candidates)]
    table = {raw_image(data, i).numpy().tobytes(): float(rhat[i]) for i in [*labeled_set, *subset]}
    backbone, ranker = _rhat_modules(table)
    log: list[tuple[float, bool]] = []  # every BCE the official train_vaal computes: (value, target all zeros)

    class RecordingBCE(torch.nn.BCELoss):
        def forward(self, x, target):
            out = super().forward(x, target)
            log.append((float(out.detach()), bool((target == 0).all())))
            return out

    consts = {"BATCH": batch, "SUBSET": n_m, "ADDENDUM": n_l, "EPOCHV": sm.EPOCHV}
    if int((n_l + n_m) * sm.EPOCHV / batch) != iterations:  # --iterations: its formula made to give exactly N
        consts["EPOCHV"] = (iterations + 0.5) * batch / (n_l + n_m)
    saved = {k: getattr(sm, k) for k in (*consts, "nn", "VAE")}
    for k, v in consts.items():
        setattr(sm, k, v)
    sm.nn = _nn_with(BCELoss=RecordingBCE)
    if base != 128:
        sm.VAE = narrow_vae(sm.VAE, base)
    t = time.perf_counter()
    try:
        with on_cpu(), contextlib.redirect_stdout(io.StringIO()):  # it prints the losses every 100 iterations
            arg = sm.query_samples(
                {"backbone": backbone, "module": ranker},
                "TA-VAAL",
                PoolImages(data),
                subset,
                labeled_set,
                0,  # cycle 0: its formula then counts ADDENDUM * 1 + SUBSET = |L| + M
                types.SimpleNamespace(dataset="fashionmnist"),
            )
    finally:
        for k, v in saved.items():
            setattr(sm, k, v)
    seconds = time.perf_counter() - t
    # its discriminator step: BCE(D(labeled), 1) then BCE(D(unlabeled), 0), the only BCE with zero targets
    disc = [log[k - 1][0] + log[k][0] for k in range(1, len(log)) if log[k][1]]
    if len(disc) != iterations:
        raise RuntimeError(f"the official code ran {len(disc)} discriminator steps, expected {iterations}")
    picks = np.asarray(subset, dtype=np.int64)[np.asarray(arg)][-budget:]
    return {"picks": picks.tolist(), "disc_losses": disc, "seconds": seconds}


def official_vae_shapes(sm, base: int) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of the official Fashion-MNIST VAE as it runs here (narrowed to ``base``)."""
    build = narrow_vae(sm.VAE, base) if base != 128 else sm.VAE
    with on_cpu():
        vae = build(28, 1, 3)
    return {k: tuple(v.shape) for k, v in vae.state_dict().items()}


# ---------------------------------------------------------------- ours


def run_ours(cfg, data, spec, task, labeled, candidates, seed: int) -> dict:
    """One query of the ``tavaal`` strategy as an experiment makes it (local backend), recording the
    discriminator loss of every iteration (the core ``train_vae`` reports each one to its ``on_progress``)."""
    import torch

    from tavaal.backends import LocalBackend
    from tavaal.core.vae_training import train_vae
    from tavaal.strategies import QueryContext, build_strategy

    losses: list[float] = []

    class Recording(LocalBackend):
        def train_vae(self, job, on_progress=None):
            return train_vae(job, self._data(), self.device, lambda r: losses.append(r["disc_loss"]), log_every=1)

    backend = Recording()
    backend.prepare(data, torch.device("cpu"))
    budget = min(cfg.al.budget, len(candidates))
    t = time.perf_counter()
    ctx = QueryContext(cfg, data, backend, spec, task, labeled, candidates, budget, 0, seed)
    result = build_strategy("tavaal").query(ctx)
    return {
        "picks": [int(i) for i in result.selected],
        "disc_losses": losses,
        "seconds": time.perf_counter() - t,
        "disc_auroc": result.health.get("disc_auroc"),
    }


# ---------------------------------------------------------------- the stage and the jobs

_WORKER: dict = {}  # per process: the stage's data, models and (official) module, built once


def train_stage(cfg) -> dict:
    """Our stage 0: the pool's initial labels, the task model and ranker trained on them (``run_stage``, with no
    query), and the stage's candidates, drawn as an experiment draws them."""
    import dataclasses

    import torch

    from tavaal.backends import LocalBackend
    from tavaal.core.pool import draw_candidates
    from tavaal.core.seeding import numpy_rng
    from tavaal.core.training import ModelSpec
    from tavaal.data import build_dataset
    from tavaal.experiment import run_stage
    from tavaal.oracle import build_oracle
    from tavaal.strategies import build_strategy

    data = build_dataset(cfg.data, cfg.seed)
    data, pool = build_oracle(cfg, data).start(data)
    spec = ModelSpec(cfg.model.name, data.input_shape, data.num_classes, cfg.model.ranker_hidden)
    backend, device = LocalBackend(), torch.device("cpu")
    backend.prepare(data, device)
    one = dataclasses.replace(cfg, al=dataclasses.replace(cfg.al, stages=1))  # train and evaluate, no query
    record, pool, states = run_stage(one, 0, pool, data, spec, build_strategy("tavaal"), backend, device, print)
    candidates = draw_candidates(pool, cfg.al.subset_size, numpy_rng(cfg.seed, "candidates", 0))
    return {
        "labeled": pool.labeled_indices(),
        "candidates": candidates,
        "model_state": states["model"],
        "ranker_state": states["ranker"],
        "accuracy": record.accuracy,
        "train_accuracy": record.train_accuracy,
        "pool": len(data.train),
        "targets": data.train_targets,
        "num_classes": data.num_classes,
        "input_shape": tuple(data.input_shape),
    }


def _worker_state(payload: dict) -> dict:
    """The stage rebuilt in this process (data from the config, the trained weights from ``payload``) and r̂ of L
    and M computed here as the tavaal strategy computes it (``task_scorer``), once per process."""
    key = payload["key"]
    if _WORKER.get("key") == key:
        return _WORKER
    import torch

    from tavaal.backends import LocalBackend
    from tavaal.core.precision import score_batch_size
    from tavaal.core.training import ModelSpec, TaskResult
    from tavaal.data import build_dataset
    from tavaal.strategies.scorers import TaskScorer

    torch.set_num_threads(payload["threads"])
    cfg = load_config(ROOT / payload["config"], payload["overrides"])
    data = build_dataset(cfg.data, cfg.seed)
    spec = ModelSpec(cfg.model.name, data.input_shape, data.num_classes, cfg.model.ranker_hidden)
    task = TaskResult(payload["model_state"], payload["ranker_state"])
    both = np.union1d(payload["labeled"], payload["candidates"])
    backend = LocalBackend()
    backend.prepare(data, torch.device("cpu"))
    scorer = TaskScorer(spec, task, "rhat", cfg.train.precision, cfg.train.channels_last)
    out = backend.score(scorer, both, score_batch_size(cfg.al.score_batch_size, torch.device("cpu")))
    rhat = np.full(len(data.train), np.nan, dtype=np.float32)
    rhat[both] = out["rhat"]
    _WORKER.clear()
    _WORKER.update(key=key, cfg=cfg, data=data, spec=spec, task=task, rhat=rhat)
    if payload["official"]:
        _WORKER["sm"] = import_official(payload["official"])
    return _WORKER


def run_job(payload: dict, side: str, seed: int) -> dict:
    w = _worker_state(payload)
    labeled, candidates = payload["labeled"], payload["candidates"]
    if SIDES[side] is None:
        out = run_official(
            w["sm"],
            w["data"],
            labeled,
            candidates,
            w["rhat"],
            seed,
            w["cfg"].vae.batch_size,
            payload["iterations"],
            payload["base"],
            payload["budget"],
        )
    else:
        cfg = load_config(ROOT / payload["config"], [*payload["overrides"], f"vae.normalize={SIDES[side]}"])
        out = run_ours(cfg, w["data"], w["spec"], w["task"], labeled, candidates, seed)
    return {"side": side, "seed": seed, **out}


def run_jobs(payload: dict, todo: list[tuple[str, int]], jobs: int) -> list[dict]:
    """Every (side, seed) in ``todo``: in this process for 1 job, else in ``jobs`` spawned worker processes."""
    results, t0 = [], time.perf_counter()

    def done(r: dict) -> None:
        results.append(r)
        per_it = r["seconds"] / max(1, len(r["disc_losses"]))
        print(
            f"[{len(results)}/{len(todo)}] {r['side']} seed {r['seed']}: {r['seconds']:.0f} s "
            f"({per_it:.3f} s/iteration), disc loss last tenth {tenths(r['disc_losses'])[-1]:.3f}; "
            f"elapsed {(time.perf_counter() - t0) / 60:.1f} min",
            flush=True,
        )

    if jobs == 1:
        for side, seed in todo:
            done(run_job(payload, side, seed))
        return results
    with cf.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run_job, payload, side, seed) for side, seed in todo]
        try:
            for fut in cf.as_completed(futures):
                done(fut.result())
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return results


# ---------------------------------------------------------------- report


def summarize_runs(results: list[dict], targets: np.ndarray, minority: list[int], n: int, k: int) -> dict:
    """Per side: its picks' within-overlap, minority shares and mean loss curve; across and the verdict per side of
    ours against the official code."""
    by_side: dict[str, list[dict]] = {}
    for r in sorted(results, key=lambda r: r["seed"]):
        by_side.setdefault(r["side"], []).append(r)
    sides = {}
    for side, rs in by_side.items():
        picks = [r["picks"] for r in rs]
        curves = np.array([tenths(r["disc_losses"]) for r in rs])
        sides[side] = {
            "seeds": [r["seed"] for r in rs],
            "within": mean_within(picks),
            "shares": [minority_share(p, targets, minority) for p in picks],
            "tenths": curves.mean(0).tolist(),
            "seconds_per_iteration": float(np.mean([r["seconds"] / max(1, len(r["disc_losses"])) for r in rs])),
            "iterations": len(rs[0]["disc_losses"]),
        }
    official = by_side.get("official")
    for side, rs in by_side.items():
        if side == "official" or official is None:
            continue
        across = mean_across([r["picks"] for r in official], [r["picks"] for r in rs])
        sides[side]["across"] = across
        sides[side]["verdict"] = verdict(
            sides["official"]["within"], across, sides[side]["shares"], sides["official"]["shares"]
        )
    chance = chance_jaccard(n, k)
    noise = official is not None and sides["official"]["within"] <= chance + MARGIN
    return {"sides": sides, "chance": chance, "noise": bool(noise)}


def table(summary: dict) -> list[str]:
    sides = summary["sides"]
    names = list(sides)
    lines = [
        "| | " + " | ".join(names) + " |",
        "| --- |" + " --- |" * len(names),
        "| seeds | " + " | ".join(str(len(sides[s]["seeds"])) for s in names) + " |",
        "| Jaccard within (seed to seed) | " + " | ".join(f"{sides[s]['within']:.3f}" for s in names) + " |",
        "| Jaccard across (official seed i vs this side's seed j) | "
        + " | ".join(f"{sides[s]['across']:.3f}" if "across" in sides[s] else "—" for s in names)
        + " |",
        "| minority share of the picks: mean [min, max] | "
        + " | ".join(
            f"{np.mean(sides[s]['shares']):.3f} [{min(sides[s]['shares']):.2f}, {max(sides[s]['shares']):.2f}]"
            for s in names
        )
        + " |",
        "| discriminator loss, last tenth of the iterations | "
        + " | ".join(f"{sides[s]['tenths'][-1]:.3f}" for s in names)
        + " |",
        "| seconds per iteration (training + its share of scoring) | "
        + " | ".join(f"{sides[s]['seconds_per_iteration']:.3f}" for s in names)
        + " |",
        "| Equal to the official code | "
        + " | ".join(_verdict_cell(sides[s]["verdict"]) if "verdict" in sides[s] else "—" for s in names)
        + " |",
        "",
        f"Discriminator loss per tenth of the iterations, mean over seeds (chance {CHANCE_DISC_LOSS:.3f}):",
        "",
        "| side | " + " | ".join(str(i + 1) for i in range(len(sides[names[0]]["tenths"]))) + " |",
        "| --- |" + " --- |" * len(sides[names[0]]["tenths"]),
        *(f"| {s} | " + " | ".join(f"{v:.3f}" for v in sides[s]["tenths"]) + " |" for s in names),
        "",
        "Minority share of each seed's picks:",
        "",
        *(f"- {s}: " + ", ".join(f"{v:.2f}" for v in sides[s]["shares"]) for s in names),
    ]
    return lines


def _verdict_cell(v: dict) -> str:
    why = []
    if not v["overlap_ok"]:
        why.append(f"across < within-official − {MARGIN}")
    if not v["share_ok"]:
        why.append("minority share outside the official range")
    return "**yes**" if v["equal"] else "no (" + "; ".join(why) + ")"


def verdict_words(summary: dict) -> list[str]:
    sides, chance = summary["sides"], summary["chance"]
    if "official" not in sides:
        return ["The official code was not run (no --official): our half only, no verdict."]
    off = sides["official"]
    words = []
    if summary["noise"]:
        words.append(
            f"The official code's own picks barely repeat from seed to seed: Jaccard {off['within']:.3f}, against "
            f"{chance:.3f} for two random picks of this size. At this budget its picks are noise, so overlap cannot "
            "tell an equivalent implementation from another; the minority share and the loss curves can."
        )
    for side, s in sides.items():
        if side == "official":
            continue
        v = s["verdict"]
        lo, hi = v["official_range"]
        words.append(
            f"{side}: {'equal' if v['equal'] else 'not equal'} to the official code. Its picks overlap the official "
            f"ones by {s['across']:.3f} (the official seeds overlap each other by {off['within']:.3f}, ours by "
            f"{s['within']:.3f}); {v['share']:.1%} of its picks are from the minority classes, the official seeds "
            f"{lo:.1%} to {hi:.1%}."
        )
    return words


def header_lines(args, argv, cfg, stage: dict, iterations: int, extra: dict) -> list[str]:
    minority = parse_minority(cfg.data.minority_classes, stage["num_classes"])
    v = cfg.vae
    adapted = [
        f"both sides: VAE {args.base_channels}..{8 * args.base_channels} channels"
        + (" (published width)" if args.base_channels == 128 else " (published 128..1024; 2 shared cores)")
        + f", latent {v.latent_dim}, discriminator hidden {v.disc_hidden}, batch {v.batch_size} "
        + (
            "(the official config's BATCH)"
            if v.batch_size == 128
            else "(our CPU protocol's; the official BATCH is 128)"
        )
        + f", {iterations} iterations ("
        + ("the official formula int((|L| + M) * 100 / batch)" if args.iterations is None else "--iterations")
        + "), fp32, NCHW, CPU",
        "official code: `.cuda()` and `torch.cuda.device` made no-ops while it runs; its VAE's channel counts "
        "scaled in memory when narrowed (its parameter shapes then equal ours: "
        + str(extra.get("shapes_equal", "not checked"))
        + "); BATCH, SUBSET, ADDENDUM (and EPOCHV for --iterations) set to this stage; its backbone + ranker "
        "replaced by a lookup of our r̂; stdout of its loss prints discarded",
    ]
    if args.official:
        adapted.append(f"official checkout: `{args.official}` ({extra.get('official_rev', 'revision unknown')})")
    kept = (
        "each side as written: the official loaders keep one order for the whole training (SubsetSequentialSampler; "
        "the order is drawn per seed), ours reshuffle every pass; the official code feeds U(0, 1) noise in place of "
        f"r̂ at iteration 0, ours {'too' if v.first_iter_noise else 'does not'} (vae.first_iter_noise "
        f"{str(v.first_iter_noise).lower()}); its discriminator ends in a sigmoid + BCE, ours in BCE on logits"
    )
    details = [
        f"{args.jobs} jobs x {extra['threads']} threads; load average (1 min) before: {extra['load'][0]:.2f}",
        f"preset `{args.config}` with {', '.join(extra['overrides']) or 'no overrides'}",
        f"stage: pool of {stage['pool']:,} (minority classes {minority}), |L| = {len(stage['labeled'])} labels, "
        f"M = {len(stage['candidates']):,} candidates, budget {min(cfg.al.budget, len(stage['candidates']))}; "
        f"our task model + ranker trained once: test accuracy {stage['accuracy']:.3f}, on its labels "
        f"{stage['train_accuracy']:.3f}; r̂ of L and M computed by our code, the same numbers for both sides",
        *(f"adapted: {a}" for a in adapted),
        f"not adapted, {kept}",
        f"Equal: across >= within-official − {MARGIN} and our mean minority share inside the official seeds' "
        "range; chance Jaccard of two random picks "
        f"{chance_jaccard(len(stage['candidates']), min(cfg.al.budget, len(stage['candidates']))):.3f}",
    ]
    title = "Official TA-VAAL code vs ours on identical inputs"
    return results_header(title, command_line("official_equivalence", argv), details)


def _git_rev_of(folder: str) -> str:
    import subprocess

    try:
        out = subprocess.run(["git", "-C", folder, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        return f"git {out.stdout.strip()}" if out.returncode == 0 and out.stdout.strip() else "not a git work tree"
    except OSError:
        return "revision unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--official",
        metavar="DIR",
        help=f"a checkout of the official TA-VAAL code (`{CLONE}`); without it only our half runs",
    )
    ap.add_argument("--config", default="configs/fashionmnist_tavaal_cpu.yaml", help="preset (default: %(default)s)")
    ap.add_argument(
        "--protocol",
        choices=list(PROTOCOLS),
        default="cpu",
        help="overrides before --set: cpu (curves.py's CPU protocol, imbalanced x10, the official iteration "
        "formula) or none",
    )
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per side (default: %(default)s)")
    ap.add_argument(
        "--ours-normalize",
        choices=["both", "true", "false"],
        default="both",
        help="vae.normalize of our runs: true (normalized images), false (raw [0, 1] pixels, as the official "
        "code), both (default)",
    )
    ap.add_argument(
        "--base-channels",
        type=int,
        default=16,
        help="VAE width of both sides: base..8 base channels (default: %(default)s, the CPU preset's; the "
        "published VAE is 128)",
    )
    ap.add_argument(
        "--batch",
        type=int,
        default=128,
        help="VAE batch of both sides (default: %(default)s, the official code's BATCH; our CPU protocol's is 64)",
    )
    ap.add_argument("--iterations", type=int, help="VAE iterations of both sides (default: the official formula)")
    ap.add_argument(
        "--jobs", type=int, default=min(2, os.cpu_count() or 1), help="runs in parallel, cores // jobs threads each"
    )
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, applied last")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    ap.add_argument("--name", default=f"official-equivalence-{datetime.date.today():%Y-%m-%d}")
    args = ap.parse_args(argv)
    if min(args.seeds, args.jobs, args.base_channels, args.batch, args.iterations or 1) < 1:
        print("error: --seeds, --jobs, --base-channels, --batch and --iterations must be >= 1", file=sys.stderr)
        return 2
    overrides = [
        *PROTOCOLS[args.protocol],
        *SAME_PRECISION,
        f"vae.base_channels={args.base_channels}",
        f"vae.batch_size={args.batch}",
        *([f"vae.iterations={args.iterations}"] if args.iterations else []),
        *args.set,
    ]
    try:
        cfg = load_config(ROOT / args.config, overrides)
        for flag in ("true", "false"):
            load_config(ROOT / args.config, [*overrides, f"vae.normalize={flag}"])
    except TavaalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    extra: dict = {
        "load": os.getloadavg(),
        "overrides": overrides,
        "threads": max(1, (os.cpu_count() or 1) // args.jobs),
    }
    if args.official:
        try:
            sm = import_official(args.official)
        except (FileNotFoundError, ImportError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        extra["official_rev"] = _git_rev_of(args.official)
    t0 = time.perf_counter()
    print("training our stage-0 task model and ranker ...", flush=True)
    stage = train_stage(cfg)
    if args.official and (stage["input_shape"] != (1, 28, 28) or cfg.vae.latent_dim != 28):
        print(
            "error: the official code's Fashion-MNIST VAE takes 1x28x28 images and a latent of 28; this run has "
            f"{stage['input_shape']} and vae.latent_dim={cfg.vae.latent_dim}",
            file=sys.stderr,
        )
        return 2
    from tavaal.core.vae_training import vae_iterations

    iterations = vae_iterations(cfg.vae, len(stage["labeled"]), len(stage["candidates"]))
    if args.official:
        from tavaal.core.vae_training import vae_input_shape
        from tavaal.models import VAE

        ours = VAE(vae_input_shape(stage["input_shape"], cfg.vae.input_size), 28, args.base_channels, 1)
        shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
        extra["shapes_equal"] = shapes == official_vae_shapes(sm, args.base_channels)
    normalize = {"both": ["true", "false"], "true": ["true"], "false": ["false"]}[args.ours_normalize]
    sides = (["official"] if args.official else []) + [s for s, n in SIDES.items() if str(n).lower() in normalize]
    payload = {
        "key": f"{os.getpid()}-{time.time()}",
        "config": args.config,
        "overrides": overrides,
        "threads": extra["threads"],
        "official": args.official,
        "iterations": iterations,
        "base": args.base_channels,
        "budget": min(cfg.al.budget, len(stage["candidates"])),
        **{k: stage[k] for k in ("labeled", "candidates", "model_state", "ranker_state")},
    }
    todo = [(side, seed) for seed in range(args.seeds) for side in sides]
    head = header_lines(args, argv, cfg, stage, iterations, extra)
    print("\n".join(head), flush=True)
    print(f"{len(todo)} runs of {iterations} VAE iterations, {args.jobs} at a time", flush=True)
    results = run_jobs(payload, todo, min(args.jobs, len(todo)))
    minority = parse_minority(cfg.data.minority_classes, stage["num_classes"])
    budget = min(cfg.al.budget, len(stage["candidates"]))
    summary = summarize_runs(results, stage["targets"], minority, len(stage["candidates"]), budget)
    minutes = (time.perf_counter() - t0) / 60
    lines = [
        *head,
        f"Finished in {minutes:.1f} min; load average (1 min) after: {os.getloadavg()[0]:.2f}.",
        "",
        *table(summary),
        "",
        "## Verdict",
        "",
        *verdict_words(summary),
    ]
    print("\n".join(lines[len(head) :]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    raw = {"summary": summary, "iterations": iterations, "runs": results, "labeled": stage["labeled"].tolist()}
    raw["candidates"] = stage["candidates"].tolist()
    write_json(out / f"{args.name}.json", raw)
    print(f"wrote {out / args.name}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
