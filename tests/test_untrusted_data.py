"""Files from outside the project are data, never code (issue 24): CIFAR pickles that would run a command, pool
ids a spreadsheet would run as formulas, labels files that cannot be read, and Parquet columns of the wrong kind
(a list as a label, NaN as an id, an image path out of the pool's folder). Each is refused with one line and exit
code 2 (under --check too) and changes nothing; the files in their real formats keep working."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tavaal import checkpoint
from tavaal.config import DataConfig
from tavaal.csvsafe import cell, uncell
from tavaal.data import build_dataset
from tavaal.data.cifar import CifarUnpickler
from tavaal.data.synthetic import synthetic_images
from tavaal.run import main

NAMES = ("tl", "tr", "bl", "br")  # synthetic's classes


def one_line_error(capsys, argv: list[str]) -> str:
    """Run ``main(argv)`` in this process; it must exit 2 with exactly one line on stderr, which is returned."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------- CIFAR pickles


class RunsCommand:
    """A pickle that runs a shell command as it loads (what a planted 'CIFAR file' would do)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class CallsEval:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return eval, (self.code,)


def cifar_rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def write_cifar10(root: Path) -> Path:
    """Tiny CIFAR-10 batches in the real layout (as tests/test_data.py writes them)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        batch = {b"data": cifar_rows(4, i), b"labels": [(4 * i + j) % 10 for j in range(4)]}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "test_batch").write_bytes(pickle.dumps({"data": cifar_rows(3), "labels": [9, 0, 5]}))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    return folder


CIFAR_CASES = [
    # (data set, file replaced, payload, protocol, what the refusal names)
    ("cifar10", "data_batch_1", "system", 2, "'posix.system'"),
    ("cifar10", "data_batch_3", "system", pickle.DEFAULT_PROTOCOL, "'posix.system'"),
    ("cifar10", "test_batch", "system", 0, "'posix.system'"),
    ("cifar10", "batches.meta", "eval", 5, "'builtins.eval'"),
    ("cifar100", "train", "system", 4, "'posix.system'"),
]


@pytest.mark.parametrize("check", [True, False], ids=["check", "run"])
@pytest.mark.parametrize("name,file,payload,protocol,needle", CIFAR_CASES)
def test_a_cifar_pickle_that_runs_code_is_refused_before_it_runs(
    tmp_path, capsys, check, name, file, payload, protocol, needle
):
    marker = tmp_path / "marker"
    root = tmp_path / "data"
    if name == "cifar10":
        folder = write_cifar10(root)
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        (folder / "test").write_bytes(pickle.dumps({"data": cifar_rows(2), "fine_labels": [1, 98]}))
    evil = (
        RunsCommand(f"touch {marker}") if payload == "system" else CallsEval(f"open({str(marker)!r}, 'w').close()")  # noqa: S307 - the payload under test
    )
    (folder / file).write_bytes(pickle.dumps({"data": evil, "labels": [0]}, protocol=protocol))
    out = tmp_path / "out"
    argv = ["--set", f"data.name={name}", "--set", "data.download=false", "--data-dir", str(root)]
    argv += ["--check"] if check else ["--set", "train.epochs=1", "--out", str(out)]
    err = one_line_error(capsys, argv)
    assert f"'{folder / file}' is not a CIFAR batch file (it asks to load {needle}" in err, err
    assert "replace it with the files from https://www.cs.toronto.edu/~kriz/cifar.html" in err
    assert not marker.exists()  # the command never ran
    assert not out.exists()


def test_the_refusal_is_in_find_class_for_any_name_outside_the_cifar_format():
    for module, name in [("os", "system"), ("subprocess", "Popen"), ("builtins", "getattr"), ("numpy", "load")]:
        with pytest.raises(pickle.UnpicklingError, match=f"it asks to load '{module}.{name}'"):
            CifarUnpickler(io.BytesIO(b"")).find_class(module, name)
    # bytes in protocol 0-2 pickles go through _codecs.encode: latin1 only, no other codec
    with pytest.raises(pickle.UnpicklingError, match="encode with 'rot13'"):
        CifarUnpickler(io.BytesIO(b"")).find_class("_codecs", "encode")("x", "rot13")


class Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes what Python 2's cPickle wrote for CIFAR: every str and bytes as a byte string (BINSTRING), numpy's
    reconstructor under its numpy 1 name: the format of the files torchvision downloads."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + len(data).to_bytes(4, "little") + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def test_cifar_files_in_the_real_python2_format_and_numpy_pickles_still_load(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = [cifar_rows(5, i) for i in range(6)]
    labels = [[(i + j) % 10 for j in range(5)] for i in range(6)]
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, (f, x, y) in enumerate(zip(files, batches, labels)):
        batch = {"batch_label": f"batch {k}", "labels": y, "data": x, "filenames": [f"img{j}.png" for j in range(5)]}
        if f == "data_batch_2":
            data = pickle.dumps({**batch, "labels": [np.int64(v) for v in y]}, protocol=5)  # numpy's own, protocol 5
        else:
            data = py2_pickle(batch)
            assert b"numpy.core.multiarray\n_reconstruct" in data and b"\x80\x02" in data[:2]
        (folder / f).write_bytes(data)
    (folder / "batches.meta").write_bytes(py2_pickle({"label_names": [f"n{i}" for i in range(10)], "num_vis": 3072}))
    data = build_dataset(DataConfig(name="cifar10", data_dir=str(tmp_path), download=False), seed=0)
    assert np.array_equal(data.train.x.numpy(), np.concatenate(batches[:5]).reshape(-1, 3, 32, 32))
    assert data.train.y.tolist() == sum(labels[:5], []) and data.test.y.tolist() == labels[5]
    assert data.class_names == tuple(f"n{i}" for i in range(10))


# ---------------------------------------------------------------- CSV cells a spreadsheet would run


@pytest.mark.parametrize(
    "value,written",
    [
        ("=cmd|' /C calc'!A17", "'=cmd|' /C calc'!A17"),
        ("+1+10", "'+1+10"),
        ("@SUM(4)", "'@SUM(4)"),
        ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("-", "'-"),
        ("-3", "-3"),  # a plain number: a spreadsheet reads the number and runs nothing
        ("+1.5e-3", "+1.5e-3"),
        ("img0001", "img0001"),
        ("'abc", "'abc"),  # an id that truly starts with a quote is written as it is ...
        ("'=x", "''=x"),  # ... unless the quote would be read as ours
        ("''@x", "'''@x"),
        ("'", "'"),
        ("", ""),
    ],
)
def test_cells_a_spreadsheet_would_run_are_quoted_and_come_back_as_written(value, written):
    assert cell(value) == written
    assert uncell(written) == value
    assert uncell(value) == value or cell(value) != value  # an unquoted cell is never taken apart


def labeled_pool(tmp_path: Path, ids: list, labels: list, name: str = "pool.parquet", **columns) -> Path:
    """A Parquet pool of ``len(ids)`` PNG images (synthetic's 16x16 blobs); extra columns replace the defaults."""
    x, _ = synthetic_images(len(ids), np.random.default_rng(1))
    images = [png(a[0]) for a in x]
    path = tmp_path / name
    pq.write_table(pa.table({"id": ids, "image": images, "label": labels, **columns}), path)
    return path


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def own_args(pool: Path, test: Path | None, *extra: str) -> list[str]:
    argv = ["--config", "configs/smoke.yaml", "--set", "data.name=parquet", "--set", f"data.path={pool}"]
    argv += ["--set", f"data.test_path={test}"] if test else []
    for kv in ("data.image_size=16", "data.channels=1", "data.num_train=null", "data.num_test=null"):
        argv += ["--set", kv]
    for kv in ("train.epochs=1", "al.strategy=random", f"data.classes=[{', '.join(NAMES)}]"):
        argv += ["--set", kv]
    return argv + list(extra)


EVIL = ["=cmd|' /C calc'!A17", "+1+10", "@SUM(4)"]


@pytest.fixture(scope="module")
def evil_run(tmp_path_factory):
    """A manual run over a pool with formula-like string ids, stopped at stage 1's request (8 rows: all the
    unlabeled ones, the three formula ids among them)."""
    d = tmp_path_factory.mktemp("evil")
    x, y = synthetic_images(60, np.random.default_rng(0))
    ids = [f"r{i:02d}" for i in range(37)] + EVIL
    truth = {i: NAMES[c] for i, c in zip(ids, y)}
    labels = [truth[i] if k < 32 else None for k, i in enumerate(ids)]  # r32..r36 and the formula ids unlabeled
    pool = d / "pool.parquet"
    pq.write_table(pa.table({"id": ids, "image": [png(a[0]) for a in x[:40]], "label": labels}), pool)
    test = d / "test.parquet"
    tid = [f"t{i}" for i in range(20)]
    pq.write_table(
        pa.table({"id": tid, "image": [png(a[0]) for a in x[40:]], "label": [NAMES[c] for c in y[40:]]}), test
    )
    out = d / "run"
    argv = own_args(pool, test, "--set", "al.budget=8", "--set", "al.stages=2", "--oracle", "manual", "--out", str(out))
    assert main(argv) == 0
    assert checkpoint.list_stages(out) == [0] and (out / "to_label" / "stage_1.csv").is_file()
    return {"run": out, "truth": truth, "argv": argv}


