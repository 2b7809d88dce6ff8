"""Segmentation end to end: mIoU and the per-image loss on hand-made answers, masks moved with their images,
every strategy on the shapes set, config checks, tracking names, and a 3-stage run killed and resumed."""

import math
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from tavaal import checkpoint
from tavaal.config import load_config
from tavaal.core.metrics import confusion_matrix, label_counts, label_entropy, segmentation_metrics
from tavaal.core.precision import for_device
from tavaal.data.base import IGNORE_INDEX, augment_batch
from tavaal.errors import ConfigError
from tavaal.experiment import run_experiment
from tavaal.losses import per_sample_task_loss
from tavaal.registry import STRATEGIES
from tavaal.strategies import QueryContext, build_strategy
from tavaal.tracking.metrics import stage_metrics

from conftest import ROOT, run_main

# the CPU preset made tiny: 96 pool / 32 test images of 16x16, one epoch, a few VAE iterations
TINY_SEG = [
    "data.num_train=96",
    "data.num_test=32",
    "data.image_size=16",
    "train.epochs=1",
    "train.batch_size=16",
    "vae.iterations=4",
    "vae.batch_size=16",
    "al.initial=16",
    "al.budget=16",
    "al.stages=3",
    "al.subset_size=48",
]
CFG = for_device(load_config("configs/shapes_seg_cpu.yaml", TINY_SEG), "cpu")  # as a run resolves it (score batch)


def test_miou_known_answer_with_an_ignored_pixel_and_a_class_absent_from_both():
    # C = 4; class 3 appears in neither target nor prediction; the last pixel is ignored (its prediction, 2,
    # must not count as a false positive of class 2)
    target = np.array([[0, 0, 1], [1, 2, IGNORE_INDEX]])
    pred = np.array([[0, 1, 1], [1, 0, 2]])
    cm = confusion_matrix(pred, target, 4)
    assert cm.sum() == 5 and cm[0, 0] == 1 and cm[0, 1] == 1 and cm[1, 1] == 2 and cm[2, 0] == 1
    m = segmentation_metrics(cm)
    # IoU: class 0 = 1 / (1 + 1 FP + 1 FN) = 1/3, class 1 = 2 / (2 + 1 FP) = 2/3, class 2 = 0 / 1 = 0, class 3 nan
    assert m["per_class_iou"][:3] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert math.isnan(m["per_class_iou"][3])
    assert m["miou"] == pytest.approx(1 / 3)
    assert m["pixel_accuracy"] == pytest.approx(3 / 5)
    assert m["mean_class_accuracy"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    # a class predicted but absent from the target has IoU 0 and counts in the mean
    m2 = segmentation_metrics(confusion_matrix(np.array([3, 0]), np.array([0, 0]), 4))
    assert m2["per_class_iou"][0] == pytest.approx(0.5) and m2["per_class_iou"][3] == 0.0
    assert m2["miou"] == pytest.approx(0.25)


def test_per_image_loss_is_the_mean_pixel_ce_over_pixels_not_ignored():
    logits = torch.zeros(3, 2, 1, 2)  # 3 images of 1x2 pixels, 2 classes
    logits[0, 0, 0, 0] = 2.0  # image 0, pixel 0: logit 2 for class 0
    y = torch.tensor([[[0, 1]], [[1, IGNORE_INDEX]], [[IGNORE_INDEX, IGNORE_INDEX]]])
    loss = per_sample_task_loss(logits, y)
    expected0 = (math.log(1 + math.exp(-2.0)) + math.log(2.0)) / 2  # mean of the image's two pixels
    assert loss.shape == (3,)
    assert loss.tolist() == pytest.approx([expected0, math.log(2.0), 0.0])  # 1 pixel; no pixel -> 0
    cls = per_sample_task_loss(torch.tensor([[2.0, 0.0]]), torch.tensor([1]))  # classification: plain CE
    assert cls.item() == pytest.approx(math.log(1 + math.exp(2.0)))


def test_masks_move_with_their_images_and_padding_is_ignored():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4) / 32
    masks = torch.arange(2 * 4 * 4).view(2, 4, 4) % 5
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    xa, ma = augment_batch(x, 1, True, g1, masks)
    xb, none = augment_batch(x, 1, True, g2)
    assert none is None and torch.equal(xa, xb)  # the masks do not change the random draws
    for i in range(2):  # every pixel whose image value came from the original has its mask value
        inside = ma[i] != IGNORE_INDEX
        src = (x[i, 0] * 32).round().long()
        lookup = {int(v): int(m) for v, m in zip(src.flatten(), masks[i].flatten())}
        vals = (xa[i, 0] * 32).round().long()
        assert all(lookup[int(v)] == int(m) for v, m in zip(vals[inside], ma[i][inside]))
        assert (xa[i, 0][~inside] == 0).all()  # padding: black image, ignored mask


