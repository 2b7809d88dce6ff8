"""Figures of accuracy vs labels: one run's or a sweep's curves (logged to MLflow) and ``python -m tavaal.report``'s
per-strategy figures. matplotlib's object API only (no pyplot state), imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def accuracy_figure(curves: dict[str, dict[int, tuple[float, float]]], title: str = "accuracy vs labels"):
    """One line per run: x = labeled samples, y = test accuracy (matplotlib's Agg, no pyplot state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    for name, points in curves.items():
        xy = [points[s] for s in sorted(points)]
        ax.plot([x for x, _ in xy], [y for _, y in xy], marker="o", label=name)
    ax.set(xlabel="labeled samples", ylabel="test accuracy", title=title)
    ax.grid(alpha=0.3)
    if 1 < len(curves) <= 20:
        ax.legend(fontsize="small")
    return fig


def plot_table(ax, table: dict[str, dict], key: str, scale: float = 1.0) -> int:
    """One line per strategy of ``report.summarize``'s ``table``: x = labels, y = ``row[key]`` x ``scale`` (rows where
    it is None are skipped). For the accuracy (``key="mean"``) the band is ± std over seeds, or for a sweep's trials
    the spread of the points (min to max); returns the number of lines drawn."""
    drawn = 0
    for strategy, entry in table.items():
        rows = [r for r in entry["rows"] if r[key] is not None and not np.isnan(r[key])]
        if not rows:
            continue
        x = np.asarray([r["labels"] for r in rows], dtype=float)
        y = np.asarray([r[key] for r in rows]) * scale
        trials = entry["kind"] == "trials"
        label = f"{strategy} (best of {entry['n']} trials)" if trials else f"{strategy} ({entry['n']} seeds)"
        ax.plot(x, y, marker="o", label=label)
        drawn += 1
        if key == "mean" and trials:
            low = np.asarray([r["low"] for r in rows]) * scale
            high = np.asarray([r["high"] for r in rows]) * scale
            ax.fill_between(x, low, high, alpha=0.15, label=f"{strategy}: spread of its trials")
        elif key == "mean" and entry["n"] > 1:
            s = np.asarray([r["std"] for r in rows]) * scale
            ax.fill_between(x, y - s, y + s, alpha=0.15)
    return drawn


def report_figures(metric: str) -> tuple[tuple[str, str, str, str], ...]:
    """(file, row key, y label, what the figure is) of each report figure."""
    return (
        ("accuracy.png", "mean", f"test {metric}", f"test {metric} vs labels"),
        ("improvement.png", "vs_random", f"{metric} - random's (pt)", f"{metric} minus random's vs labels"),
        ("entropy.png", "entropy", "label entropy (nats)", "label entropy of the labeled set vs labels"),
    )


def strategy_figures(table: dict[str, dict], out: Path, group: str, metric: str = "accuracy") -> list[Path]:
    """The report's figures of one group (accuracy with its band, improvement over random, label entropy, each vs
    labels: the paper's Fig. 3/4 and 7a), written into ``out``; a figure with nothing to draw (no random, or
    nothing beside it, for the improvement) is not written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    written = []
    for name, key, ylabel, what in report_figures(metric):
        fig = Figure(figsize=(7, 4.5))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        if not plot_table(ax, table, key, 100.0 if key == "vs_random" else 1.0):
            continue
        if key == "vs_random":
            ax.axhline(0.0, color="grey", lw=0.8)
        ax.set(xlabel="labeled samples", ylabel=ylabel)
        ax.set_title(f"{what}\n{group}", fontsize="medium")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        written.append(out / name)
    return written
