"""python -m tavaal.report — paper-style curves and tables from the MLflow runs of an experiment.

  python -m tavaal.report                  # experiment tavaal-sweep: what python -m tavaal.sweep writes
  python -m tavaal.report --experiment tavaal --tracking-uri sqlite:///mlflow.db --out reports/
  python -m tavaal.report --sweep sweep-a --sweep sweep-b --combine   # one report of two sweeps on the same data

Runs are grouped by sweep (a sweep's parent run; single runs, those of python -m tavaal.run, form a group of their
own), data set and protocol (al.initial, al.budget, al.subset_size, task), and each group gets its own folder: numbers
of different groups are never averaged together. Within a group, runs are grouped by strategy; runs that differ by
seed alone are averaged (mean ± std over seeds), while a sweep's trials are hyperparameter points: the report shows
the best point (by the area under its curve) and the spread of all points at each label count. Each folder holds
``accuracy.png`` (test accuracy vs labels: the paper's Fig. 3/4), ``improvement.png`` (accuracy minus random's at each
label count, when the group has random and another strategy), ``entropy.png`` (the labeled set's class entropy, Fig.
7a); ``report.md`` has every group's numbers as tables. Segmentation runs (those that logged ``test/miou``) are judged
by mIoU instead of (pixel) accuracy. ``--combine`` reports the selected groups as one, and refuses (one line, exit
code 2) when they ran on different data or protocols.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tavaal.errors import ConfigError, TavaalError, TrackingError
from tavaal.redact import redact

DEFAULT_EXPERIMENT = "tavaal-sweep"  # what python -m tavaal.sweep writes (the README's main job)
PROTOCOL = ("al.initial", "al.budget", "al.subset_size", "task")  # what makes two curves comparable, beside the data
SINGLE = "single runs"  # the group of runs that belong to no sweep


@dataclass
class RunCurve:
    """One MLflow run's curve: labels -> quality (accuracy, or mIoU) and label entropy, with what it ran."""

    run_id: str
    name: str
    strategy: str
    seed: str
    sweep: str  # the parent run's name, or SINGLE
    data: tuple[tuple[str, str], ...]  # the data.* params that define the data set
    protocol: tuple[tuple[str, str], ...]
    point: tuple[tuple[str, str], ...]  # every other param that changes results: the hyperparameter point
    quality: dict[int, float] = field(default_factory=dict)
    entropy: dict[int, float] = field(default_factory=dict)
    entropy_norm: dict[int, float] = field(default_factory=dict)
    segmentation: bool = False

    @property
    def auc(self) -> float:
        from tavaal.core.metrics import objective_metrics

        pts = [{"num_labeled": n, "accuracy": q} for n, q in sorted(self.quality.items())]
        return objective_metrics(pts)["auc"] if pts else float("nan")


def _data_label(data: tuple[tuple[str, str], ...]) -> str:
    d = dict(data)
    path = d.get("data.path")
    return d.get("data.name", "?") + (f":{Path(path).name}" if path not in (None, "None") else "")


