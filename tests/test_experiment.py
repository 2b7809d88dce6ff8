"""The loop end to end: growth per stage, resume after a real kill, bad input, entry points."""

import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tavaal import checkpoint
from tavaal.config import load_config
from tavaal.experiment import run_experiment

from conftest import ROOT, TINY, run_cli, run_main


def test_three_stage_run_grows_by_budget_and_never_relabels(tmp_path):
    cfg = load_config("configs/smoke.yaml", ["train.epochs=1", "vae.iterations=4"])
    records = run_experiment(cfg, out_dir=tmp_path, log=lambda m: None)
    assert [r.num_labeled for r in records] == [40, 80, 120]
    assert [len(r.selected) for r in records] == [40, 40, 0]
    ck = checkpoint.load_latest(tmp_path)
    assert ck.stage == 2 and checkpoint.list_stages(tmp_path) == [0, 1, 2]
    labeled_at = ck.pool.labeled_at
    assert [(labeled_at == s).sum() for s in range(3)] == [40, 40, 40]
    picks = np.concatenate([r.selected for r in records])
    assert np.unique(picks).size == picks.size == 80
    assert set(np.flatnonzero(labeled_at == 1)) == set(records[0].selected)
    for r in records:
        assert sum(r.label_counts) == r.num_labeled and 0 < r.label_entropy_norm <= 1
        assert 0 <= r.accuracy <= 1 and r.time_stage > 0
    assert set(ck.states) == {"model", "ranker"}  # the last stage trains and evaluates, but queries nothing
    assert set(checkpoint.load_stage(checkpoint.stage_dir(tmp_path, 1)).states) >= {"vae", "discriminator"}


def _wait_for(path, proc, timeout=240):
    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before {path} appeared: {proc.stderr.read()}")
        if time.time() - t0 > timeout:
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.02)


@pytest.mark.slow
def test_resume_after_kill_selects_exactly_what_an_uninterrupted_run_selects(tmp_path, capsys):
    """``python -m tavaal.run`` SIGKILLed mid-stage (a real process), resumed: the uninterrupted run and the resume
    run in this process."""
    args = TINY + ["--set", "al.stages=4", "--set", "vae.iterations=30"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert run_main(capsys, *args, "--out", str(full)).returncode == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "tavaal.run", *args, "--out", str(cut)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(checkpoint.stage_dir(cut, 1), proc)
    proc.send_signal(signal.SIGKILL)  # a real kill, mid-stage 2
    proc.wait()
    assert checkpoint.list_stages(cut)[-1] in (1, 2) and checkpoint.load_latest(cut).stage < 3
    res = run_main(capsys, "--resume", str(cut))
    assert res.returncode == 0, res.stderr
    assert "resuming from" in res.stdout
    a, b = checkpoint.load_latest(full), checkpoint.load_latest(cut)
    assert a.stage == b.stage == 3
    assert a.pool.labeled_at.tolist() == b.pool.labeled_at.tolist()
    assert [r["selected"] for r in a.records] == [r["selected"] for r in b.records]
    assert [r["accuracy"] for r in a.records] == [r["accuracy"] for r in b.records]


def _assert_one_line_error(res, needle):
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], res.stderr


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--strategy", "nope"], "unknown strategy 'nope'"),
        (["--set", "al.budget=-3"], "al.budget"),
        (["--set", "al.stages=30"], "exceed the pool"),
        (["--set", "data.name=fashionmnist", "--data-dir", "/nonexistent/fm"], "/nonexistent/fm"),
        (["--set", "model.name=mlp"], "model 'mlp' expects a vector input_shape"),  # images into an MLP
        (["--set", "data.name=toy2d"], "model 'small_cnn' expects an image input_shape"),  # vectors into a CNN
        (["--set", "device=cuda:x"], "auto, cpu, cuda or cuda:N"),
        (["--set", "train.lr=.nan"], "a finite number"),
        (["--seed", "abc"], "invalid int value: 'abc'"),  # argparse's own errors are one line too
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, extra, needle):
    res = run_main(capsys, *TINY, *extra, "--out", str(tmp_path / "out"))
    _assert_one_line_error(res, needle)
    assert not (tmp_path / "out").exists()  # nothing written


def test_a_fresh_run_into_a_directory_with_checkpoints_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_main(capsys, *TINY, "--set", "al.stages=1", "--out", str(out)).returncode == 0
    before = {p: p.read_bytes() for p in sorted(out.glob("stage-*/*"))}
    _assert_one_line_error(run_main(capsys, *TINY, "--out", str(out)), "--resume")
    assert {p: p.read_bytes() for p in sorted(out.glob("stage-*/*"))} == before


def test_resume_refuses_a_different_config(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_main(capsys, *TINY, "--set", "al.stages=2", "--out", str(out)).returncode == 0
    res = run_main(capsys, *TINY, "--set", "al.stages=3", "--set", "train.lr=0.2", "--resume", str(out))
    _assert_one_line_error(res, "train.lr")


def test_core_imports_neither_ray_nor_mlflow():
    code = (
        "import sys; import tavaal.core.training, tavaal.core.vae_training, tavaal.core.scoring, "
        "tavaal.models, tavaal.losses, tavaal.strategies, tavaal.data, tavaal.experiment, tavaal.run; "
        "bad = [m for m in ('ray', 'mlflow') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr


def test_list_entry_point():
    """The real command line (one subprocess): the other CLI cases call tavaal.run.main in this process."""
    res = run_cli("--list")
    assert res.returncode == 0
    for name in ("tavaal", "lloss_rank", "coreset", "fashionmnist", "resnet18"):
        assert name in res.stdout


def test_fashionmnist_preset_runs_end_to_end_on_real_data(tmp_path, capsys):
    """The README's main command, with a tiny budget: the preset parses and runs on the Debian files."""
    res = run_main(
        capsys,
        "--config",
        "configs/fashionmnist_tavaal_cpu.yaml",
        "--out",
        str(tmp_path / "fm"),
        "--set",
        "al.stages=2",
        "--set",
        "al.initial=64",
        "--set",
        "al.budget=32",
        "--set",
        "al.subset_size=256",
        "--set",
        "train.epochs=15",
        "--set",
        "vae.iterations=3",
        "--set",
        "data.num_test=500",
        "--json",
        str(tmp_path / "records.json"),
    )
    assert res.returncode == 0, res.stderr
    assert "stage 1 of 0..1  labeled 96" in res.stdout
    import json

    records = json.loads((tmp_path / "records.json").read_text())
    assert [r["num_labeled"] for r in records] == [64, 96] and len(records[0]["label_counts"]) == 10
    assert records[1]["accuracy"] > 0.3  # 10 classes: well above chance (0.1) after 15 epochs on 96 labels
