"""Users' own data: Parquet and image-folder pools (real PNG bytes, real Parquet files), the manual oracle's
round trip through the CLI, bad labels files, and Parquet scoring through Ray Data (tier: Ray, 2 CPUs)."""

from __future__ import annotations

import csv
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from tavaal import checkpoint
from tavaal.config import BackendConfig, DataConfig, load_config
from tavaal.data import build_dataset
from tavaal.data.synthetic import synthetic_images
from tavaal.experiment import run_experiment
from tavaal.labelfiles import pending, row_ids, with_labels
from tavaal.oracle import ManualOracle
from tavaal.run import main

from conftest import N_POOL, NAMES, digest, run_cli, trained_stage
from conftest import pool_args as args


def answer(request: Path, truth: dict, dest: Path | None = None) -> Path:
    """What annotators do: fill in the label column of the request CSV."""
    rows = list(csv.DictReader(request.open()))
    dest = dest or request
    with dest.open("w", newline="") as f:
        w = csv.DictWriter(f, ["id", "path", "label"])
        w.writeheader()
        w.writerows({**r, "label": truth[r["id"]]} for r in rows)
    return dest


# ---------------------------------------------------------------- data


def test_parquet_pool_decodes_png_pixels_lazily_and_holds_out_a_stable_test_share(files):
    cfg = DataConfig(name="parquet", path=str(files["dir"] / "pool.parquet"), image_size=16, channels=1)
    data = build_dataset(cfg, seed=0)
    assert data.class_names == ("bl", "br", "tl", "tr") and data.num_classes == 4
    assert len(data.train) + len(data.test) == N_POOL and 40 <= len(data.test) <= 80  # ~20 % by id hash
    assert not set(data.train.ids) & set(data.test.ids)
    assert data.input_shape == (1, 16, 16)
    pos = np.array([0, 7, len(data.train) - 1])
    got = data.train.x[pos].numpy()
    want = np.stack([files["pixels"][i] for i in data.train.ids[pos]])
    np.testing.assert_array_equal(got, want)  # PNG is lossless: the exact pixels
    assert [data.class_names[c] for c in data.train.y[pos]] == [files["truth"][i] for i in data.train.ids[pos]]
    # the image column is never pickled (a Ray worker reads it itself): the data set ships as ids and labels
    assert len(pickle.dumps(data)) < (files["dir"] / "pool.parquet").stat().st_size / 2
    again = build_dataset(cfg, seed=5)  # the held-out share depends on the ids alone, not the seed
    assert list(again.test.ids) == list(data.test.ids)
    # other sizes and channels: resized and converted when decoded
    rgb = build_dataset(DataConfig(name="parquet", path=str(files["dir"] / "pool.parquet"), image_size=24), seed=0)
    x = rgb.train.x[np.arange(4)]
    assert x.shape == (4, 3, 24, 24) and x.dtype == torch.uint8
    assert torch.equal(x[:, 0], x[:, 1])  # grey PNGs: R = G = B


