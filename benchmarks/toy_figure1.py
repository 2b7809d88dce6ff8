"""The paper's Figure 1, reproduced: where random, learning loss (ranking), VAAL and TA-VAAL pick on the imbalanced
two-moons toy set, measured over seeds instead of shown for one.

    python -m benchmarks.toy_figure1                     # 20 seeds x 4 strategies, the 5th stage's picks
    python -m benchmarks.toy_figure1 --resume            # after a kill: finished experiments are skipped
    python -m benchmarks.toy_figure1 --report-only       # rebuild the markdown and the PNG from raw/*.json
    python -m benchmarks.toy_figure1 --smoke --seeds 1   # seconds (tests)

The paper (Kim et al., CVPR 2021, Fig. 1) shows learning loss, VAAL and TA-VAAL on an imbalanced 2-D toy example
"at the 5th stage": ten picks per stage, the oracle decision boundary as a dashed line; its claim is that learning
loss picks near the boundary but in a clump, VAAL spreads its picks but ignores the boundary, and TA-VAAL's picks
are both near the boundary and spread over the set. Here: ``toy2d`` (tavaal/data/toy2d.py: two noisy interleaved
moons, noise std 0.15, pool 2,000 points at 10:1, balanced test split of 1,000) with the ``mlp`` task model on
configs/smoke.yaml plus TOY below: 20 initial labels and 10 per stage, so stage 4 (0-based; the paper's 5th
stage, counting the first as 1) trains on 60 labels and picks the ten that are measured; al.stages=6 so stage 5
trains on them and gives the test accuracy after the picks. The candidates are the whole unlabeled pool
(al.subset_size=2000), so the picks are each strategy's own choice, not a random subset's. 100 task epochs (batch
32, lr 0.05, x 0.1 at epoch 80, ranker features detached after 60: the paper's 160 and 120 of 200): random's model
fits its labels at every stage. The VAE: an MLP of width 64, latent 8, 300 iterations of batch 32 per stage (the
official formula would give ~6,000; 300 keeps a seed of all four strategies near 40 s on one core), each strategy's
own VAE schedule. Every strategy of seed k starts from the same 20 labels.

Measures of the picks of stage ``--stage``, per experiment, then mean ± std over seeds and paired differences with
95% intervals (Student's t over seeds) against random, and TA-VAAL against each of the others:

  distance to the boundary   mean over the picks of the Euclidean distance to the Bayes decision boundary of the
                             pool: where 10 p0(x) = p1(x), p_c the density of class c (a point uniform in t on its
                             moon's centre curve, (cos t, sin t) or (1 - cos t, 0.5 - sin t), t in [0, pi], plus
                             isotropic Gaussian noise of std 0.15: toy2d's generating process), the 10:1 the pool's
                             prior. The densities are integrated numerically (300 points of t) on a grid of step 0.01
                             over the data's extent, and the boundary is the grid's sign changes of
                             log(10 p0) - log(p1), placed by linear interpolation along each grid edge. The distance
                             to the balanced boundary (p0 = p1, the test split's prior) is reported too.
  spread                     mean over the picks of the distance to the nearest other pick
  minority share             share of the picks from class 1 (the pool's 1 in 11)
  accuracy after             test accuracy (balanced test split) of stage --stage + 1, trained on the picks too

``--figure-seed`` (default 0) draws one seed as the paper does: the pool by class, the labeled set the stage trained
on, the ten picks (black crosses) and both boundaries, one panel per strategy. Writes ``<out>/<name>.md`` and
``<out>/<name>/figure1.png``; each experiment's records go to ``<out>/<name>/raw/toy2d-<strategy>-seed<k>.json``
as soon as it finishes (curves.py's machinery: --jobs worker processes of one thread each, resumable).

Time (2026-12-04, 2 shared cores, 2 jobs x 1 thread): 16.8 min beside other engineers' jobs (load average 4-6);
per experiment at its quickest random 0.02 min, lloss_rank 0.05, tavaal 0.35, vaal 0.44 (two VAE steps per
iteration), i.e. ~9 min for the 80 on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import sys
from pathlib import Path

if not __package__:  # run by path (python benchmarks/<script>.py, as older records say): as the module
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.toy_figure1", *sys.argv[1:]])

import numpy as np

import tavaal  # noqa: F401  (sets OMP passive waiting before torch loads)
from benchmarks.common import (
    ROOT,
    Refused,
    command_line,
    interval_cell,
    invocation_line,
    load_raw,
    mean_std,
    ordered,
    recorded_run,
    unfinished,
)
from benchmarks.common import t_interval as interval  # the reports' paired 95% intervals
from benchmarks.curves import experiments, run_recorded
from tavaal.config import Config, from_dict, load_config
from tavaal.errors import TavaalError

BASE = "configs/smoke.yaml"
STRATEGIES = ("random", "lloss_rank", "vaal", "tavaal")
SETTING = "toy2d"  # the raw JSON's prefix, as curves.py names a setting's experiments
TOY = [
    "data.name=toy2d",
    "model.name=mlp",
    "data.num_train=2000",
    "data.num_test=1000",
    "al.initial=20",
    "al.budget=10",
    "al.stages=6",
    "al.subset_size=2000",
    "train.epochs=100",
    "train.batch_size=32",
    "train.lr=0.05",
    "train.milestones=[80]",
    "train.ranker_stop_grad_epoch=60",
    "vae.iterations=300",
    "vae.batch_size=32",
    "vae.base_channels=64",
    "vae.latent_dim=8",
]
STAGE = 4  # the paper's "5th stage", counted from 1
# tests: 2 stages of 2 epochs, 4 VAE iterations, stage 0's picks
SMOKE = ["al.stages=2", "train.epochs=2", "train.milestones=[2]", "train.ranker_stop_grad_epoch=1", "vae.iterations=4"]
PRIORS = {"pool": (10.0, 1.0), "balanced": (1.0, 1.0)}  # class 0 : class 1
EXTENT = ((-1.6, 2.6), (-1.1, 1.6))  # x and y range of the grid: the moons plus > 3 noise std on every side
MEASURES = (  # key, heading, scale of the printed number
    ("distance", "distance to boundary (pool prior)", 1.0),
    ("distance_balanced", "distance to boundary (balanced prior)", 1.0),
    ("spread", "spread (mean NN distance)", 1.0),
    ("minority", "minority share", 1.0),
    ("accuracy", "accuracy after (%)", 100.0),
)


# ---------------------------------------------------------------- the known boundary and the measures


def centre_curves(n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """The two moons' centre curves at ``n`` midpoints of t in [0, pi] (toy2d.moons without the noise)."""
    t = (np.arange(n) + 0.5) * np.pi / n
    return np.stack([np.cos(t), np.sin(t)], 1), np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], 1)