def test_request_csv_quotes_formula_ids_and_their_labels_map_back(evil_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(evil_run["run"], run)
    request = run / "to_label" / "stage_1.csv"
    rows = list(csv.reader(request.open(newline="")))
    assert rows[0] == ["id", "path", "label"] and len(rows) == 9
    cells = {r[0] for r in rows[1:]}
    assert {"'" + i for i in EVIL} <= cells and not cells & set(EVIL)
    for r in rows:  # no cell of the file starts a formula
        assert not any(c.startswith(("=", "+", "-", "@", "\t", "\r")) for c in r), r
    # the Parquet copy of the request (not for spreadsheets) holds the ids themselves
    assert set(EVIL) <= set(pq.read_table(run / "to_label" / "stage_1.parquet").column("id").to_pylist())

    # annotators return the same file with the label column filled in (the quoted cells as they were) ...
    answered = tmp_path / "answered.csv"
    with answered.open("w", newline="") as f:
        csv.writer(f).writerows([rows[0]] + [[r[0], r[1], evil_run["truth"][uncell(r[0])]] for r in rows[1:]])
    # ... or a spreadsheet that dropped our quote on saving: both map to the same ids
    unquoted = tmp_path / "unquoted.csv"
    unquoted.write_text(
        "id,label\n" + "".join(f'"{uncell(r[0])}",{evil_run["truth"][uncell(r[0])]}\n' for r in rows[1:])
    )
    for k, answers in enumerate([unquoted, answered]):
        target = run if k else tmp_path / "again"
        if not k:
            shutil.copytree(run, target)
        assert main(["--resume", str(target), "--labels", str(answers)]) == 0
        stored = json.loads((target / "labels" / "stage_1.json").read_text())["labels"]
        assert {i: stored[i] for i in EVIL} == {i: evil_run["truth"][i] for i in EVIL}
        assert checkpoint.load_latest(target).stage == 1  # the run went on and trained stage 1
        assert checkpoint.load_latest(target).pool.num_labeled == 40


# ---------------------------------------------------------------- labels files that cannot be read


def test_labels_files_that_cannot_be_read_exit_2_with_one_line_and_change_nothing(
    evil_run, tmp_path, capsys, monkeypatch
):
    run = tmp_path / "run"
    shutil.copytree(evil_run["run"], run)
    before = digest(run)
    request = run / "to_label" / "stage_1.csv"
    rows = list(csv.reader(request.open(newline="")))
    good = [f"{r[0]},{evil_run['truth'][uncell(r[0])]}" for r in rows[1:]]
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("\n".join(["id,label,note", good[0] + ",ok", good[1] + ",café", *good[2:]]).encode("latin-1"))
    huge = tmp_path / "huge.csv"
    huge.write_text("\n".join(["id,label,note", good[0] + ',"' + "x" * 200_000 + '"', *good[1:]]))
    unclosed = tmp_path / "unclosed.csv"  # an unclosed quote swallows the rest of the file into one field
    unclosed.write_text("\n".join(["id,label", good[0], 'r99,"tl', *(good[1:] * 20_000)]))
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    locked = tmp_path / "locked.csv"
    locked.write_text("\n".join(["id,label", *good]))
    cases = {
        latin1: "line 3: byte 0xe9 is not UTF-8 text; save the file as CSV UTF-8",
        huge: f"line 2: a field is longer than csv's limit of {csv.field_size_limit()} characters",
        unclosed: "line 3: a field is longer than csv's limit",
        folder: "is a directory; pass the filled-in request CSV",
        locked: "cannot be read (Permission denied); make it readable",
    }
    read_bytes = Path.read_bytes

    def refuse_locked(self):  # tests run as root, where no mode bit stops a read: refuse as the OS would
        if self == locked:
            raise PermissionError(13, "Permission denied")
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", refuse_locked)
    for bad, needle in cases.items():
        err = one_line_error(capsys, ["--resume", str(run), "--labels", str(bad)])
        assert f"labels file '{bad}'" in err and needle in err, (bad.name, err)
        assert digest(run) == before, bad.name


# ---------------------------------------------------------------- Parquet columns of the wrong kind


def test_parquet_columns_of_the_wrong_kind_exit_2_naming_column_row_and_fix(tmp_path, capsys):
    n = 12
    ids = [f"a{i}" for i in range(n)]
    x, y = synthetic_images(n, np.random.default_rng(3))
    (tmp_path / "imgs").mkdir()
    for i in range(n):
        Image.fromarray(x[i][0]).save(tmp_path / "imgs" / f"{i}.png")
    paths = [f"imgs/{i}.png" for i in range(n)]
    names = [NAMES[c] for c in y]
    cases = {
        "list label": (
            labeled_pool(tmp_path, ids, [[1, 2]] * n, "list.parquet"),
            "label column 'label' of '{p}' holds list<element: int64> values (row 0 (id 'a0'): [1, 2]); a label is "
            "one class name or integer per row",
        ),
        "fraction label": (
            labeled_pool(tmp_path, ids, [0.0, 1.0, 2.5] + [1.0] * (n - 3), "frac.parquet"),
            "label column 'label' of '{p}' has the label 2.5 at row 2 (id 'a2')",
        ),
        "NaN id": (
            labeled_pool(tmp_path, [1.0, float("nan")] + [float(i) for i in range(2, n)], names, "nan.parquet"),
            "id column 'id' of '{p}' holds double values (row 1: nan); ids must be integers or strings",
        ),
        "null id": (
            labeled_pool(tmp_path, ids[:4] + [None] + ids[5:], names, "null.parquet"),
            "id column 'id' of '{p}' has no id at row 4; every row needs a unique id",
        ),
        "duplicate id": (
            labeled_pool(tmp_path, ids[:5] + ["a1"] + ids[6:], names, "dup.parquet"),
            "id column 'id' of '{p}' has the same id 'a1' at rows 1 and 5; ids must be unique",
        ),
        "path out of the folder": (
            labeled_pool(tmp_path, ids, names, "up.parquet", image=paths[:3] + ["../../../../etc/passwd"] + paths[4:]),
            "image column 'image' of '{p}' points outside the pool's folder '{d}' at row 3 (id 'a3'): "
            "'../../../../etc/passwd'; images must lie under the folder of the Parquet data",
        ),
        "absolute path elsewhere": (
            labeled_pool(tmp_path, ids, names, "abs.parquet", image=["/etc/passwd"] + paths[1:]),
            "points outside the pool's folder '{d}' at row 0 (id 'a0'): '/etc/passwd'",
        ),
        "no image": (
            labeled_pool(tmp_path, ids, names, "noimg.parquet", image=paths[:7] + [None] + paths[8:]),
            "image column 'image' of '{p}' has no image at row 7 (id 'a7')",
        ),
    }
    for name, (pool, needle) in cases.items():
        needle = needle.format(p=pool, d=tmp_path)
        for extra in (["--check"], ["--oracle", "simulated", "--out", str(tmp_path / "out")]):
            err = one_line_error(capsys, own_args(pool, None, *extra))
            assert needle in err, (name, err)
            assert not (tmp_path / "out").exists(), name
    # the same pool with every path inside its folder runs, and integer, boolean and pandas' float labels load
    ok = labeled_pool(tmp_path, ids, names, "ok.parquet", image=[str(tmp_path / p) for p in paths[:6]] + paths[6:])
    capsys.readouterr()
    assert main(own_args(ok, None, "--check", "--set", "al.initial=4", "--set", "al.budget=2")) == 0
    for labels, classes in [
        ([i % 2 == 0 for i in range(n)], ("False", "True")),
        ([float(i % 3) for i in range(n - 1)] + [float("nan")], ("0", "1", "2")),
        ([i % 3 for i in range(n)], ("0", "1", "2")),
    ]:
        cfg = DataConfig(name="parquet", path=str(labeled_pool(tmp_path, ids, labels, "kinds.parquet")), image_size=16)
        assert build_dataset(cfg, seed=0).class_names == classes


def test_an_image_that_does_not_decode_is_never_offered_to_annotators(tmp_path, capsys):
    n = 8
    x, _ = synthetic_images(n, np.random.default_rng(4))
    (tmp_path / "imgs").mkdir()
    for i in range(n):
        Image.fromarray(x[i][0]).save(tmp_path / "imgs" / f"{i}.png")
    (tmp_path / "imgs" / "2.png").write_text("root:x:0:0:root:/root:/bin/bash\n")  # a file, but no image
    ids = [f"a{i}" for i in range(n)]
    pool = labeled_pool(tmp_path, ids, pa.nulls(n, pa.string()), image=[f"imgs/{i}.png" for i in range(n)])
    out = tmp_path / "out"
    argv = own_args(
        pool, None, "--set", "al.initial=8", "--set", "al.stages=1", "--oracle", "manual", "--out", str(out)
    )
    err = one_line_error(capsys, argv)
    assert f"row 2 (id 'a2') of column 'image' of '{pool}' is not a readable image" in err, err
    assert not (out / "to_label").exists()
    # replaced by an image, the same command writes the request, its paths inside the pool's folder
    Image.fromarray(x[2][0]).save(tmp_path / "imgs" / "2.png")
    assert main(argv) == 0
    rows = list(csv.DictReader((out / "to_label" / "stage_0.csv").open(newline="")))
    assert sorted(r["id"] for r in rows) == ids
    assert all(Path(r["path"]).parent == tmp_path / "imgs" for r in rows)