def test_image_folder_pool_with_class_folders_and_an_unlabeled_folder(tmp_path):
    x, y = synthetic_images(24, np.random.default_rng(1))
    for i, (a, c) in enumerate(zip(x, y)):
        folder = tmp_path / "imgs" / (NAMES[c] if i < 12 else "unlabeled")
        folder.mkdir(parents=True, exist_ok=True)
        size = 16 if i % 2 else 20  # mixed sizes are resized to data.image_size
        Image.fromarray(a[0]).resize((size, size)).save(folder / f"{i:03d}.png")
    (tmp_path / "imgs" / "empty_class").mkdir()  # declares a class nobody has labeled yet
    cfg = DataConfig(name="imagefolder", path=str(tmp_path / "imgs"), image_size=16, channels=1, test_fraction=0.0)
    data = build_dataset(cfg, seed=0)
    assert data.class_names == ("bl", "br", "empty_class", "tl", "tr")
    assert len(data.train) == 24 and len(data.test) == 0 and (data.train.y < 0).sum() == 12
    assert data.train.ids[0].count("/") == 1 and data.train.x[np.arange(24)].shape == (24, 1, 16, 16)
    odd = int(np.flatnonzero([i.endswith("001.png") for i in data.train.ids])[0])
    np.testing.assert_array_equal(data.train.x[odd].numpy(), x[1])  # 16x16 files: the exact pixels
    # the manual oracle asks for the unlabeled folder's images by their own paths
    res = main(
        [
            "--config",
            "configs/smoke.yaml",
            "--set",
            "data.name=imagefolder",
            "--set",
            f"data.path={tmp_path / 'imgs'}",
            "--set",
            "data.image_size=16",
            "--set",
            "data.channels=1",
            "--set",
            "data.num_train=null",
            "--set",
            "al.budget=4",
            "--set",
            "al.subset_size=8",
            "--set",
            "train.epochs=1",
            "--set",
            "vae.iterations=2",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert res == 0
    rows = list(csv.DictReader((tmp_path / "run" / "to_label" / "stage_1.csv").open()))
    assert len(rows) == 4 and all(r["id"].startswith("unlabeled/") and r["label"] == "" for r in rows)
    assert all(Path(r["path"]).is_file() and r["path"].endswith(r["id"].split("/")[1]) for r in rows)


# ---------------------------------------------------------------- the loop


def test_parquet_pool_runs_two_stages_with_the_simulated_oracle(files, tmp_path):
    out = tmp_path / "sim"
    assert main(args(files, "pool.parquet", out, "--set", "train.epochs=4", "--json", str(tmp_path / "r.json"))) == 0
    records = json.loads((tmp_path / "r.json").read_text())
    assert [r["num_labeled"] for r in records] == [40, 80] and len(records[0]["selected"]) == 40
    assert [sum(r["label_counts"]) for r in records] == [40, 80]
    assert records[1]["accuracy"] > 0.5  # 4 classes: well above chance after 4 epochs on 80 labels
    assert not (out / "to_label").exists()  # every label known: auto is the simulated oracle


def test_manual_round_trip_selects_what_the_simulated_oracle_selects(files, tmp_path, capsys):
    sim, man = tmp_path / "sim", tmp_path / "man"
    assert main(args(files, "pool.parquet", sim)) == 0
    assert main(args(files, "unlabeled.parquet", man, "--oracle", "manual")) == 0
    said = capsys.readouterr().out
    assert f"--resume {man} --labels {man / 'to_label' / 'stage_0.csv'}" in said
    assert not checkpoint.list_stages(man)  # stopped before stage 0: nobody has labeled anything yet
    for stage in (0, 1):
        request = man / "to_label" / f"stage_{stage}.csv"
        rows = list(csv.DictReader(request.open()))
        assert len(rows) == 40 and [r["label"] for r in rows] == [""] * 40
        table = pq.read_table(man / "to_label" / f"stage_{stage}.parquet")
        assert table.column("id").to_pylist() == [r["id"] for r in rows]
        # the pool holds PNG bytes: the request exports them, and the files are the pool's images
        first = np.asarray(Image.open(rows[0]["path"]))
        np.testing.assert_array_equal(first, files["pixels"][rows[0]["id"]][0])
        assert main(["--resume", str(man), "--labels", str(answer(request, files["truth"]))]) == 0
        stored = json.loads((man / "labels" / f"stage_{stage}.json").read_text())["labels"]
        assert stored == {r["id"]: files["truth"][r["id"]] for r in rows}
    a, b = checkpoint.load_latest(sim), checkpoint.load_latest(man)
    assert a.stage == b.stage == 1
    assert b.pool.labeled_at.tolist() == a.pool.labeled_at.tolist()
    assert [r["selected"] for r in b.records] == [r["selected"] for r in a.records]
    assert [r["accuracy"] for r in b.records] == [r["accuracy"] for r in a.records]
    assert [r["label_counts"] for r in b.records] == [r["label_counts"] for r in a.records]


class Annotator(ManualOracle):
    """An oracle passed into the loop (a labeling service, say): it answers every pending batch at once."""

    def __init__(self, cfg, truth: dict) -> None:
        super().__init__(cfg)
        self.truth, self.asked = truth, []

    def label(self, stage, data, pool):
        ids = row_ids(data, pending(pool, data))
        self.asked.append((stage, len(ids)))
        return with_labels(data, {i: self.truth[i] for i in ids}, False, "annotator")


def test_an_oracle_passed_into_the_loop_labels_what_the_simulated_oracle_labels(files, tmp_path):
    sets = args(files, "unlabeled.parquet", tmp_path)[3:-2:2]  # the --set values
    cfg = load_config("configs/smoke.yaml", sets)
    annotator = Annotator(cfg, files["truth"])
    got = run_experiment(cfg, oracle=annotator, log=lambda m: None)
    want = run_experiment(
        load_config("configs/smoke.yaml", [*sets, f"data.path={files['dir'] / 'pool.parquet'}"]), log=lambda m: None
    )
    assert annotator.asked == [(0, 40), (1, 40)]  # stage 0's initial set, then stage 0's picks before stage 1
    assert [r.selected for r in got] == [r.selected for r in want] and len(got[0].selected) == 40
    assert [r.label_counts for r in got] == [r.label_counts for r in want]
    assert [r.accuracy for r in got] == [r.accuracy for r in want]


@pytest.fixture(scope="module")
def stopped(files, tmp_path_factory):
    """A manual run stopped after stage 0's query: stage_1.csv waits for labels (copied per test)."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    assert main(args(files, "unlabeled.parquet", out)) == 0  # auto: unlabeled rows -> manual oracle
    answer(out / "to_label" / "stage_0.csv", files["truth"])
    assert main(["--resume", str(out), "--labels", str(out / "to_label" / "stage_0.csv")]) == 0
    assert checkpoint.list_stages(out) == [0] and (out / "to_label" / "stage_1.csv").is_file()
    return out


def _bad_files(request: Path, truth: dict) -> dict[str, tuple[str, str]]:
    """name -> (file content, expected piece of the one-line error)."""
    rows = [r["id"] for r in csv.DictReader(request.open())]
    good = [f"{i},{truth[i]}" for i in rows]
    other = next(i for i in truth if i not in rows)
    return {
        "unknown id": (
            "\n".join(["id,label", *good[:5], "nope,tl", *good[5:]]),
            "line 7: id 'nope' is not in the pool",
        ),
        "not requested": ("\n".join(["id,label", f"{other},tl", *good]), f"line 2: id '{other}' was not requested"),
        "duplicate": (
            "\n".join(["id,label", *good, good[3]]),
            f"line 42: id '{rows[3]}' is labeled twice (first on line 5)",
        ),
        "unknown class": (
            "\n".join(["id,label", *good[:2], f"{rows[2]},zebra", *good[3:]]),
            "line 4: label 'zebra' is not a known class (bl, br, tl, tr)",
        ),
        "wrong columns": ("\n".join(["image_id,class", *good]), "line 1: columns are image_id, class; expected"),
        "empty": ("", "is empty"),
        "missing ids": (
            "\n".join(["id,label", *good[:-1]]),
            f"no line for 1 of the 40 requested ids (e.g. '{rows[-1]}')",
        ),
        "empty label": ("\n".join(["id,label", f"{rows[0]},", *good[1:]]), f"line 2: id '{rows[0]}' has no label"),
    }


def test_bad_labels_files_exit_2_with_one_line_and_change_nothing(files, stopped, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    before = digest(run)
    for name, (content, needle) in _bad_files(run / "to_label" / "stage_1.csv", files["truth"]).items():
        bad = tmp_path / f"{name.replace(' ', '_')}.csv"
        bad.write_text(content)
        capsys.readouterr()
        assert main(["--resume", str(run), "--labels", str(bad)]) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0] and str(bad) in err[0], (name, err)
        assert digest(run) == before, name  # every file byte-identical: the AL state is untouched
    # the real entry point: exit code 2, one line on stderr
    res = run_cli("--resume", str(run), "--labels", str(tmp_path / "duplicate.csv"))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "labeled twice" in res.stderr
    assert digest(run) == before
    # after fixing the file the same command goes on to the next stage
    fixed = answer(run / "to_label" / "stage_1.csv", files["truth"], tmp_path / "fixed.csv")
    assert main(["--resume", str(run), "--labels", str(fixed)]) == 0
    assert checkpoint.load_latest(run).stage == 1 and checkpoint.load_latest(run).pool.num_labeled == 80


def test_resume_without_labels_asks_again_and_labels_with_nothing_pending_are_refused(stopped, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    filled = run / "to_label" / "stage_1.csv"
    filled.write_text(filled.read_text().replace(",\n", ",work in progress\n", 1))  # people are editing it
    assert main(["--resume", str(run)]) == 0
    assert "needs labels for 40 images" in capsys.readouterr().out
    assert "work in progress" in filled.read_text()  # an existing request is never overwritten
    assert checkpoint.list_stages(run) == [0]
    finished = tmp_path / "fresh"
    assert (
        main(
            [
                "--config",
                "configs/smoke.yaml",
                "--set",
                "al.stages=1",
                "--set",
                "train.epochs=1",
                "--out",
                str(finished),
            ]
        )
        == 0
    )
    assert main(["--resume", str(finished), "--labels", str(filled)]) == 2
    assert "no labels are pending" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--set", "data.id_column=key"], "has no column 'key' (data.id_column)"),
        (["--oracle", "simulated", "--set", "data.path=UNL"], "have no label (e.g. id 'img0000')"),
        (["--oracle", "manual"], "already has a label"),
        (["--set", "data.path=/nonexistent/pool.parquet"], "/nonexistent/pool.parquet"),
        (["--labels", "x.csv"], "--resume"),
    ],
)
def test_bad_own_data_input_exits_2(files, tmp_path, capsys, extra, needle):
    extra = [e.replace("UNL", str(files["dir"] / "unlabeled.parquet")) for e in extra]
    assert main(args(files, "pool.parquet", tmp_path / "out", *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- Ray Data


def test_parquet_pool_scores_through_ray_data_equal_the_local_loop(files, ray_cluster):
    from tavaal.backends.ray.backend import RayBackend
    from tavaal.backends.ray.parquet import score_parquet_with_ray_data
    from tavaal.core.scoring import score_pool
    from tavaal.strategies.scorers import TaskScorer

    from test_ray_data import Combined  # several scorers as one: one pipeline covers them all

    cfg = load_config(
        "configs/smoke.yaml",
        [
            "train.epochs=1",
            "data.name=parquet",
            "data.image_size=16",
            "data.channels=1",
            "data.num_train=null",
            "data.num_test=null",
            f"data.path={files['dir'] / 'pool.parquet'}",
        ],
    )
    data, pool, cand, spec, local, tasks = trained_stage(cfg, 150)
    scorer = Combined({kind: TaskScorer(spec, tasks["rank"], kind) for kind in ("entropy", "rhat")})
    idx = np.random.default_rng(3).permutation(cand)  # any order: rows come back aligned with it
    want = score_pool(scorer, data, idx, 37, torch.device("cpu"))
    got = score_parquet_with_ray_data(scorer, data, cfg.data, idx, batch_size=37, concurrency=1)  # 1 CPU reads
    assert set(got) == set(want) == {"entropy/entropy", "rhat/rhat"}
    for name in want:
        assert got[name].shape == want[name].shape == (idx.size,)
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-5, err_msg=name)
        assert np.ptp(got[name]) > 0  # not a constant output
    with pytest.raises(ValueError, match="leave none of the cluster's 2 CPUs"):  # would hang, not fail
        score_parquet_with_ray_data(scorer, data, cfg.data, idx, batch_size=37, concurrency=2)
    # --backend ray takes this path for a Parquet pool (the files are read by Ray Data, not the driver)
    backend = RayBackend(BackendConfig(name="ray"), cfg.data)
    backend.prepare(data, torch.device("cpu"))
    try:
        got = backend.score(scorer, idx, 37)
    finally:
        backend.close()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-5, err_msg=name)


def test_ray_backend_relabel_hands_the_new_labels_to_later_jobs(files, ray_cluster):
    """An oracle that answers mid-run (``Backend.relabel``): the object store holds the new labels afterwards."""
    import ray

    from tavaal.backends.ray.backend import RayBackend

    cfg = load_config(
        "configs/smoke.yaml",
        [
            "data.name=parquet",
            "data.image_size=16",
            "data.channels=1",
            "data.num_train=null",
            "data.num_test=null",
            f"data.path={files['dir'] / 'unlabeled.parquet'}",
            f"data.classes=[{', '.join(NAMES)}]",
        ],
    )
    data = build_dataset(cfg.data, 0)
    assert not data.known_rows.any()
    ids = [f"img{i:04d}" for i in range(5)]
    answered = with_labels(data, {i: files["truth"][i] for i in ids}, False, "test")
    backend = RayBackend(BackendConfig(name="ray"), cfg.data)
    backend.prepare(data, torch.device("cpu"))
    try:
        backend.relabel(answered)
        stored = ray.get(backend.data_ref)
        assert backend.data is answered and stored.known_rows.sum() == 5
        assert stored.train.y[:5].tolist() == [NAMES.index(files["truth"][i]) for i in ids]
    finally:
        backend.close()
