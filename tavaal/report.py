"""python -m tavaal.report — paper-style curves and tables from the MLflow runs of an experiment.

  python -m tavaal.report --experiment tavaal --tracking-uri sqlite:///mlflow.db --out reports/

Groups the finished runs by strategy (param ``al.strategy``; seeds are averaged), and writes:
``accuracy.png`` (test accuracy vs labels, mean ± std over seeds: the paper's Fig. 3/4),
``improvement.png`` (accuracy minus random's at each label count), ``entropy.png`` (the labeled set's
class entropy per stage, Fig. 7a) and ``report.md`` (the same numbers as tables). Segmentation runs (those
that logged ``test/miou``) are plotted and tabulated by mIoU instead of (pixel) accuracy.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from tavaal.errors import TavaalError, TrackingError
from tavaal.redact import redact


def collect(tracking_uri: str, experiment: str) -> dict[str, dict[int, dict[str, list[float]]]]:
    """strategy -> labels -> {"accuracy": [per seed], "entropy": [...], "entropy_norm": [...]}."""
    from tavaal.tracking import connect

    client = connect(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise TrackingError(
            f"no MLflow experiment '{experiment}' at {redact(tracking_uri)}; pass --experiment with an "
            "existing name (see `mlflow ui`)"
        )
    out: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for run in client.search_runs([exp.experiment_id], max_results=5000):
        strategy = run.data.params.get("al.strategy")
        if strategy is None:  # a sweep's parent run
            continue
        hist = {
            key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
            for key in ("labels/count", "test/accuracy", "test/miou", "labels/entropy", "labels/entropy_norm")
        }
        quality = hist["test/miou"] or hist["test/accuracy"]  # segmentation runs: mIoU
        for step, count in hist["labels/count"].items():
            if step in quality:
                cell = out[strategy][int(count)]
                cell["accuracy"].append(quality[step])
                cell["entropy"].append(hist["labels/entropy"].get(step, np.nan))
                cell["entropy_norm"].append(hist["labels/entropy_norm"].get(step, np.nan))
    if not out:
        raise TrackingError(
            f"MLflow experiment '{experiment}' at {redact(tracking_uri)} has no AL runs with stage metrics"
        )
    return out


def summarize(data: dict) -> dict[str, list[dict]]:
    """strategy -> rows (labels, n seeds, mean/std accuracy, improvement over random, mean entropy)."""
    random_mean = {n: float(np.mean(c["accuracy"])) for n, c in data.get("random", {}).items()}
    table = {}
    for strategy, by_n in sorted(data.items()):
        rows = []
        for n in sorted(by_n):
            acc = np.asarray(by_n[n]["accuracy"])
            rows.append(
                {
                    "labels": n,
                    "seeds": int(acc.size),
                    "mean": float(acc.mean()),
                    "std": float(acc.std()),
                    "vs_random": float(acc.mean() - random_mean[n]) if n in random_mean else None,
                    "entropy": float(np.nanmean(by_n[n]["entropy"])),
                    "entropy_norm": float(np.nanmean(by_n[n]["entropy_norm"])),
                }
            )
        table[strategy] = rows
    return table


def write_report(table: dict[str, list[dict]], out: Path, title: str) -> list[Path]:
    """The figures (``tracking.plots.strategy_figures``) and ``report.md`` (the same numbers as tables)."""
    from tavaal.tracking.plots import strategy_figures

    out.mkdir(parents=True, exist_ok=True)
    written = strategy_figures(table, out, title)
    lines = [
        f"# {title}",
        "",
        "| strategy | labels | seeds | accuracy (mean ± std) | vs random | label entropy (norm) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for strategy, rows in table.items():
        for r in rows:
            vs = f"{r['vs_random'] * 100:+.2f} pt" if r["vs_random"] is not None else "—"
            lines.append(
                f"| {strategy} | {r['labels']} | {r['seeds']} | {r['mean'] * 100:.2f} ± {r['std'] * 100:.2f} "
                f"| {vs} | {r['entropy']:.3f} ({r['entropy_norm']:.3f}) |"
            )
    (out / "report.md").write_text("\n".join(lines) + "\n")
    written.append(out / "report.md")
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tavaal.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--experiment", required=True, help="MLflow experiment name")
    p.add_argument("--tracking-uri", default="sqlite:///mlflow.db", help="default: %(default)s")
    p.add_argument("--out", default="reports", help="output directory (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        table = summarize(collect(args.tracking_uri, args.experiment))
    except TavaalError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    for path in write_report(table, Path(args.out), f"{args.experiment}: accuracy vs labels"):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