def test_label_counts_count_the_labeled_pixels():
    masks = np.array([[[0, 1], [1, IGNORE_INDEX]], [[2, 2], [2, 2]], [[0, 0], [0, 0]]], dtype=np.uint8)
    counts = label_counts(masks, np.array([0, 1]), 3)
    assert counts.tolist() == [1, 2, 4]
    h, h_norm = label_entropy(counts)
    assert h == pytest.approx(-sum(p * math.log(p) for p in (1 / 7, 2 / 7, 4 / 7)))
    assert label_counts(np.array([2, 0, 1]), np.array([0, 2]), 3).tolist() == [0, 1, 1]  # classification


@pytest.fixture(scope="module")
def seg_stage():
    import dataclasses

    from tavaal.backends import LocalBackend
    from tavaal.core.pool import draw_candidates, initial_pool
    from tavaal.core.seeding import numpy_rng
    from tavaal.core.training import ModelSpec, TaskJob
    from tavaal.data import build_dataset

    data = build_dataset(CFG.data, CFG.seed)
    pool = initial_pool(len(data.train), 16, numpy_rng(0, "initial"))
    cand = draw_candidates(pool, 48, numpy_rng(0, "cand"))
    spec = ModelSpec(CFG.model.name, data.input_shape, data.num_classes)
    backend = LocalBackend()
    backend.prepare(data, torch.device("cpu"))
    train = dataclasses.replace(CFG.train, epochs=1)
    tasks = {
        loss: backend.train_task(TaskJob(spec, train, pool.labeled_indices(), loss, seed=1))
        for loss in (None, "rank", "margin")
    }
    return data, pool, cand, spec, backend, tasks


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_strategy_works_on_segmentation(seg_stage, name):
    data, pool, cand, spec, backend, tasks = seg_stage
    assert data.task == "segmentation" and data.train.y.shape[1:] == (16, 16)
    strategy = build_strategy(name)
    ctx = QueryContext(
        CFG, data, backend, spec, tasks[strategy.ranker_loss], pool.labeled_indices(), cand, 12, stage=0, seed=5
    )
    result = strategy.query(ctx)
    assert result.selected.size == 12 and np.unique(result.selected).size == 12
    assert np.isin(result.selected, cand).all()
    if result.scores is not None:
        assert result.scores.shape == cand.shape and np.isfinite(result.scores).all()


def test_vae_input_size_resizes_for_the_vae_only(seg_stage):
    import dataclasses

    data, pool, cand, spec, backend, tasks = seg_stage
    cfg = dataclasses.replace(CFG, vae=dataclasses.replace(CFG.vae, input_size=32))
    ctx = QueryContext(cfg, data, backend, spec, tasks["rank"], pool.labeled_indices(), cand, 12, stage=0, seed=5)
    result = build_strategy("tavaal").query(ctx)
    assert result.selected.size == 12
    first = next(k for k in result.states["vae"] if k.endswith("weight") and result.states["vae"][k].dim() == 4)
    assert result.states["vae"][first].shape[1] == 3  # an image VAE, built for (3, 32, 32) on 16x16 data
    enc_fc = [v for k, v in result.states["vae"].items() if v.dim() == 2]
    assert any(v.shape[1] == 16 * 8 * 2 * 2 for v in enc_fc)  # 32 / 16 = 2: flatten of 8 x base(16) x 2 x 2


