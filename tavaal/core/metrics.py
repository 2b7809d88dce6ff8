"""Per-stage metrics: test accuracy (overall, balanced, per class), segmentation IoU, and the labeled set's
class entropy (of its samples' classes, or for segmentation of its pixels' classes)."""

from __future__ import annotations

import math

import numpy as np


def label_counts(targets: np.ndarray, labeled: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class counts ``[C]`` of the labeled samples' labels (``targets``: the pool's labels ``[N]``, or its
    segmentation masks ``[N, H, W]``, whose pixels are counted; values outside 0..C-1, e.g. ignore, are not)."""
    t = np.asarray(targets)[labeled].ravel()
    t = t[(t >= 0) & (t < num_classes)]
    return np.bincount(t.astype(np.int64), minlength=num_classes)


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


def stage_quality(record: dict) -> float:
    """A stage record's quality metric (a StageRecord dict): mIoU for segmentation, test accuracy otherwise."""
    return record["accuracy"] if record.get("miou") is None else record["miou"]


def objective_metrics(records: list[dict]) -> dict[str, float]:
    """Area under accuracy-vs-labels (trapezoid, divided by the label range: in [0, 1]) and last accuracy.

    Segmentation runs are judged by mIoU instead of (pixel) accuracy."""
    xs = [r["num_labeled"] for r in records]
    ys = [stage_quality(r) for r in records]
    if len(xs) < 2 or xs[-1] == xs[0]:
        auc = ys[-1]
    else:
        auc = sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(len(xs) - 1)) / (xs[-1] - xs[0])
    return {"auc": float(auc), "final_accuracy": float(ys[-1])}


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """``[C, C]`` int64 counts, rows = target class, columns = predicted class, over every pixel (or sample)
    whose target is in 0..C-1 (ignore pixels, e.g. 255, do not count)."""
    pred, target = np.asarray(pred).ravel(), np.asarray(target).ravel()
    keep = (target >= 0) & (target < num_classes)
    flat = target[keep].astype(np.int64) * num_classes + pred[keep].astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_metrics(confusion: np.ndarray) -> dict:
    """mIoU, pixel accuracy, mean class accuracy and per-class IoU / accuracy from a confusion matrix.

    IoU_c = TP / (TP + FP + FN). A class absent from both prediction and target has no IoU (nan) and is left out
    of the mean, as in the Cityscapes benchmark scripts; one absent from the target but predicted has IoU 0.
    """
    cm = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(cm)
    gt, pr = cm.sum(1), cm.sum(0)
    union = gt + pr - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt > 0, tp / gt, np.nan)
    total = cm.sum()
    return {
        "miou": _nanmean(iou),
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "mean_class_accuracy": _nanmean(acc),
        "per_class_iou": [float(v) for v in iou],
        "per_class_accuracy": [float(v) for v in acc],
    }


def _nanmean(values: np.ndarray) -> float:
    present = values[~np.isnan(values)]
    return float(present.mean()) if present.size else float("nan")