def collect(tracking_uri: str, experiment: str) -> list[RunCurve]:
    """Every finished AL run of the experiment (a sweep's parent runs are not AL runs) with its curve."""
    from tavaal.checkpoint import resumable
    from tavaal.tracking.parent import PARENT_TAG
    from tavaal.tracking.store import connect

    client = connect(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise TrackingError(
            f"no MLflow experiment '{experiment}' at {redact(tracking_uri)}; pass --experiment with an "
            f"existing name (python -m tavaal.sweep writes '{DEFAULT_EXPERIMENT}', python -m tavaal.run "
            "--tracking-uri writes 'tavaal')"
        )
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    names = {r.info.run_id: r.info.run_name or r.info.run_id[:8] for r in runs}
    out = []
    for run in runs:
        params = run.data.params
        if "al.strategy" not in params or run.info.status != "FINISHED":
            continue  # a sweep's parent run; a run that failed or still runs
        parent = run.data.tags.get(PARENT_TAG)
        keys = {k: v for k, v in params.items() if not resumable(k)}
        data = tuple(sorted((k, v) for k, v in keys.items() if k.startswith("data.")))
        protocol = tuple((k, keys.get(k, "")) for k in PROTOCOL)
        point = tuple(sorted((k, v) for k, v in keys.items() if k != "seed" and (k, v) not in data + protocol))
        hist = {
            key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
            for key in ("labels/count", "test/accuracy", "test/miou", "labels/entropy", "labels/entropy_norm")
        }
        curve = RunCurve(
            run.info.run_id,
            names[run.info.run_id],
            params["al.strategy"],
            params.get("seed", "?"),
            (names.get(parent, parent) if parent else SINGLE),
            data,
            protocol,
            point,
            segmentation=bool(hist["test/miou"]),
        )
        quality = hist["test/miou"] or hist["test/accuracy"]
        for step, count in hist["labels/count"].items():
            if step in quality:
                n = int(count)
                curve.quality[n] = quality[step]
                curve.entropy[n] = hist["labels/entropy"].get(step, np.nan)
                curve.entropy_norm[n] = hist["labels/entropy_norm"].get(step, np.nan)
        if curve.quality:
            out.append(curve)
    if not out:
        raise TrackingError(
            f"MLflow experiment '{experiment}' at {redact(tracking_uri)} has no finished AL runs with stage metrics"
        )
    return out


def group_runs(runs: list[RunCurve], sweeps: list[str] | None = None, combine: bool = False) -> dict[str, list]:
    """Group label -> its runs: one group per (sweep, data set, protocol). ``sweeps`` keeps the named sweeps only (a
    parent run's name or id, or ``single`` for the runs of no sweep); ``combine`` makes one group of them all, and
    is a ConfigError (one line) when they differ in data or protocol."""
    if sweeps:
        wanted = set(sweeps)
        runs = [r for r in runs if r.sweep in wanted or (r.sweep == SINGLE and "single" in wanted)]
        missing = wanted - {r.sweep for r in runs} - ({"single"} if any(r.sweep == SINGLE for r in runs) else set())
        if missing:
            raise ConfigError(f"no finished AL runs of sweep {sorted(missing)[0]!r}; --sweep takes a parent run's name")
    if not runs:
        raise ConfigError("no runs to report")
    if combine:
        for attr, what in (("data", "data sets"), ("protocol", "protocols")):
            seen: dict[tuple, str] = {}
            for r in runs:
                seen.setdefault(getattr(r, attr), r.sweep)
            if len(seen) > 1:
                (a, sa), (b, sb) = list(seen.items())[:2]
                diff = sorted({k for k, v in set(a) ^ set(b)})
                raise ConfigError(
                    f"--combine: the runs are on different {what} ({sa}: {_describe(a, diff)}; {sb}: "
                    f"{_describe(b, diff)}), and a mean across them would mean nothing; report them apart "
                    "(without --combine) or pick comparable ones with --sweep"
                )
        return {" + ".join(sorted({r.sweep for r in runs})): runs}
    groups: dict[str, list] = defaultdict(list)
    keys: dict[tuple, str] = {}
    for r in runs:
        key = (r.sweep, r.data, r.protocol)
        if key not in keys:
            label = f"{r.sweep} on {_data_label(r.data)}"
            clash = sum(1 for k in keys if (k[0], _data_label(k[1])) == (r.sweep, _data_label(r.data)))
            keys[key] = label + (f" (protocol {clash + 1})" if clash else "")
        groups[keys[key]].append(r)
    return dict(groups)


def _describe(pairs: tuple, keys: list[str]) -> str:
    d = dict(pairs)
    return ", ".join(f"{k}={redact(d.get(k, '-'))}" for k in keys[:4])


def summarize(runs: list[RunCurve]) -> dict[str, dict]:
    """strategy -> {kind: "seeds"|"trials", n, best (the best point's params, for trials), rows}; each row: labels,
    mean (over seeds; for trials: the best point's), std (over seeds of that point), low/high (trials: the spread of
    the points' means), vs_random, entropy, entropy_norm."""
    by_strategy: dict[str, dict[tuple, list[RunCurve]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        by_strategy[r.strategy][r.point].append(r)
    table: dict[str, dict] = {}
    for strategy, points in sorted(by_strategy.items()):
        means = {p: _mean_curve(rs) for p, rs in points.items()}
        best = max(points, key=lambda p: float(np.mean([r.auc for r in points[p]])))
        kind = "seeds" if len(points) == 1 else "trials"
        rows = []
        for n in sorted(means[best]):
            at_n = [means[p][n][0] for p in points if n in means[p]]
            mean, std = means[best][n]
            ent = [r.entropy.get(n, np.nan) for r in points[best]]
            ent_norm = [r.entropy_norm.get(n, np.nan) for r in points[best]]
            rows.append(
                {
                    "labels": n,
                    "runs": len(points[best]) if kind == "seeds" else len(at_n),
                    "mean": mean,
                    "std": std,
                    "low": min(at_n),
                    "high": max(at_n),
                    "vs_random": None,
                    "entropy": float(np.nanmean(ent)) if not np.all(np.isnan(ent)) else float("nan"),
                    "entropy_norm": float(np.nanmean(ent_norm)) if not np.all(np.isnan(ent_norm)) else float("nan"),
                }
            )
        differing = _differing(list(points))
        table[strategy] = {
            "kind": kind,
            "n": len(points) if kind == "trials" else len(points[best]),
            "best": {k: v for k, v in best if k in differing} if kind == "trials" else {},
            "best_auc": float(np.mean([r.auc for r in points[best]])),
            "seeds_of_best": len(points[best]),
            "rows": rows,
        }
    if "random" in table:
        ref = {row["labels"]: row["mean"] for row in table["random"]["rows"]}
        for strategy, entry in table.items():
            for row in entry["rows"]:
                if strategy != "random" and row["labels"] in ref:
                    row["vs_random"] = row["mean"] - ref[row["labels"]]
    return table


def _mean_curve(runs: list[RunCurve]) -> dict[int, tuple[float, float]]:
    """labels -> (mean, std) over the runs (seeds of one point) that reached that label count."""
    out = {}
    for n in sorted({n for r in runs for n in r.quality}):
        vals = np.asarray([r.quality[n] for r in runs if n in r.quality])
        out[n] = (float(vals.mean()), float(vals.std()))
    return out


def _differing(points: list[tuple]) -> set[str]:
    """The params that differ between a sweep's points (what the sweep searched over)."""
    values: dict[str, set] = defaultdict(set)
    for p in points:
        for k, v in p:
            values[k].add(v)
    return {k for k, vs in values.items() if len(vs) > 1 or any(k not in dict(p) for p in points)}


def _slug(label: str) -> str:
    return re.sub(r"[^\w\-.]+", "_", label).strip("_")[:80] or "group"


def write_report(groups: dict[str, list[RunCurve]], out: Path, experiment: str) -> list[Path]:
    """One folder per group with its figures (``tracking.plots.strategy_figures``), and ``report.md`` with every
    group's table."""
    from tavaal.tracking.plots import strategy_figures

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    lines = [f"# {experiment}: {len(groups)} group{'s' * (len(groups) != 1)} (sweep, data set, protocol)", ""]
    for label, runs in groups.items():
        table = summarize(runs)
        metric = "mIoU" if any(r.segmentation for r in runs) else "accuracy"
        folder = out / _slug(label)
        folder.mkdir(parents=True, exist_ok=True)
        figures = strategy_figures(table, folder, label, metric)
        written += figures
        kinds = {e["kind"] for e in table.values()}
        lines += [f"## {label}", "", "; ".join(_what(s, e) for s, e in table.items()) + ".", ""]
        if figures:
            lines += [" ".join(f"[{p.name}]({_slug(label)}/{p.name})" for p in figures), ""]
        spread = "trials" in kinds
        lines += [
            f"| strategy | labels | runs | {metric} (mean ± std over seeds{'; trials: the best point' * spread}) "
            f"|{' spread over trials |' * spread} vs random | label entropy (norm) |",
            "| --- | --- | --- | --- |" + " --- |" * spread + " --- | --- |",
        ]
        for strategy, entry in table.items():
            for r in entry["rows"]:
                vs = f"{r['vs_random'] * 100:+.2f} pt" if r["vs_random"] is not None else "—"
                runs_cell = f"{r['runs']} {'seeds' if entry['kind'] == 'seeds' else 'trials'}"
                one_seed = entry["seeds_of_best"] == 1  # a std over one run would read as a certainty
                value = f"{r['mean'] * 100:.2f}" + ("" if one_seed else f" ± {r['std'] * 100:.2f}")
                cells = [strategy, str(r["labels"]), runs_cell, value]
                if spread:
                    cells.append(f"{r['low'] * 100:.2f} – {r['high'] * 100:.2f}" if entry["kind"] == "trials" else "—")
                cells += [vs, f"{r['entropy']:.3f} ({r['entropy_norm']:.3f})"]
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    (out / "report.md").write_text("\n".join(lines))
    written.append(out / "report.md")
    return written


def _what(strategy: str, entry: dict) -> str:
    """One phrase per strategy: seeds averaged, or trials with the best point."""
    if entry["kind"] == "seeds":
        return f"{strategy}: {entry['n']} seeds averaged" if entry["n"] > 1 else f"{strategy}: 1 run (one seed)"
    best = ", ".join(f"{k}={v}" for k, v in entry["best"].items()) or "the base config"
    seeds = f" ({entry['seeds_of_best']} seeds)" if entry["seeds_of_best"] > 1 else ""
    return (
        f"{strategy}: {entry['n']} trials (hyperparameter points, not seeds); best point {best}{seeds}, "
        f"area under the curve {entry['best_auc']:.4f}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tavaal.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment name (default: %(default)s)")
    p.add_argument("--tracking-uri", default="sqlite:///mlflow.db", help="default: %(default)s")
    p.add_argument("--out", default="reports", help="output directory (default: %(default)s)")
    p.add_argument(
        "--sweep",
        action="append",
        metavar="NAME",
        help="report only this sweep (its parent run's name; 'single' for runs of no sweep); repeatable",
    )
    p.add_argument(
        "--combine",
        action="store_true",
        help="one report of all selected runs (refused when they ran on different data or protocols)",
    )
    args = p.parse_args(argv)
    try:
        groups = group_runs(collect(args.tracking_uri, args.experiment), args.sweep, args.combine)
    except TavaalError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    for path in write_report(groups, Path(args.out), args.experiment):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
