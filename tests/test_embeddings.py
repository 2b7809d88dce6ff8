"""Embedding pools (docs/own-data.md, "Embeddings instead of images"): a Parquet column of fixed-length float
vectors, read and checked batch by batch by tavaal/data/vectors.py (held in memory, or, past a size, as an on-disk
copy, tavaal/data/vector_pool.py: the ``lazy`` fixture makes every pool take that path), trained on with the
``mlp`` task model and the VAE's vector form, scored from the files by the Ray backend; and
benchmarks/embeddings.py, which makes such a pool from Fashion-MNIST, and benchmarks/embeddings_scale.py, which
measures a large one."""

from __future__ import annotations

import csv
import gc
import json
import os
import pickle
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tavaal.config import BackendConfig, DataConfig, load_config
from tavaal.data import build_dataset, vectors
from tavaal.data.vector_pool import ParquetVectors
from tavaal.run import main

from conftest import on_ray_and_locally, run_cli

NAMES = ("a", "b", "c", "d")
N_POOL, N_TEST, DIM = 240, 80, 16


def clusters(n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """float32 ``[n, DIM]``: 4 Gaussian clusters (unit noise around centres 3 apart), and the class names."""
    centres = np.random.default_rng(7).normal(0, 3 / np.sqrt(2), (len(NAMES), DIM))
    y = rng.permutation(np.arange(n) % len(NAMES))
    return (centres[y] + rng.normal(0, 1, (n, DIM))).astype(np.float32), [NAMES[c] for c in y]


def fixed(v: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1), pa.float32()), v.shape[1])


def write(path: Path, ids: list, vectors, labels) -> Path:
    pq.write_table(pa.table({"id": ids, "embedding": vectors, "label": labels}), path, row_group_size=64)
    return path


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    """The same vectors as fixed_size_list, list<double> and binary float32 pools, an unlabeled copy, a test set."""
    d = tmp_path_factory.mktemp("emb")
    v, labels = clusters(N_POOL, np.random.default_rng(0))
    ids = [f"e{i:03d}" for i in range(N_POOL)]
    write(d / "fixed.parquet", ids, fixed(v), labels)
    write(d / "list.parquet", ids, pa.array([r.astype(np.float64).tolist() for r in v], pa.list_(pa.float64())), labels)
    write(d / "binary.parquet", ids, pa.array([r.astype("<f4").tobytes() for r in v], pa.binary()), labels)
    write(d / "unlabeled.parquet", ids, fixed(v), pa.nulls(N_POOL, pa.string()))
    tv, tl = clusters(N_TEST, np.random.default_rng(1))
    write(d / "test.parquet", [f"t{i}" for i in range(N_TEST)], fixed(tv), tl)
    return {"dir": d, "vectors": v, "truth": dict(zip(ids, labels))}


@pytest.fixture
def lazy(monkeypatch, tmp_path):
    """Every vector pool stays out of memory (an on-disk copy in this test's own temporary folder), read and
    checked 4 rows at a time, so that a bad row lies in a later batch than the first."""
    monkeypatch.setattr(vectors, "IN_MEMORY_BYTES", 0)
    monkeypatch.setattr(vectors, "BATCH_BYTES", 4 * 8 * DIM)
    folder = tmp_path / "copies"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def dense(x) -> np.ndarray:
    """float32 ``[N, D]`` of a split's vectors, held (a tensor) or on-disk (``ParquetVectors``)."""
    return x.numpy() if isinstance(x, torch.Tensor) else x[np.arange(len(x))].numpy()


def cli(pools, pool: str, out: Path, *extra: str) -> list[str]:
    sets = [
        "train.epochs=40",
        "train.milestones=[40]",
        "vae.iterations=10",
        "al.stages=2",
        "al.initial=20",
        "al.budget=20",
        "al.subset_size=100",
        "model.name=mlp",
        "data.name=parquet",
        "data.image_column=embedding",
        f"data.path={pools['dir'] / pool}",
        f"data.test_path={pools['dir'] / 'test.parquet'}",
    ]
    return ["--config", "configs/smoke.yaml", *[a for s in sets for a in ("--set", s)], "--out", str(out), *extra]


