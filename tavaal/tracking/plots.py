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


def plot_table(ax, table: dict[str, list[dict]], key: str, scale: float = 1.0) -> None:
    """One line per strategy of ``report.summarize``'s ``table``: x = labels, y = ``row[key]`` x ``scale`` (rows where
    it is None are skipped); the accuracy (``key="mean"``) gets a ± std band."""
    for strategy, rows in table.items():
        pts = [(r["labels"], r[key], r["std"]) for r in rows if r[key] is not None]
        if not pts:
            continue
        x, y, s = (np.asarray(v) * f for v, f in zip(zip(*pts), (1.0, scale, scale)))
        ax.plot(x, y, marker="o", label=strategy)
        if key == "mean":
            ax.fill_between(x, y - s, y + s, alpha=0.15)


REPORT_FIGURES = (
    ("accuracy.png", "mean", "test accuracy"),
    ("improvement.png", "vs_random", "accuracy - random"),
    ("entropy.png", "entropy", "label entropy (nats)"),
)


def strategy_figures(table: dict[str, list[dict]], out: Path, title: str) -> list[Path]:
    """``REPORT_FIGURES`` of a report's ``table`` (accuracy ± std, improvement over random, label entropy, each vs
    labels: the paper's Fig. 3/4 and 7a), written into ``out``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    written = []
    for name, key, ylabel in REPORT_FIGURES:
        fig = Figure(figsize=(6, 4))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        plot_table(ax, table, key)
        ax.set(xlabel="labeled samples", ylabel=ylabel, title=title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        written.append(out / name)
    return written