def log_density(points: np.ndarray, curve: np.ndarray, noise: float) -> np.ndarray:
    """log p(x) of a point uniform on ``curve`` (its points equally likely) plus isotropic Gaussian noise, for each
    of ``points [P, 2]``; a log-sum-exp, so far from the curve it stays finite."""
    out = np.empty(len(points))
    c2 = (curve**2).sum(1)
    for i in range(0, len(points), 8192):  # chunks: P x n at once would not fit for a fine grid
        p = points[i : i + 8192]
        e = (p @ curve.T - 0.5 * c2[None] - 0.5 * (p**2).sum(1)[:, None]) / noise**2  # -|x - c|^2 / (2 noise^2)
        top = e.max(1)
        out[i : i + 8192] = top + np.log(np.exp(e - top[:, None]).mean(1))
    return out - np.log(2 * np.pi * noise**2)


def log_ratio(points: np.ndarray, prior: tuple[float, float], noise: float) -> np.ndarray:
    """log(prior0 p0(x)) - log(prior1 p1(x)): positive where class 0 is the likelier label."""
    c0, c1 = centre_curves()
    return np.log(prior[0] / prior[1]) + log_density(points, c0, noise) - log_density(points, c1, noise)


def zero_crossings(f: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Points where ``f`` (``[len(ys), len(xs)]`` on the grid) changes sign along a grid edge, each placed by linear
    interpolation between the edge's two ends: ``[B, 2]`` (x, y). Exact for a linear ``f``."""
    out = []
    h = (f[:, :-1] * f[:, 1:] < 0) | (f[:, :-1] == 0)  # along x
    r, c = np.nonzero(h)
    w = f[r, c] / (f[r, c] - f[r, c + 1])
    out.append(np.stack([xs[c] + w * (xs[c + 1] - xs[c]), ys[r]], 1))
    v = (f[:-1, :] * f[1:, :] < 0) | (f[:-1, :] == 0)  # along y
    r, c = np.nonzero(v)
    w = f[r, c] / (f[r, c] - f[r + 1, c])
    out.append(np.stack([xs[c], ys[r] + w * (ys[r + 1] - ys[r])], 1))
    return np.concatenate(out)


def grid(step: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    (x0, x1), (y0, y1) = EXTENT
    return np.arange(x0, x1 + step / 2, step), np.arange(y0, y1 + step / 2, step)


def log_ratio_grid(prior: tuple[float, float], noise: float, step: float = 0.01) -> tuple[np.ndarray, ...]:
    """(xs, ys, f): ``log_ratio`` on the grid over EXTENT, ``f [len(ys), len(xs)]``."""
    xs, ys, f = _density_ratio_grid(noise, step)
    return xs, ys, f + np.log(prior[0] / prior[1])


@functools.lru_cache(maxsize=4)
def _density_ratio_grid(noise: float, step: float) -> tuple[np.ndarray, ...]:
    """log p0 - log p1 on the grid: the priors only shift it, so one grid serves every prior."""
    xs, ys = grid(step)
    gx, gy = np.meshgrid(xs, ys)
    return xs, ys, log_ratio(np.stack([gx.ravel(), gy.ravel()], 1), (1.0, 1.0), noise).reshape(gx.shape)


def bayes_boundary(prior: tuple[float, float], noise: float, step: float = 0.01) -> np.ndarray:
    """Points of the Bayes decision boundary of the two moons under ``prior``: ``[B, 2]``."""
    xs, ys, f = log_ratio_grid(prior, noise, step)
    return zero_crossings(f, xs, ys)


def distance_to(points: np.ndarray, boundary: np.ndarray) -> np.ndarray:
    """Each point's Euclidean distance to the nearest boundary point."""
    return np.sqrt(((points[:, None, :] - boundary[None]) ** 2).sum(-1).min(1))


def nn_spread(points: np.ndarray) -> float:
    """Mean over the points of the distance to the nearest other point (nan for fewer than 2)."""
    if len(points) < 2:
        return float("nan")
    d = np.sqrt(((points[:, None, :] - points[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    return float(d.min(1).mean())


# ---------------------------------------------------------------- per experiment


def labeled_before(cfg: Config, records: list[dict], stage: int) -> np.ndarray:
    """The labeled set stage ``stage`` trained on: the run's initial labels (drawn as its oracle drew them) plus the
    picks of the stages before; checked against the record's num_labeled."""
    from tavaal.data import build_dataset
    from tavaal.oracle import build_oracle

    data = build_dataset(cfg.data, cfg.seed)
    initial = build_oracle(cfg, data).initial_state(data).labeled_indices()
    labeled = np.concatenate([initial, *[np.asarray(r["selected"], dtype=np.int64) for r in records[:stage]]])
    if labeled.size != records[stage]["num_labeled"]:
        raise ValueError(f"rebuilt {labeled.size} labels for stage {stage}, the record trained on "
                         f"{records[stage]['num_labeled']}")  # fmt: skip
    return np.sort(labeled)


def measure(result: dict, stage: int, boundaries: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> dict:
    """The measures of one experiment's picks at ``stage`` (``x``, ``y``: the pool's points and labels)."""
    records = result["records"]
    picks = np.asarray(records[stage]["selected"], dtype=np.int64)
    pts = x[picks]
    after = records[stage + 1] if stage + 1 < len(records) else None
    return {
        "distance": float(distance_to(pts, boundaries["pool"]).mean()),
        "distance_balanced": float(distance_to(pts, boundaries["balanced"]).mean()),
        "spread": nn_spread(pts),
        "minority": float((y[picks] == 1).mean()),
        "accuracy": float("nan") if after is None else float(after["accuracy"]),
    }


# ---------------------------------------------------------------- report


def digits(scale: float) -> int:
    """Decimals of a measure's cells: 3 for distances and shares, 2 for accuracies in %."""
    return 3 if scale == 1 else 2


def verdict(m: dict[str, dict[int, dict]]) -> list[str]:
    """Plain sentences on the paper's claim, from the intervals: near the boundary (distance below random's) and
    spread (spread not below random's, and above learning loss's)."""
    if "tavaal" not in m or "random" not in m:
        return []
    lines = []

    def diff(a: str, b: str, key: str) -> tuple[float, float, float, int]:
        seeds = sorted(set(m[a]) & set(m[b]))
        return (*interval([m[a][k][key] - m[b][k][key] for k in seeds]), len(seeds))

    def said(d: tuple, lower: str, higher: str) -> str:
        mean, low, high, n = d
        if np.isnan(low):
            return f"off by {mean:+.3f} from (one seed: no interval)"
        word = lower if high < 0 else higher if low > 0 else "no different from"
        return f"{word} ({mean:+.3f} [{low:+.3f}, {high:+.3f}])"

    near = diff("tavaal", "random", "distance")
    lines.append(f"- Near the boundary: TA-VAAL's picks are {said(near, 'nearer than', 'farther than')} random's.")
    for rival in ("lloss_rank", "vaal"):
        if rival in m:
            d = diff("tavaal", rival, "distance")
            lines.append(f"  Against {rival}: {said(d, 'nearer than', 'farther than')} its picks.")
    spread = diff("tavaal", "random", "spread")
    lines.append(f"- Spread: TA-VAAL's picks are {said(spread, 'less spread than', 'more spread than')} random's.")
    for rival in ("lloss_rank", "vaal"):
        if rival in m:
            d = diff("tavaal", rival, "spread")
            lines.append(f"  Against {rival}: {said(d, 'less spread than', 'more spread than')} its picks.")
    if not np.isnan(near[1]):
        near_ok, spread_ok = near[2] < 0, spread[2] >= 0  # interval below 0; interval not below 0
        parts = [
            "nearer the boundary than random's" if near_ok else "not nearer the boundary than random's",
            "no less spread than random's" if spread_ok else "less spread than random's",
        ]
        word = "held" if near_ok and spread_ok else "held in part" if near_ok or spread_ok else "did not hold"
        lines.append(
            f"- The paper's claim (near the boundary and spread over the set) {word}: TA-VAAL's picks are "
            f"{parts[0]}, and {parts[1]}."
        )
    return lines


def write_report(out: Path, name: str, stage: int, figure_seed: int) -> Path:
    """``<out>/<name>.md`` and ``<out>/<name>/figure1.png`` from ``run.json`` and ``raw/*.json`` alone."""
    from tavaal.data import build_dataset
    from tavaal.data.toy2d import NOISE

    run_dir = out / name
    meta = json.loads((run_dir / "run.json").read_text())
    runs = load_raw(run_dir).get(SETTING, {})  # strategy -> seed -> the experiment's JSON
    if not runs:
        raise SystemExit(f"error: no finished experiments in {run_dir / 'raw'}")
    names = ordered(runs)
    first = next(iter(runs[names[0]].values()))
    cfg = from_dict(first["config"])
    data = build_dataset(cfg.data, cfg.seed)  # the toy pool does not depend on the seed
    x, y = data.train.x.numpy().astype(np.float64), data.train.y.numpy()
    grids = {k: log_ratio_grid(p, NOISE) for k, p in PRIORS.items()}
    boundaries = {k: zero_crossings(g[2], g[0], g[1]) for k, g in grids.items()}
    m = {s: {k: measure(runs[s][k], stage, boundaries, x, y) for k in sorted(runs[s])} for s in names}
    pool_dist = distance_to(x, boundaries["pool"])
    budget = len(first["records"][stage]["selected"])
    lines = [
        f"# The paper's Figure 1, reproduced: picks of stage {stage} on the two-moons toy set",
        "",
        f"- setup: `{BASE}` with {', '.join(meta['overrides'])} (+ al.strategy, seed, num_threads); "
        f"{len(x):,} pool points ({int((y == 1).sum())} of class 1), {budget} picks at stage {stage} "
        f"(0-based: the paper's stage {stage + 1}) from {first['records'][stage]['num_labeled']} labels",
        "- boundary: the Bayes decision boundary of toy2d's generating process (moon centre curves, uniform t, "
        f"Gaussian noise std {NOISE}), pool prior 10:1 (and balanced 1:1), extracted on a grid of step 0.01; "
        "see the script's help",
        f"- reference: the pool's points lie {pool_dist.mean():.3f} from the pool-prior boundary on average "
        f"(median {np.median(pool_dist):.3f})",
        "- std over seeds with ddof 0; intervals: 95%, Student's t over the paired differences of seeds",
    ]
    lines += [invocation_line(inv) for inv in meta["invocations"]]
    lines += [
        "",
        "Per strategy (mean ± std over seeds; each seed's value is the mean over its picks):",
        "",
        "| strategy | seeds | " + " | ".join(h for _, h, _ in MEASURES) + " |",
        "| --- | --- |" + " --- |" * len(MEASURES),
    ]
    for s in names:
        cells = [
            mean_std(np.array([m[s][k][key] for k in m[s]], dtype=float), digits(scale), scale)
            for key, _, scale in MEASURES
        ]
        lines.append(f"| {s} | {len(m[s])} | " + " | ".join(cells) + " |")
    pairs = [(s, "random") for s in names if s != "random" and "random" in m]
    pairs += [("tavaal", r) for r in ("lloss_rank", "vaal") if r in m and "tavaal" in m]
    if pairs:
        lines += [
            "",
            "Paired differences (mean [95% interval] over the seeds both have):",
            "",
            "| pair | " + " | ".join(h for _, h, _ in MEASURES) + " |",
            "| --- |" + " --- |" * len(MEASURES),
        ]
        for a, b in pairs:
            seeds = sorted(set(m[a]) & set(m[b]))
            cells = [
                interval_cell(*interval([m[a][k][key] - m[b][k][key] for k in seeds]), digits(sc), sc)
                for key, _, sc in MEASURES
            ]
            lines.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
    said = verdict(m)
    if said:
        lines += ["", "What held:", "", *said]
    seed = figure_seed if all(figure_seed in runs[s] for s in names) else min(runs[names[0]])
    write_figure(runs, names, seed, stage, x, y, grids, run_dir / "figure1.png")
    lines += ["", f"![Figure 1, seed {seed}]({name}/figure1.png)", ""]
    path = out / f"{name}.md"
    path.write_text("\n".join(lines))
    return path


def write_figure(runs, names, seed, stage, x, y, grids: dict, path: Path) -> None:
    """One panel per strategy (the paper's layout): the pool by class, the labeled set stage ``stage`` trained on,
    its picks (black crosses), the pool-prior boundary (dashed) and the balanced one (dotted)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(names), 3.3), dpi=100)
    FigureCanvasAgg(fig)
    for i, s in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        result = runs[s][seed]
        cfg = from_dict(result["config"])
        labeled = labeled_before(cfg, result["records"], stage)
        picks = np.asarray(result["records"][stage]["selected"], dtype=np.int64)
        for c, color in ((0, "tab:red"), (1, "tab:blue")):
            pool = y == c
            ax.scatter(x[pool, 0], x[pool, 1], s=4, color=color, alpha=0.25, lw=0)
            lab = labeled[y[labeled] == c]
            ax.scatter(x[lab, 0], x[lab, 1], s=28, color=color, edgecolor="black", lw=0.5, label=f"labeled, class {c}")
        ax.scatter(x[picks, 0], x[picks, 1], s=70, marker="x", color="black", lw=2, label=f"picks ({picks.size})")
        for key, style, color in (("pool", "--", "black"), ("balanced", ":", "grey")):
            xs, ys, f = grids[key]
            ax.contour(xs, ys, f, levels=[0.0], linestyles=style, colors=color, linewidths=1.2)
            ax.plot([], [], ls=style, color=color, label=f"Bayes boundary, {key} prior")
        ax.set(xlim=EXTENT[0], ylim=EXTENT[1], title=f"{s}: stage {stage} picks, seed {seed}", aspect="equal")
    fig.axes[0].legend(fontsize="x-small", loc="lower left")
    fig.tight_layout()
    fig.savefig(path)


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=20, help="seeds 0..N-1 per strategy (default: 20)")
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES, metavar="NAME")
    ap.add_argument("--stage", type=int, default=None, help=f"whose picks to measure (default: {STAGE}; --smoke: 0)")
    ap.add_argument("--figure-seed", type=int, default=0, help="the seed drawn in the figure (default: 0)")
    ap.add_argument("--smoke", action="store_true", help="2 stages, 2 epochs, 4 VAE iterations: seconds (tests)")
    ap.add_argument("--jobs", type=int, default=None, help="experiments in parallel, 1 thread each (default: cores)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, applied last")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results"), help="default: benchmarks/results")
    ap.add_argument("--name", default=f"toy-figure1-{datetime.date.today():%Y-%m-%d}", help="default: %(default)s")
    ap.add_argument("--resume", action="store_true", help="continue the run <name>: skip experiments with raw JSON")
    ap.add_argument("--report-only", action="store_true", help="rebuild <name>.md and the PNG from raw JSON")
    args = ap.parse_args(argv)
    if args.seeds < 1 or (args.jobs is not None and args.jobs < 1):
        ap.error("--seeds and --jobs must be >= 1")
    stage = args.stage if args.stage is not None else 0 if args.smoke else STAGE
    out, run_dir = Path(args.out), Path(args.out) / args.name
    if args.report_only:
        print(f"wrote {write_report(out, args.name, stage, args.figure_seed)}")
        return 0
    overrides = [*TOY, *(SMOKE if args.smoke else []), *args.set]
    cpus = os.cpu_count() or 1
    jobs = args.jobs or cpus
    threads = max(1, cpus // jobs)
    todo = experiments({SETTING: (BASE, overrides, tuple(args.strategies))}, args.seeds, threads, [])
    try:
        new = {"protocol": "toy", "base": BASE, "overrides": overrides, "invocations": []}
        meta = recorded_run(run_dir, args.resume) or new
        if meta["overrides"] != overrides:
            raise Refused(
                f"{run_dir} ran with {' '.join(meta['overrides'])}; resume it with the same --smoke and --set"
            )
        for *_, base, sets in todo:
            cfg = load_config(ROOT / base, sets)
            if not 0 <= stage < cfg.al.stages - 1:
                raise Refused(f"--stage {stage} does not query: al.stages is {cfg.al.stages}")
        todo, skipped = unfinished(run_dir, todo)
    except (Refused, TavaalError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    (run_dir / "raw").mkdir(parents=True, exist_ok=True)
    print(f"{run_dir}: {len(todo)} experiments to run, {len(skipped)} skipped, {min(jobs, max(1, len(todo)))} jobs")
    failed = run_recorded(todo, run_dir, meta, command_line("toy_figure1", argv), jobs, threads, len(skipped), 0)
    print(f"wrote {write_report(out, args.name, stage, args.figure_seed)}")
    if failed:
        print(f"{failed} experiments failed; rerun with --resume to retry them", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