# ---------------------------------------------------------------- the loader


@pytest.mark.parametrize("pool,features", [("fixed", "image"), ("list", "image"), ("binary", "vector")])
def test_fixed_size_list_list_and_binary_pools_load_the_same_vectors(pools, pool, features):
    data = check_loaded_vectors(pools, pool, features)
    assert isinstance(data.train.x, torch.Tensor) and data.train.x.is_contiguous()  # small: held in memory


@pytest.mark.parametrize("pool,features", [("fixed", "image"), ("list", "image"), ("binary", "vector")])
def test_a_large_pool_stays_in_a_copy_on_disk_with_the_same_vectors(pools, lazy, pool, features):
    data = check_loaded_vectors(pools, pool, features)
    x = data.train.x
    assert isinstance(x, ParquetVectors) and x.shape == (N_POOL, DIM) and data.train.x.dim() == 2
    assert sorted(p.name for p in lazy.iterdir()) == sorted(Path(s.x.path).name for s in (data.train, data.test))
    assert x[3].shape == (DIM,) and np.array_equal(x[np.array([[1, 2]])].numpy(), pools["vectors"][[[1, 2]]])
    view = x.subset(torch.tensor([5, 9, 2]))
    np.testing.assert_array_equal(view[np.arange(3)].numpy(), pools["vectors"][[5, 9, 2]])
    with pytest.raises(IndexError):
        view[3]
    # pickled (Ray's object store) it carries a path, not the vectors: on this machine it reads the same file
    clone = pickle.loads(pickle.dumps(x))
    assert len(pickle.dumps(x)) < pools["vectors"].nbytes / 4  # the view's row numbers, not its vectors
    np.testing.assert_array_equal(dense(clone), pools["vectors"])
    # on another machine (the driver's file is not there) it writes its own copy from the Parquet file
    elsewhere = lazy.parent / "elsewhere"
    elsewhere.mkdir()
    tempfile.tempdir = str(elsewhere)
    clone = pickle.loads(pickle.dumps(x))
    clone.path = str(lazy.parent / "gone" / Path(x.path).name)
    np.testing.assert_array_equal(dense(clone), pools["vectors"])
    assert [p.name for p in elsewhere.iterdir()] == [Path(x.path).name]
    # the driver's copies go with the last view of them
    del data, x, view
    gc.collect()
    assert not any(lazy.iterdir())


def test_copies_of_a_killed_run_are_removed_by_the_next(pools, lazy):
    """A run killed before it removed its copy on disk leaves it behind; the next run that writes one removes every
    copy whose process is gone, and leaves a running process's alone."""
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, alive = int(gone.stdout), os.getpid()
    for name in (f"tavaal-vectors-{dead}-0.f32", f"tavaal-vectors-{alive}-1.f32", "unrelated.f32"):
        (lazy / name).write_bytes(b"\0" * 64)
    data = build_dataset(
        DataConfig(name="parquet", path=str(pools["dir"] / "fixed.parquet"), image_column="embedding"), 0
    )
    names = sorted(p.name for p in lazy.iterdir())
    assert f"tavaal-vectors-{dead}-0.f32" not in names
    assert f"tavaal-vectors-{alive}-1.f32" in names and "unrelated.f32" in names
    assert Path(data.train.x.path).name in names


def check_loaded_vectors(pools, pool: str, features: str):
    cfg = DataConfig(
        name="parquet",
        path=str(pools["dir"] / f"{pool}.parquet"),
        test_path=str(pools["dir"] / "test.parquet"),
        image_column="embedding",
        features=features,
    )
    data = build_dataset(cfg, seed=0)
    assert data.input_shape == (DIM,) and not data.is_image and data.class_names == NAMES
    assert data.train.x.dtype == torch.float32
    np.testing.assert_array_equal(dense(data.train.x), pools["vectors"])  # exactly the values written
    assert list(data.train.ids) == [f"e{i:03d}" for i in range(N_POOL)] and len(data.test) == N_TEST
    x, _ = data.batch("train", np.arange(5), augment=True)  # used as they are: no normalization, no augmentation
    np.testing.assert_array_equal(x.numpy(), pools["vectors"][:5])
    assert x.dtype == torch.float32 and x.is_contiguous()
    return data