@pytest.mark.parametrize(
    "sets,needle",
    [
        (["task=classification"], "set task: segmentation"),
        (["model.name=small_cnn"], "model 'small_cnn' solves classification"),
    ],
)
def test_task_and_model_must_match_the_data(tmp_path, sets, needle):
    cfg = load_config("configs/shapes_seg_cpu.yaml", TINY_SEG + sets)
    with pytest.raises(ConfigError, match=needle):
        run_experiment(cfg, out_dir=tmp_path, log=lambda m: None)
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize(
    "sets,needle",
    [
        (["data.imbalance_ratio=10"], "data.imbalance_ratio"),
        (["al.oracle=manual"], "al.oracle"),
        (["task=detection"], "classification or segmentation"),
        (["vae.input_size=4"], "vae.input_size"),
    ],
)
def test_segmentation_config_checks(sets, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config("configs/shapes_seg_cpu.yaml", TINY_SEG + sets)


def test_stage_metrics_of_a_segmentation_record():
    rec = {
        "accuracy": 0.9,
        "balanced_accuracy": 0.5,
        "num_labeled": 16,
        "label_entropy": 0.7,
        "label_entropy_norm": 0.4,
        "label_counts": [10, 5],
        "per_class_accuracy": [1.0, 0.0],
        "miou": 0.45,
        "per_class_iou": [0.9, float("nan")],
    }
    m = stage_metrics(rec)
    assert m["test/miou"] == 0.45 and m["test/pixel_accuracy"] == 0.9 and m["test/accuracy"] == 0.9
    assert m["test/iou_class_0"] == 0.9 and math.isnan(m["test/iou_class_1"])
    assert list(m)[-1] == "test/accuracy"  # the marker still comes last
    assert "test/miou" not in stage_metrics({**rec, "miou": None})


@pytest.mark.slow
def test_three_stage_segmentation_run_killed_and_resumed_selects_the_same(tmp_path, capsys):
    """A real ``python -m tavaal.run`` SIGKILLed in stage 1; the uninterrupted run and the resume run in this
    process."""
    args = ["--config", "configs/shapes_seg_cpu.yaml", *[a for s in TINY_SEG for a in ("--set", s)]]
    full, cut = tmp_path / "full", tmp_path / "cut"
    res = run_main(capsys, *args, "--out", str(full))
    assert res.returncode == 0, res.stderr
    assert "miou" in res.stdout
    proc = subprocess.Popen(
        [sys.executable, "-m", "tavaal.run", *args, "--out", str(cut)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    from test_experiment import _wait_for

    _wait_for(checkpoint.stage_dir(cut, 0), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.load_latest(cut).stage < 2
    res = run_main(capsys, "--resume", str(cut))
    assert res.returncode == 0, res.stderr
    a, b = checkpoint.load_latest(full), checkpoint.load_latest(cut)
    assert a.stage == b.stage == 2
    assert a.pool.labeled_at.tolist() == b.pool.labeled_at.tolist()
    assert [r["selected"] for r in a.records] == [r["selected"] for r in b.records]
    assert [r["miou"] for r in a.records] == [r["miou"] for r in b.records]
    for r in a.records:
        assert 0 <= r["miou"] <= 1 and len(r["per_class_iou"]) == 5
        assert sum(r["label_counts"]) == r["num_labeled"] * 16 * 16  # pixels of the labeled images (no ignore)


@pytest.mark.parametrize(
    "preset,task,model",
    [
        ("configs/shapes_seg_cpu.yaml", "segmentation", "seg_small"),
        ("configs/cityscapes_tavaal.yaml", "segmentation", "deeplabv3_resnet50"),
        ("configs/caltech101_tavaal.yaml", "classification", "resnet18"),
    ],
)
def test_presets_validate(preset, task, model):
    cfg = load_config(preset)
    assert (cfg.task, cfg.model.name) == (task, model)
