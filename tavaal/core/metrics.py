"""Per-stage metrics: test accuracy (overall, balanced, per class) and the labeled set's class entropy."""
from __future__ import annotations

import math

import numpy as np


def label_counts(targets: np.ndarray, labeled: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class counts ``[C]`` of the labeled samples (``targets`` is the pool's label array)."""
    return np.bincount(np.asarray(targets)[labeled], minlength=num_classes)


def label_entropy(counts: np.ndarray) -> tuple[float, float]:
    """Entropy (nats) of the class distribution of the labeled set, and that divided by log C.

    The paper's Fig. 7a: a balanced labeled set has entropy log C (normalized 1).
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total == 0:
        return 0.0, 0.0
    p = counts[counts > 0] / total
    h = float(-(p * np.log(p)).sum())
    c = counts.size
    return h, (h / math.log(c) if c > 1 else 0.0)


def classification_metrics(pred: np.ndarray, target: np.ndarray, num_classes: int) -> dict:
    """Accuracy, balanced accuracy (mean recall over classes present) and per-class accuracy."""
    pred, target = np.asarray(pred), np.asarray(target)
    correct = pred == target
    per_class = []
    for c in range(num_classes):
        mask = target == c
        per_class.append(float(correct[mask].mean()) if mask.any() else float("nan"))
    present = [a for a in per_class if not math.isnan(a)]
    return {
        "accuracy": float(correct.mean()) if correct.size else float("nan"),
        "balanced_accuracy": float(np.mean(present)) if present else float("nan"),
        "per_class_accuracy": per_class,
    }