@pytest.mark.parametrize("held", [True, False], ids=["in_memory", "on_disk"])
def test_held_out_share_and_labels_of_a_vector_pool_follow_the_ids(pools, request, held):
    if not held:
        request.getfixturevalue("lazy")
    data = build_dataset(
        DataConfig(name="parquet", path=str(pools["dir"] / "fixed.parquet"), image_column="embedding"), 0
    )
    assert len(data.train) + len(data.test) == N_POOL and 30 <= len(data.test) <= 70  # ~20% by id hash
    assert isinstance(data.test.x, torch.Tensor) == held
    rows = [int(i[1:]) for i in data.test.ids]
    np.testing.assert_array_equal(dense(data.test.x), pools["vectors"][rows])
    np.testing.assert_array_equal(dense(data.train.x), pools["vectors"][[int(i[1:]) for i in data.train.ids]])
    assert [NAMES[c] for c in data.test.y] == [pools["truth"][i] for i in data.test.ids]


# ---------------------------------------------------------------- refused input: one line, exit 2, nothing written


def _bad(d: Path, name: str) -> list[str]:
    """A pool file with one defect (see BAD), returned as the --set arguments that use it."""
    v, labels = clusters(40, np.random.default_rng(3))
    ids = [f"b{i}" for i in range(40)]
    rows: list = [r.tolist() for r in v]
    sets = []
    if name == "lengths":
        rows[3] = rows[3][:-1]
        col = pa.array(rows, pa.list_(pa.float32()))
    elif name in ("null_row", "null_fixed"):
        rows[5] = None
        col = pa.array(rows, pa.list_(pa.float32(), DIM if name == "null_fixed" else -1))
    elif name in ("nan", "inf", "null_value"):
        rows[5][2] = {"nan": float("nan"), "inf": float("inf"), "null_value": None}[name]
        col = pa.array(rows, pa.list_(pa.float32(), DIM))
    else:
        cells = [r.astype("<f4").tobytes() for r in v]
        cells[7] = cells[7][:-2] if name == "binary_odd" else cells[7] + b"\x00" * 4
        col = pa.array(cells, pa.binary())
        sets = ["data.features=vector"]
    path = write(d / f"{name}.parquet", ids, col, labels)
    return [f"data.path={path}", "data.test_path=null", *sets]


BAD = [
    ("lengths", "has a vector of length 15 at row 3 (id 'b3'), but 16 at row 0"),
    ("nan", "has the value nan in the vector at row 5 (id 'b5')"),
    ("inf", "has the value inf in the vector at row 5 (id 'b5')"),
    ("null_row", "has no vector at row 5 (id 'b5')"),
    ("null_value", "has a null value in the vector at row 5 (id 'b5')"),
    ("null_fixed", "cannot read columns id, label, embedding of '"),  # pyarrow cannot read its own null row back
    ("binary_odd", "has a cell of 62 bytes at row 7 (id 'b7'), not a whole number of float32 values"),
    ("binary_long", "has a vector of 17 values at row 7 (id 'b7'), but 16 at row 0"),
]


