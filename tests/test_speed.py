"""Speed levers: each gives valid results on the smoke preset, ``precision: auto`` and the per-device
score batch resolve as documented, and benchmarks/paper_stage.py's smoke run writes its whole table."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tavaal.config import load_config
from tavaal.core import precision
from tavaal.experiment import run_experiment

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["train.epochs=1", "vae.iterations=6", "al.stages=2"]
LEVERS = {
    "bf16": ["train.precision=bf16"],
    "channels_last": ["train.channels_last=true"],
    "vae28": ["vae.input_size=28"],  # 16x16 images resized to 28x28: the published 28x28 VAE shape
    "batch128": ["al.score_batch_size=128"],
    "all": ["train.precision=bf16", "train.channels_last=true", "vae.input_size=28", "al.score_batch_size=128"],
}


@pytest.fixture
def no_bf16(monkeypatch):
    """A machine whose CPU lacks bf16 (some Intel CPUs): the support check says False."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    precision.bf16_supported.cache_clear()
    yield
    precision.bf16_supported.cache_clear()


@pytest.fixture(scope="module")
def fp32_run():
    return run_experiment(load_config(ROOT / "configs/smoke.yaml", SMOKE), log=lambda m: None)


def test_auto_precision_is_fp32_without_bf16_and_bf16_with_it(no_bf16, monkeypatch):
    assert precision.resolve_precision("auto", "cpu") == "fp32"
    assert precision.resolve_precision("bf16", "cpu") == "bf16"  # asked for explicitly: kept (emulated, slow)
    cfg = precision.for_device(load_config(ROOT / "configs/smoke.yaml", ["train.precision=auto"]), "cpu")
    assert cfg.train.precision == "fp32"
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    precision.bf16_supported.cache_clear()
    assert precision.resolve_precision("auto", torch.device("cpu")) == "bf16"
    with pytest.raises(ValueError, match="precision must be"):
        precision.resolve_precision("fp16", "cpu")


def test_auto_is_recorded_as_run(no_bf16, tmp_path):
    # resolved once at the start of the run: the checkpoint's config says what ran, and a resume with auto matches it
    cfg = load_config(ROOT / "configs/smoke.yaml", [*SMOKE, "train.precision=auto", "al.score_batch_size=null"])
    run_experiment(cfg, out_dir=tmp_path, log=lambda m: None)
    saved = json.loads(next(tmp_path.glob("stage-*/config.json")).read_text())
    assert saved["train"]["precision"] == "fp32" and saved["al"]["score_batch_size"] == 128
    more = load_config(ROOT / "configs/smoke.yaml", [*SMOKE, "train.precision=auto", "al.stages=3"])
    assert len(run_experiment(more, out_dir=tmp_path, resume=True, log=lambda m: None)) == 3


def test_score_batch_size_is_chosen_per_device():
    assert precision.score_batch_size(None, "cpu") == 128
    assert precision.score_batch_size(None, "cuda") == 512
    assert precision.score_batch_size(37, "cuda") == 37


@pytest.mark.parametrize("lever", list(LEVERS))
def test_each_lever_gives_valid_results_on_the_smoke_preset(lever, fp32_run):
    records = run_experiment(load_config(ROOT / "configs/smoke.yaml", SMOKE + LEVERS[lever]), log=lambda m: None)
    first, ref = records[0], fp32_run[0]
    assert len(first.selected) == len(set(first.selected)) == 40
    assert np.isfinite(first.info["vae_loss"]) and np.isfinite(first.health["disc_loss_tail"])
    assert abs(first.accuracy - ref.accuracy) <= 0.1 and abs(records[1].accuracy - fp32_run[1].accuracy) <= 0.1
    if lever in ("channels_last", "batch128"):  # the same maths: the same picks (up to float summation order)
        assert len(set(first.selected) & set(ref.selected)) >= 36


def test_channels_last_and_bf16_scorers_match_fp32():
    from tavaal.core.training import ModelSpec, TaskResult
    from tavaal.strategies.scorers import TaskScorer

    spec = ModelSpec("resnet18", (1, 28, 28), 10)
    model, ranker = spec.build(with_ranker=True, seed=0)
    task = TaskResult(model.state_dict(), ranker.state_dict())
    x = torch.randn(8, 1, 28, 28)
    out = {}
    for name, kwargs in {"fp32": {}, "cl": {"channels_last": True}, "bf16": {"precision": "bf16"}}.items():
        scorer = TaskScorer(spec, task, "logits", **kwargs)
        scorer.setup(torch.device("cpu"))
        out[name] = scorer(x, np.arange(8))["logits"]
        assert out[name].dtype == torch.float32
    torch.testing.assert_close(out["cl"], out["fp32"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["bf16"], out["fp32"], rtol=0.1, atol=0.1)


@pytest.mark.slow
def test_paper_stage_smoke_run_writes_every_setting_and_part(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.paper_stage", "--smoke", "--profile", "1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    md = next(tmp_path.glob("paper-stage-*.md")).read_text()
    settings = ["fp32", "bf16", "channels_last", "vae28", "batch128", "all", "all+malloc"]
    assert "| part | " + " | ".join(settings) + " |" in md
    for part in (
        "task training / it",
        "evaluation",
        "r̂",
        "VAE + D / it",
        "scoring",
        "**stage**",
        "**projected full stage** (h)",
    ):
        row = next(line for line in md.splitlines() if line.startswith(f"| {part} |"))
        cells = re.findall(r"([\d.]+) \(([\d.]+)x\)", row)
        assert len(cells) == len(settings) and cells[0][1] == "1.00", row  # ratios to the first setting
    overlap = next(line for line in md.splitlines() if line.startswith("| selected also by fp32 |"))
    assert overlap.split(" | ")[1] == "1.000"
    assert "load average (1, 5, 15 min) before" in md and "torch.profiler" in md and "wrote" in proc.stdout


@pytest.mark.slow
def test_bf16_ranker_smoke_run_writes_every_variant(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bf16_ranker", "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    md = next(tmp_path.glob("bf16-ranker-*.md")).read_text()
    rows = [line.split(" | ") for line in md.splitlines() if line.startswith("| 0 |")]
    assert [r[1] for r in rows] == ["fp32", "bf16", "bf16, no ranker", "bf16, fp32 ranker"]
    for r in rows:
        assert 0.0 <= float(r[2]) <= 1.0 and 0.0 <= float(r[3]) <= 1.0 and float(r[4]) > 0  # accuracies, CE
    assert "bf16 supported (mkldnn)" in md and "wrote" in proc.stdout
