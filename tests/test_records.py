"""Records you can trust: an extended run picks what an uninterrupted one picks, a stage is believed only when it is
well-formed and this run's, one process per run directory, and bad input refused in one line before any work."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tavaal import checkpoint
from tavaal.config import load_config
from tavaal.experiment import run_experiment

from conftest import TINY, run_main

CFG = ["train.epochs=1", "vae.iterations=4"]


def _run(out: Path, *sets: str, resume: bool = False):
    cfg = load_config("configs/smoke.yaml", [*CFG, *sets])
    return run_experiment(cfg, out_dir=out, resume=resume, log=lambda m: None)


def _files(folder: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- extending a finished run ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["tavaal", "random"])
def test_a_run_extended_from_3_to_5_stages_picks_what_an_uninterrupted_5_stage_run_picks(tmp_path, capsys, strategy):
    ref = _run(tmp_path / "five", f"al.strategy={strategy}", "al.stages=5")
    _run(tmp_path / "three", f"al.strategy={strategy}", "al.stages=3")
    res = run_main(capsys, "--resume", str(tmp_path / "three"), "--set", "al.stages=5")
    assert res.returncode == 0, res.stderr
    # one numbering: stages 0..2 were complete, stage 2 (the old last one) queries now, then 3 and 4 run
    assert "stages 0..2 complete, stage 2 queries next, 120 labeled" in res.stdout
    assert [line.split("  ")[0] for line in res.stdout.splitlines() if line.startswith("stage ")] == [
        f"stage {s} of 0..4" for s in (2, 3, 4)
    ]
    ext = checkpoint.load_latest(tmp_path / "three")
    assert [r["num_labeled"] for r in ext.records] == [40, 80, 120, 160, 200] == [r.num_labeled for r in ref]
    assert [r["selected"] for r in ext.records] == [r.selected for r in ref]
    assert [r["accuracy"] for r in ext.records] == [r.accuracy for r in ref]
    assert ext.pool.labeled_at.tolist() == checkpoint.load_latest(tmp_path / "five").pool.labeled_at.tolist()
    # the stage that gained its query replaced the old one: no damaged or superseded copy is left behind
    assert sorted(p.name for p in (tmp_path / "three").iterdir()) == ["run.json"] + [f"stage-000{s}" for s in range(5)]


def test_al_stages_below_the_stages_complete_is_refused(tmp_path, capsys):
    _run(tmp_path / "run", "al.stages=3")
    before = _files(tmp_path / "run")
    res = run_main(capsys, "--resume", str(tmp_path / "run"), "--set", "al.stages=2")
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "'al.stages' is 2 but" in res.stderr and "stages 0..2 complete" in res.stderr
    assert _files(tmp_path / "run") == before


# --- a stage is believed only when it is well-formed and this run's -------------------------------------------------


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    return out, _run(out)


def _write_manifest(value):
    def damage(d: Path) -> None:
        (d / "manifest.json").write_text(json.dumps(value))

    return damage


def _resign(d: Path) -> None:
    """Rewrite the manifest so that it matches the files (what someone covering their tracks would do)."""
    m = json.loads((d / "manifest.json").read_text())
    for name in m["files"]:
        m["files"][name] = {"bytes": (d / name).stat().st_size, "sha256": checkpoint._sha256(d / name)}
    (d / "manifest.json").write_text(json.dumps(m))


def _state_says_stage_1(d: Path) -> None:
    payload = torch.load(d / "state.pt", weights_only=True)
    payload["stage"] = 1
    torch.save(payload, d / "state.pt")
    _resign(d)


def _records_cut(d: Path) -> None:
    payload = torch.load(d / "state.pt", weights_only=True)
    payload["records"] = payload["records"][1:]
    torch.save(payload, d / "state.pt")
    _resign(d)


def _without_bytes(d: Path) -> None:
    m = json.loads((d / "manifest.json").read_text())
    del m["files"]["state.pt"]["bytes"]
    (d / "manifest.json").write_text(json.dumps(m))


SHAPES = {
    "manifest null": (_write_manifest(None), "malformed manifest.json (a NoneType, not a mapping)"),
    "manifest a list": (_write_manifest([1, 2]), "malformed manifest.json (a list, not a mapping)"),
    "files a number": (_write_manifest({"stage": 2, "files": 5}), "'files' must name exactly state.pt, config.json"),
    "files empty": (_write_manifest({"stage": 2, "files": {}}), "'files' must name exactly state.pt, config.json"),
    "entry without bytes": (_without_bytes, "the entry of state.pt needs 'bytes'"),
    "state of stage 1": (_state_says_stage_1, "inconsistent (its state is stage 1)"),
    "records cut": (_records_cut, "its records are not stages 0..2"),
}


@pytest.mark.parametrize("kind", list(SHAPES))
def test_a_malformed_or_inconsistent_stage_is_damaged_and_resume_falls_back(full_run, tmp_path, capsys, kind):
    ref_dir, ref = full_run
    out = tmp_path / "run"
    shutil.copytree(ref_dir, out)
    damage, needle = SHAPES[kind]
    damage(checkpoint.stage_dir(out, 2))
    lines: list[str] = []
    assert checkpoint.load_latest(out, log=lines.append).stage == 1
    assert len(lines) == 2 and "stage-0002" in lines[0] and needle in lines[0], lines
    res = run_main(capsys, "--resume", str(out))
    assert res.returncode == 0, res.stderr
    assert "falling back to stage-0001" in res.stdout
    ck = checkpoint.load_latest(out)
    assert ck.stage == 2 and [r["selected"] for r in ck.records] == [r.selected for r in ref]
    assert len(list(out.glob("stage-0002.damaged-*"))) == 1


def test_a_stage_copied_to_another_number_is_not_believed(full_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(full_run[0], out)
    shutil.copytree(checkpoint.stage_dir(out, 1), checkpoint.stage_dir(out, 9))
    good = _files(checkpoint.stage_dir(out, 2))
    lines: list[str] = []
    assert checkpoint.load_latest(out, log=lines.append).stage == 2
    assert "stage-0009 holds stage 1 in its manifest, not 9" in lines[0]
    res = run_main(capsys, "--resume", str(out))  # the run is complete: nothing is redone, nothing moved aside
    assert res.returncode == 0 and "stages 0..2 complete" in res.stdout, res.stderr
    assert _files(checkpoint.stage_dir(out, 2)) == good and not list(out.glob("*.damaged-*"))


@pytest.fixture(scope="module")
def other_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("other") / "run"
    _run(out, "seed=1", "al.strategy=random")
    return out


@pytest.mark.parametrize("forge_run_id", [False, True])
def test_a_stage_copied_in_from_another_experiment_is_not_believed(full_run, other_run, tmp_path, forge_run_id):
    out = tmp_path / "run"
    shutil.copytree(full_run[0], out)
    shutil.rmtree(checkpoint.stage_dir(out, 2))
    shutil.copytree(checkpoint.stage_dir(other_run, 2), checkpoint.stage_dir(out, 2))
    if forge_run_id:  # even with this run's id written into its manifest and state, its config gives it away
        ours = json.loads((out / "run.json").read_text())["run_id"]
        d = checkpoint.stage_dir(out, 2)
        payload = torch.load(d / "state.pt", weights_only=True)
        payload["meta"]["run_id"] = ours
        torch.save(payload, d / "state.pt")
        m = json.loads((d / "manifest.json").read_text())
        m["run_id"] = ours
        (d / "manifest.json").write_text(json.dumps(m))
        _resign(d)
    lines: list[str] = []
    assert checkpoint.load_latest(out, log=lines.append).stage == 1
    needle = "another config (" if forge_run_id else "belongs to another run"
    assert needle in lines[0], lines
    if forge_run_id:
        assert "al.strategy: 'random' here, 'tavaal' in the run" in lines[0]


def test_a_damaged_run_identity_stops_the_resume_in_one_line(full_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(full_run[0], out)
    (out / "run.json").write_text("[]")
    before = _files(out)
    res = run_main(capsys, "--resume", str(out))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "run.json (the run's identity)" in res.stderr
    assert _files(out) == before


def test_a_directory_without_identity_adopts_its_oldest_stage(full_run, tmp_path, capsys):
    """As a Tune trial restoring one stage into a fresh directory does: its stage is believed."""
    out = tmp_path / "run"
    shutil.copytree(checkpoint.stage_dir(full_run[0], 1), checkpoint.stage_dir(out, 1))
    assert checkpoint.load_latest(out).stage == 1
    res = run_main(capsys, "--resume", str(out), "--set", "al.stages=3")
    assert res.returncode == 0, res.stderr
    assert [r["selected"] for r in checkpoint.load_latest(out).records] == [r.selected for r in full_run[1]]


# --- one process per run directory ----------------------------------------------------------------------------------


def test_a_second_process_on_a_run_directory_gets_one_line_and_changes_nothing(full_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(full_run[0], out)
    shutil.rmtree(checkpoint.stage_dir(out, 2))  # a resume would have work to do
    before = _files(out)
    holder = subprocess.Popen(  # another process holding the run's lock, as a running resume would
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); "
            "print('held', flush=True); time.sleep(120)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        res = run_main(capsys, "--resume", str(out))
        assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
        assert "is in use by another process" in res.stderr
        assert _files(out) == before and not list(out.glob(".*"))
    finally:
        holder.kill()
        holder.wait()
    res = run_main(capsys, "--resume", str(out))  # the lock goes with the process that held it
    assert res.returncode == 0 and checkpoint.load_latest(out).stage == 2, res.stderr


# --- bad input: one line, exit 2, before any work ------------------------------------------------------------------


def _image_folder(root: Path) -> Path:
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


BAD = {
    "num_threads huge": (["--set", "num_threads=99999999999999999999"], "'num_threads' must be in [1, 4096]"),
    "epochs 1e20": (["--set", "train.epochs=1e20"], "'train.epochs' must be in [1, 10_000]"),
    "vae iterations 1e20": (["--set", "vae.iterations=1e20"], "'vae.iterations' must be in [1, 10_000_000]"),
    "vae steps": (["--set", "vae.vae_steps=100000"], "'vae.vae_steps' must be in [1, 1000]"),
}


@pytest.mark.parametrize("check", [False, True])
@pytest.mark.parametrize("case", list(BAD))
def test_out_of_range_fields_exit_2_in_one_line_before_any_work(tmp_path, capsys, case, check):
    extra, needle = BAD[case]
    res = run_main(capsys, *TINY, *extra, "--out", str(tmp_path / "run"), *(["--check"] if check else []))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and needle in res.stderr, res.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize("check", [False, True])
def test_a_cuda_device_on_a_machine_without_one_is_one_line(tmp_path, capsys, check):
    res = run_main(capsys, *TINY, "--device", "cuda", "--out", str(tmp_path / "run"), *(["--check"] if check else []))
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "'device' is 'cuda' but torch sees no CUDA GPU" in res.stderr and not (tmp_path / "run").exists()


@pytest.mark.parametrize("check", [False, True])
def test_an_image_size_that_cannot_fit_in_memory_is_refused_before_any_work(tmp_path, capsys, check):
    folder = _image_folder(tmp_path / "imgs")
    argv = ["--set", "data.name=imagefolder", "--set", f"data.path={folder}", "--set", "model.name=small_cnn"]
    argv += ["--set", "data.image_size=65536", "--set", "al.initial=2", "--set", "al.budget=2"]
    res = run_main(capsys, *TINY, *argv, "--out", str(tmp_path / "run"), *(["--check"] if check else []))
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "inputs of shape [3, 65536, 65536] (float32) needs at least" in res.stderr
    assert "lower data.image_size" in res.stderr and not (tmp_path / "run").exists()


def test_output_paths_are_checked_before_any_work(tmp_path, capsys):
    res = run_main(capsys, *TINY, "--out", str(tmp_path / "run"), "--json", "/nonexistent/x.json")
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "--json '/nonexistent/x.json': directory '/nonexistent' does not exist" in res.stderr
    assert not (tmp_path / "run").exists()
    (tmp_path / "afile").write_text("mine")
    res = run_main(capsys, *TINY, "--out", str(tmp_path / "afile"))
    assert res.returncode == 2 and "--out" in res.stderr and "is an existing file, not a directory" in res.stderr
    assert (tmp_path / "afile").read_text() == "mine"
    res = run_main(capsys, *TINY, "--set", "al.stages=1", "--out", str(tmp_path / "ok"), "--json", str(tmp_path))
    assert res.returncode == 2 and "is a directory; pass a file path" in res.stderr
    assert not os.path.exists(tmp_path / "ok")


def test_an_extended_tracked_run_logs_the_old_last_stage_query_once_and_nothing_twice(tmp_path, capsys):
    from mlflow import MlflowClient

    uri, out = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "run"
    res = run_main(capsys, *TINY, "--out", str(out), "--tracking-uri", uri)
    assert res.returncode == 0, res.stderr
    res = run_main(capsys, "--resume", str(out), "--set", "al.stages=5", "--tracking-uri", uri)
    assert res.returncode == 0, res.stderr
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])

    def steps(key):
        return sorted(m.step for m in client.get_metric_history(run.info.run_id, key))

    assert steps("test/accuracy") == [0, 1, 2, 3, 4]  # every stage once: the re-queried stage 2 is not re-sent
    assert steps("labels/picked") == [0, 1, 2, 3]  # ... but its query is, once
    assert steps("game/disc_loss_tail") == [0, 1, 2, 3]
    picked = [a.path for a in client.list_artifacts(run.info.run_id, "selected")]
    assert picked == [f"selected/stage-000{s}.parquet" for s in range(4)]