@pytest.mark.parametrize("held", [True, False], ids=["in_memory", "on_disk"])
@pytest.mark.parametrize("name,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_vectors_exit_2_with_one_line_naming_the_row(pools, tmp_path, capsys, request, name, needle, held):
    """Held in memory the 40 rows are one batch; on-disk they are checked 4 at a time, so every bad row lies
    in a later batch than the first and its message still names its row; no copy is left behind."""
    copies = None if held else request.getfixturevalue("lazy")
    sets = _bad(tmp_path, name)
    argv = cli(pools, "fixed.parquet", tmp_path / "out", *[a for s in sets for a in ("--set", s)])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert err[0].startswith(("error: vector column 'embedding' of ", "error: cannot read")), err
    assert not (tmp_path / "out").exists()
    assert copies is None or not any(copies.iterdir())


def test_bad_vectors_through_the_real_command_line(pools, tmp_path):
    """The entry point itself: exit code 2 and one line on stderr, nothing written."""
    sets = _bad(tmp_path, "nan")
    res = run_cli(*cli(pools, "fixed.parquet", tmp_path / "out", *[a for s in sets for a in ("--set", s)]))
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(err) == 1 and "has the value nan in the vector at row 5 (id 'b5')" in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--set", "model.name=small_cnn"], "expects an image input_shape (C, H, W) with H, W >= 1, got (16,)"),
        (["--set", "data.features=vector", "--set", "data.image_column=id"], "is string, but data.features is vector"),
        (["--set", "data.test_path=TESTDIR/short.parquet"], "holds inputs of shape [8], the pool"),
    ],
    ids=["image_model", "not_vectors", "test_dim"],
)
def test_a_model_or_column_that_does_not_fit_vectors_is_refused(pools, tmp_path, capsys, extra, needle):
    write(tmp_path / "short.parquet", ["s0"], fixed(np.zeros((1, 8), np.float32)), ["a"])
    extra = [e.replace("TESTDIR", str(tmp_path)) for e in extra]
    assert main(cli(pools, "fixed.parquet", tmp_path / "out", *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    if "small_cnn" in extra[-1]:
        assert "mlp for vectors" in err[0]  # the message names the fix
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the loop


@pytest.mark.parametrize("strategy", ["tavaal", "vaal"])
def test_tavaal_and_vaal_run_on_an_embedding_pool(pools, tmp_path, strategy):
    out = tmp_path / strategy
    assert (
        main(
            [*cli(pools, "fixed.parquet", out, "--set", f"al.strategy={strategy}"), "--json", str(tmp_path / "r.json")]
        )
        == 0
    )
    records = json.loads((tmp_path / "r.json").read_text())
    assert [r["num_labeled"] for r in records] == [20, 40] and len(set(records[0]["selected"])) == 20
    assert records[1]["accuracy"] > 0.5  # 4 well-separated clusters: far above chance on 40 labels


def test_a_on_disk_pool_selects_what_a_held_one_selects(pools, tmp_path, request):
    """The same TA-VAAL run (task model, ranker, the VAE's vector form, scoring) on the pool held in memory and on
    its on-disk copy: the same picks at every stage, the same accuracy."""
    argv = cli(pools, "fixed.parquet", tmp_path / "held", "--json", str(tmp_path / "held.json"))
    assert main(argv) == 0
    request.getfixturevalue("lazy")
    argv = cli(pools, "fixed.parquet", tmp_path / "on_disk", "--json", str(tmp_path / "on_disk.json"))
    assert main(argv) == 0
    held, on_disk = (json.loads((tmp_path / f"{k}.json").read_text()) for k in ("held", "on_disk"))
    assert [r["selected"] for r in on_disk] == [r["selected"] for r in held]
    assert [r["accuracy"] for r in on_disk] == [r["accuracy"] for r in held] and held[1]["accuracy"] > 0.5


@pytest.mark.parametrize("held", [True, False], ids=["in_memory", "on_disk"])
def test_the_manual_oracle_asks_for_vector_rows_without_paths(pools, tmp_path, capsys, request, held):
    if not held:
        request.getfixturevalue("lazy")
    out = tmp_path / "man"
    argv = cli(pools, "unlabeled.parquet", out, "--oracle", "manual", "--set", "data.classes=[a, b, c, d]")
    assert main(argv) == 0
    request = out / "to_label" / "stage_0.csv"
    rows = list(csv.DictReader(request.open()))
    assert len(rows) == 20 and all(r["path"] == "" and r["label"] == "" for r in rows)
    assert pq.read_table(out / "to_label" / "stage_0.parquet").column("path").to_pylist() == [""] * 20
    with request.open("w", newline="") as f:
        w = csv.DictWriter(f, ["id", "path", "label"])
        w.writeheader()
        w.writerows({**r, "label": pools["truth"][r["id"]]} for r in rows)
    capsys.readouterr()
    assert main(["--resume", str(out), "--labels", str(request)]) == 0
    assert "stage 1 needs labels for 20" in capsys.readouterr().out


# ---------------------------------------------------------------- the embeddings script


def test_embeddings_script_writes_a_pool_tavaal_reads(tmp_path):
    from benchmarks import embeddings

    assert embeddings.main(["--out", str(tmp_path), "--smoke"]) == 0
    pool, test = pq.read_table(tmp_path / "pool.parquet"), pq.read_table(tmp_path / "test.parquet")
    assert pool.schema.field("embedding").type == pa.list_(pa.float32(), 128)
    assert pool.num_rows == 300 and test.num_rows == 100
    assert min(pool.column("id").to_pylist()) == 512  # the embedding model's own images are not in the pool
    info = json.loads((tmp_path / "embeddings.json").read_text())
    assert info["train_rows"] == 512 and info["dim"] == 128
    cfg = DataConfig(
        name="parquet",
        path=str(tmp_path / "pool.parquet"),
        test_path=str(tmp_path / "test.parquet"),
        image_column="embedding",
    )
    data = build_dataset(cfg, seed=0)
    assert data.input_shape == (128,) and data.num_classes == 10 and len(data.train) == 300
    assert np.isfinite(data.train.x.numpy()).all() and data.train.x.std() > 0.1


# ---------------------------------------------------------------- Ray


@pytest.mark.slow
def test_vector_pools_score_through_ray_data_and_select_as_locally(pools, ray_cluster, tmp_path, request):
    """Every cell format, decoded in the actors, scores as the local loop, and the picks from those scores are the
    local ones; a pool held in memory and an on-disk one alike. A scoring returns only once its actors' CPUs are
    free again. A whole 3-stage TA-VAAL run under --backend ray on the on-disk pool (its Ray Train workers read
    the driver's copy; one thread, as tests/test_ray_train.py compares) selects what the local run selects."""
    import ray

    from tavaal.backends.ray.parquet import score_parquet_with_ray_data
    from tavaal.core.scoring import score_pool
    from tavaal.core.selection import select_top_k
    from tavaal.strategies.scorers import TaskScorer

    from conftest import trained_stage

    cases = [("fixed", "image", True), ("list", "image", True), ("binary", "vector", True), ("fixed", "image", False)]
    for pool, features, held in cases:
        if not held:
            request.getfixturevalue("lazy")
        sets = ["train.epochs=1", "model.name=mlp", "data.name=parquet", "data.image_column=embedding"]
        sets += [f"data.path={pools['dir'] / f'{pool}.parquet'}", f"data.features={features}", "al.initial=40"]
        cfg = load_config("configs/smoke.yaml", sets)
        data, _, cand, spec, _, tasks = trained_stage(cfg, 100)
        assert isinstance(data.train.x, torch.Tensor) == held
        scorer = TaskScorer(spec, tasks["rank"], "rhat")
        idx = np.random.default_rng(3).permutation(cand)
        want = score_pool(scorer, data, idx, 37, torch.device("cpu"))
        got = score_parquet_with_ray_data(scorer, data, cfg.data, idx, batch_size=37, concurrency=1)
        assert ray.available_resources().get("CPU") == 2  # the scoring actor's CPU is back: the next job finds it
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-5, err_msg=f"{pool}: {name}")
            assert np.ptp(got[name]) > 0
        # the strategy's pick from these scores (lloss_rank: highest r̂ first) is the same on both paths
        assert select_top_k(got["rhat"], idx, 20).tolist() == select_top_k(want["rhat"], idx, 20).tolist()

    sets = [
        "train.epochs=2",
        "vae.iterations=4",
        "al.stages=3",
        "al.initial=20",
        "al.budget=20",
        "al.subset_size=100",
        "num_threads=1",
        "model.name=mlp",
        "data.name=parquet",
        "data.image_column=embedding",
        f"data.path={pools['dir'] / 'fixed.parquet'}",
        f"data.test_path={pools['dir'] / 'test.parquet'}",
        # not keep_workers: the kept group's CPU and the scoring actor's would leave Ray Data's read tasks none of
        # the session's 2 (backend.check_room_to_score refuses that plan on a Ray the run starts itself)
        "backend.name=ray",
        f"backend.storage_path={tmp_path / 'train'}",
    ]
    cfg = load_config("configs/smoke.yaml", sets)
    on_ray, local = on_ray_and_locally(cfg, tmp_path)
    assert [r.selected for r in on_ray] == [r.selected for r in local]
    assert [r.num_labeled for r in on_ray] == [20, 40, 60] and len(set(on_ray[1].selected)) == 20


@pytest.mark.slow
def test_a_training_job_that_finds_its_cpus_taken_fails_in_one_line(ray_cluster):
    """On the Ray a run started, a Ray Train job whose CPUs something still holds would wait without end; the
    backend waits a bounded time for them, then says so in one line. Once they are free it goes ahead."""
    import ray

    from tavaal.backends.ray.backend import wait_for_room_to_train

    holder = ray.remote(num_cpus=2)(type("Holder", (), {"ready": lambda self: True})).remote()
    ray.get(holder.ready.remote())
    with pytest.raises(RuntimeError) as e:
        wait_for_room_to_train(BackendConfig(name="ray"), timeout=1.0)
    assert "needs 1 CPU but only 0 of this Ray's 2 have been free for 1 s" in str(e.value)
    assert "\n" not in str(e.value) and "--resume" in str(e.value)
    ray.kill(holder)
    wait_for_room_to_train(BackendConfig(name="ray"), timeout=30.0)  # returns once the actor's CPUs are back
    assert ray.available_resources().get("CPU") == 2


@pytest.mark.slow
def test_embeddings_scale_scores_a_pool_on_disk_on_ray_data_as_the_local_loop(ray_cluster, monkeypatch, tmp_path):
    """benchmarks/embeddings_scale.py --smoke, with 2,048-d vectors (160 MB): the pool stays on disk (the
    driver grows by far less than the vectors while building it), Ray Data's scores of every row equal the local
    loop's, the scoring returns with the actor's CPU free, and a stage runs on the vector and the image pool."""
    from benchmarks import embeddings_scale

    monkeypatch.setattr(vectors, "IN_MEMORY_BYTES", 0)  # the pool (160 MB) and its test set (16 MB): both on disk
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    argv = ["--smoke", "--dim", "2048", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    assert embeddings_scale.main(argv) == 0
    (path,) = (tmp_path / "out").glob("embeddings-scale-smoke-*.json")
    got = json.loads(path.read_text())
    a, b = got["scoring"], got["stage"]
    assert a["kept_as"] == "ParquetVectors" and a["vectors_bytes"] == 20_000 * 2048 * 4
    assert a["build_rss"] - a["rss_before"] < a["vectors_bytes"] / 2  # held, it would grow by all of them
    assert a["rows_scored"] == a["checked_rows"] == 20_000 and a["max_abs_diff"] < 1e-5
    assert a["free_cpus_after"] == a["total_cpus"] == 2
    assert any("ScoreParquetPerActor" in name for name, _ in a["score_rss_workers"])
    for kind in ("vectors", "images"):
        assert b[kind]["stage"] > 0 and b[kind]["task + ranker training"] > 0 and b[kind]["scoring"] > 0
    text = path.with_suffix(".md").read_text()
    assert "| **stage** |" in text and "vectors / images" in text and "bf16 supported" in text
