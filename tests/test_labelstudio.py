"""Label Studio as the oracle: the tasks file and its labeling interface, Label Studio's JSON export read back
with the manual oracle's checks, bad exports refused in one line, and (slow tier) the round trip through a real
Label Studio server on 127.0.0.1: tasks created and annotated through its API, the run going on by itself, and
the picks equal to the simulated oracle's."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import threading
import urllib.request
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from PIL import Image

from tavaal import checkpoint
from tavaal.errors import ConfigError
from tavaal.labelstudio import export_answers, image_urls, interface, task_answers
from tavaal.run import main

from conftest import ROOT, digest, free_port, run_cli, stop_group, wait_http
from conftest import pool_args as args

NAMES = ("bl", "br", "tl", "tr")  # the pool's classes, as the data lists them (sorted)


def tasks_of(out: Path, stage: int) -> list[dict]:
    return json.loads((out / "to_label" / f"stage_{stage}.labelstudio.json").read_text())


def exported(items: list[dict], truth: dict, first_id: int = 1) -> list[dict]:
    """What Label Studio's JSON export of those tasks looks like once each is annotated with its true class."""
    out = []
    for k, t in enumerate(items):
        label = truth[t["data"]["tavaal_id"]]
        result = [{"from_name": "label", "to_name": "item", "type": "choices", "value": {"choices": [label]}}]
        out.append(
            {
                "id": first_id + k,
                "data": t["data"],
                "annotations": [{"id": first_id + k, "result": result, "was_cancelled": False, "ground_truth": False}],
                "predictions": [],
            }
        )
    return out


def write(path: Path, items) -> Path:
    path.write_text(json.dumps(items))
    return path


# ---------------------------------------------------------------- files: the tasks and the export


def test_interface_lists_the_classes_as_choices_and_escapes_them():
    classes = ("cat", 'say "hi" & <go>', "it's")
    view = ElementTree.fromstring(interface(classes, images=True))
    assert view.find("Image").attrib == {"name": "item", "value": "$image"}
    assert tuple(c.get("value") for c in view.iter("Choice")) == classes  # escaped, and read back as given
    assert view.find("Choices").get("choice") == "single"
    assert '<Text name="item" value="$tavaal_id"/>' in interface((), images=False)
    assert '<TextArea name="label"' in interface((), images=False)  # no class known yet: a text answer


def test_export_answers_take_ground_truth_skip_cancelled_and_read_json_min():
    ann = lambda label, **kw: {"result": [{"from_name": "label", "value": {"choices": [label]}}], **kw}  # noqa: E731
    items = [
        {"id": 7, "data": {"tavaal_id": "a"}, "annotations": [ann("x"), ann("y", ground_truth=True)]},
        {"id": 8, "data": {"tavaal_id": "b"}, "annotations": [ann("x", was_cancelled=True)]},
        {"id": 9, "data": {"tavaal_id": 3}, "annotations": [ann("z"), ann("z")]},
    ]
    assert task_answers(items, "f") == [
        ("task 1 (Label Studio task 7)", "a", "y"),  # ground truth settles a disagreement
        ("task 2 (Label Studio task 8)", "b", ""),  # skipped: no label
        ("task 3 (Label Studio task 9)", "3", "z"),
    ]
    flat = [{"tavaal_id": "a", "id": 1, "label": "x"}, {"tavaal_id": "b", "id": 2}]
    assert task_answers(flat, "f") == [
        ("task 1 (Label Studio task 1)", "a", "x"),
        ("task 2 (Label Studio task 2)", "b", ""),
    ]


def test_images_are_addressed_below_the_document_root_or_copied_there(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    for name in ("a.png", "b.png"):
        (pool / name).write_bytes(b"png")
    paths = [str(pool / "a.png"), str(pool / "b.png")]
    assert image_urls(paths, tmp_path, tmp_path / "run" / "to_label" / "stage_1") == (
        ["/data/local-files/?d=pool/a.png", "/data/local-files/?d=pool/b.png"],
        pool,
    )
    root = tmp_path / "run" / "to_label"  # the pool is outside: copies are served from the run
    urls, served = image_urls(paths, root, root / "stage_1")
    assert urls == ["/data/local-files/?d=stage_1/00000_a.png", "/data/local-files/?d=stage_1/00001_b.png"]
    assert served == root / "stage_1" and (root / "stage_1" / "00001_b.png").read_bytes() == b"png"
    with pytest.raises(ConfigError, match="are not below labelstudio.image_root"):
        image_urls(paths, tmp_path / "elsewhere", root / "stage_1")


def test_file_round_trip_sends_predictions_and_selects_what_the_simulated_oracle_selects(files, tmp_path, capsys):
    sim, ls = tmp_path / "sim", tmp_path / "ls"
    assert main(args(files, "pool.parquet", sim)) == 0
    assert main(args(files, "unlabeled.parquet", ls, "--oracle", "labelstudio")) == 0
    said = capsys.readouterr().out
    assert "needs labels for 40 images (Label Studio oracle)" in said and f"--resume {ls} --labels EXPORT.json" in said
    xml = (ls / "to_label" / "labelstudio.xml").read_text()
    assert all(f'<Choice value="{c}"/>' for c in NAMES) and '<Image name="item"' in xml
    for stage in (0, 1):
        items = tasks_of(ls, stage)
        assert len(items) == 40 and {t["data"]["tavaal_stage"] for t in items} == {stage}
        image = items[0]["data"]["image"]
        assert image.startswith("/data/local-files/?d=") and (ls / "to_label" / image.split("d=")[1]).is_file()
        if stage == 0:  # the initial set: no model picked it, so nothing is predicted
            assert all("predictions" not in t for t in items)
        else:  # stage 0's model: a class and its probability per task
            preds = [t["predictions"][0] for t in items]
            assert all(p["result"][0]["value"]["choices"][0] in NAMES and 0.25 <= p["score"] <= 1 for p in preds)
            assert preds[0]["model_version"] == "tavaal tavaal stage 0"
        # the whole project exported: earlier stages' tasks are passed over
        everything = [t for s in range(stage + 1) for t in tasks_of(ls, s)]
        export = write(tmp_path / f"export_{stage}.json", exported(everything, files["truth"]))
        assert main(["--resume", str(ls), "--labels", str(export)]) == 0
        stored = json.loads((ls / "labels" / f"stage_{stage}.json").read_text())["labels"]
        assert stored == {t["data"]["tavaal_id"]: files["truth"][t["data"]["tavaal_id"]] for t in items}
    a, b = checkpoint.load_latest(sim), checkpoint.load_latest(ls)
    assert [r["selected"] for r in b.records] == [r["selected"] for r in a.records]
    assert [r["accuracy"] for r in b.records] == [r["accuracy"] for r in a.records]


def test_an_embeddings_pool_shows_the_row_id_and_round_trips(tmp_path, capsys):
    """No image to show: the interface shows the row's id (annotators look it up in their own records)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 260)
    x = (rng.normal(size=(260, 8)) + 2 * np.eye(3, 8)[y]).astype(np.float32)
    names = np.array(["a", "b", "c"])
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 8)
    ids = [f"row{i}" for i in range(200)]
    for name, labels in (("pool", names[y[:200]]), ("unlabeled", [None] * 200)):
        pq.write_table(pa.table({"id": ids, "embedding": vectors[:200], "label": labels}), tmp_path / f"{name}.parquet")
    test = pa.table({"id": [f"t{i}" for i in range(60)], "embedding": vectors[200:], "label": names[y[200:]]})
    pq.write_table(test, tmp_path / "test.parquet")
    truth = dict(zip(ids, names[y[:200]]))
    sets = ["data.name=parquet", "data.image_column=embedding", "model.name=mlp", "data.num_train=null"]
    sets += ["data.num_test=null", f"data.test_path={tmp_path / 'test.parquet'}", "al.stages=2", "train.epochs=2"]
    sets += ["vae.iterations=4", "al.initial=20", "al.budget=20", "al.subset_size=100"]
    common = ["--config", "configs/smoke.yaml", *[a for v in sets for a in ("--set", v)]]
    sim, ls = tmp_path / "sim", tmp_path / "ls"
    assert main([*common, "--set", f"data.path={tmp_path / 'pool.parquet'}", "--out", str(sim)]) == 0
    unlabeled = ["--set", f"data.path={tmp_path / 'unlabeled.parquet'}", "--oracle", "labelstudio", "--out", str(ls)]
    assert main([*common, *unlabeled]) == 0
    assert "needs labels for 20 rows (Label Studio oracle)" in capsys.readouterr().out
    view = ElementTree.fromstring((ls / "to_label" / "labelstudio.xml").read_text())
    assert view.find("Text").attrib == {"name": "item", "value": "$tavaal_id"} and view.find("Image") is None
    for stage in (0, 1):
        items = tasks_of(ls, stage)
        assert len(items) == 20 and all("image" not in t["data"] for t in items)
        assert all(("predictions" in t) == (stage == 1) for t in items)
        export = write(tmp_path / f"export{stage}.json", exported(items, truth))
        assert main(["--resume", str(ls), "--labels", str(export)]) == 0
    a, b = checkpoint.load_latest(sim), checkpoint.load_latest(ls)
    assert [r["selected"] for r in b.records] == [r["selected"] for r in a.records]


@pytest.fixture(scope="module")
def stopped(files, tmp_path_factory):
    """A Label Studio run stopped after stage 0's query: stage 1's tasks wait for annotations."""
    out = tmp_path_factory.mktemp("ls_stopped") / "run"
    assert main(args(files, "unlabeled.parquet", out, "--oracle", "labelstudio")) == 0
    export = write(out.parent / "export0.json", exported(tasks_of(out, 0), files["truth"]))
    assert main(["--resume", str(out), "--labels", str(export)]) == 0
    assert checkpoint.list_stages(out) == [0] and len(tasks_of(out, 1)) == 40
    return out


def _bad_exports(items: list[dict], truth: dict, answered: set) -> dict[str, tuple[object, str]]:
    """name -> (the export, a piece of its one-line error)."""
    good = exported(items, truth)
    ids = [t["data"]["tavaal_id"] for t in items]
    other = next(i for i in truth if i not in ids and i not in answered)
    unknown = json.loads(json.dumps(good))
    unknown[4]["data"]["tavaal_id"] = "nope"
    missing = json.loads(json.dumps(good))
    missing[2]["annotations"] = []
    zebra = json.loads(json.dumps(good))
    zebra[3]["annotations"][0]["result"][0]["value"]["choices"] = ["zebra"]
    disagree = json.loads(json.dumps(good))
    disagree[5]["annotations"].append({"result": [{"from_name": "label", "value": {"choices": ["zz"]}}]})
    two = json.loads(json.dumps(good))
    two[6]["annotations"][0]["result"][0]["value"]["choices"] = ["bl", "br"]
    stranger = json.loads(json.dumps(good))
    stranger[0]["data"] = {"image": "x.png"}
    elsewhere = json.loads(json.dumps(good))
    elsewhere[1]["data"]["tavaal_run"] = "another"
    return {
        "unknown id": (unknown, "task 5 (Label Studio task 5): id 'nope' is not in the pool"),
        "not requested": (
            [*good, {"id": 99, "data": {"tavaal_id": other}, "annotations": good[0]["annotations"]}],
            f"task 41 (Label Studio task 99): id '{other}' was not requested",
        ),
        "twice": ([*good, good[3]], f"task 41 (Label Studio task 4): id '{ids[3]}' is labeled twice (first on task 4"),
        "missing annotation": (missing, f"task 3 (Label Studio task 3): id '{ids[2]}' has no label"),
        "missing task": (good[:-1], f"has no task for 1 of the 40 requested ids (e.g. '{ids[-1]}')"),
        "unknown class": (zebra, "task 4 (Label Studio task 4): label 'zebra' is not a known class (bl, br, tl, tr)"),
        "disagree": (disagree, f"id '{ids[5]}' has annotations that disagree"),
        "two classes": (two, "an annotation gives 2 classes (bl, br)"),
        "no tavaal_id": (stranger, "task 1 (Label Studio task 1): has no tavaal_id"),
        "another run": (elsewhere, "task 2 (Label Studio task 2) belongs to another tavaal run (tavaal_run 'another'"),
        "not a list": ({"tasks": good}, "holds a JSON dict, not Label Studio's list of tasks"),
        "not json": ("[{'id': 1", "is not a JSON export"),
    }


def test_bad_exports_exit_2_with_one_line_and_change_nothing(files, stopped, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    before = digest(run)
    answered = {t["data"]["tavaal_id"] for t in tasks_of(run, 0)}
    for name, (content, needle) in _bad_exports(tasks_of(run, 1), files["truth"], answered).items():
        bad = tmp_path / f"{name.replace(' ', '_')}.json"
        bad.write_text(content if isinstance(content, str) else json.dumps(content))
        capsys.readouterr()
        assert main(["--resume", str(run), "--labels", str(bad)]) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0] and str(bad) in err[0], (name, err)
        assert digest(run) == before, name
    # the real entry point: exit code 2, one line on stderr, nothing changed
    res = run_cli("--resume", str(run), "--labels", str(tmp_path / "unknown_class.json"))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "zebra" in res.stderr
    assert digest(run) == before
    fixed = write(tmp_path / "fixed.json", exported(tasks_of(run, 1), files["truth"]))
    assert main(["--resume", str(run), "--labels", str(fixed)]) == 0
    assert checkpoint.load_latest(run).stage == 1


def test_label_studio_export_csv_reads_tavaal_id_not_label_studios_task_id(files, stopped, tmp_path):
    """Label Studio's CSV export has its own task number in 'id': the pool's id is 'tavaal_id'."""
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    lines = ["image,tavaal_id,tavaal_stage,id,label"]
    # the whole project: stage 0's tasks (answered before) are passed over; Label Studio numbers its tasks from 1
    for k, t in enumerate(tasks_of(run, 0) + tasks_of(run, 1)):
        rid = t["data"]["tavaal_id"]
        lines.append(f"x,{rid},{t['data']['tavaal_stage']},{k + 1},{files['truth'][rid]}")
    export = tmp_path / "ls.csv"
    export.write_text("\n".join(lines))
    assert main(["--resume", str(run), "--labels", str(export)]) == 0
    assert checkpoint.load_latest(run).stage == 1


@pytest.mark.parametrize(
    "env,url,needle",
    [
        ({"LABEL_STUDIO_API_KEY": ""}, "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY is not set"),
        ({"LABEL_STUDIO_API_KEY": "t"}, "http://127.0.0.1:{closed}", "cannot be reached"),
        ({"LABEL_STUDIO_API_KEY": "t"}, "ftp://127.0.0.1", 'must be "" or an http:// or https:// address'),
        ({"LABEL_STUDIO_API_KEY": "t"}, "http://me:secret@127.0.0.1", "without credentials"),
    ],
)
def test_a_label_studio_that_cannot_be_used_stops_the_run_before_anything_is_written(
    files, tmp_path, capsys, monkeypatch, env, url, needle
):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "run"
    url = url.format(closed=free_port())
    capsys.readouterr()
    assert main(args(files, "unlabeled.parquet", out, "--oracle", "labelstudio", "--labelstudio-url", url)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists() or not any(out.rglob("*.json"))
    assert (
        main([*args(files, "unlabeled.parquet", out, "--oracle", "labelstudio", "--labelstudio-url", url), "--check"])
        == 2
    )
    assert needle in capsys.readouterr().err  # --check makes the same check


# ---------------------------------------------------------------- a real Label Studio on 127.0.0.1

TOKEN = "tavaal-test-token-0123456789"


def label_studio_binary() -> str | None:
    """The ``label-studio`` command: $TAVAAL_LABEL_STUDIO, the project's own install (.venv-labelstudio, which
    .ci/run makes from requirements-labelstudio.txt), or one on PATH."""
    for c in (os.environ.get("TAVAAL_LABEL_STUDIO"), str(ROOT / ".venv-labelstudio" / "bin" / "label-studio")):
        if c and Path(c).is_file():
            return c
    return shutil.which("label-studio")


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    binary = label_studio_binary()
    if binary is None:
        pytest.skip(
            "Label Studio is not installed: python -m venv .venv-labelstudio && "
            ".venv-labelstudio/bin/pip install -r requirements-labelstudio.txt (.ci/run does this)"
        )
    root = tmp_path_factory.mktemp("label_studio")
    port = free_port()
    log = root / "server.log"
    proc = subprocess.Popen(
        [
            binary,
            "start",
            "--no-browser",
            "--internal-host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(root / "data"),
            "--username",
            "annotator@tavaal.test",
            "--password",
            "tavaal-test-password",
            "--user-token",
            TOKEN,
            "--enable-legacy-api-token",
        ],
        stdout=open(log, "a"),
        stderr=subprocess.STDOUT,
        cwd=root,
        start_new_session=True,
        env={
            **os.environ,
            "LABEL_STUDIO_BASE_DATA_DIR": str(root / "data"),
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(root),
        },
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", proc, log, timeout=240)
        yield url, root
    finally:
        stop_group(proc)


def api(url: str, method: str, path: str, body=None, token: str = TOKEN, raw: bool = False):
    req = urllib.request.Request(
        url + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read() if raw else json.loads(r.read() or b"null")


def annotate(url: str, project: int, stage: int, truth: dict, count: int | None = None) -> int:
    """What annotators do in Label Studio: choose each task's true class (the first ``count`` tasks)."""
    items = api(url, "GET", f"/api/projects/{project}/export?exportType=JSON&download_all_tasks=true")
    todo = [t for t in items if t["data"]["tavaal_stage"] == stage and not t["annotations"]][:count]
    for t in todo:
        value = {"choices": [truth[t["data"]["tavaal_id"]]]}
        result = [{"from_name": "label", "to_name": "item", "type": "choices", "value": value}]
        api(url, "POST", f"/api/tasks/{t['id']}/annotations", {"result": result})
    return len(todo)


@pytest.mark.slow
def test_round_trip_through_a_real_label_studio_selects_what_the_simulated_oracle_selects(
    files, label_studio, tmp_path, capsys, monkeypatch
):
    url, root = label_studio
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", TOKEN)
    monkeypatch.setenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", str(root))  # the shell that started the server
    sim, ls = tmp_path / "sim", root / "runs" / "ls"  # the run below the server's document root
    assert main(args(files, "pool.parquet", sim, "--set", "al.stages=3")) == 0
    cmd = args(files, "unlabeled.parquet", ls, "--set", "al.stages=3", "--oracle", "labelstudio")
    assert main([*cmd, "--labelstudio-url", url, "--set", "labelstudio.project=tavaal round trip"]) == 0
    said = capsys.readouterr().out
    project = json.loads((ls / "to_label" / "labelstudio.json").read_text())["project"]
    assert f"0 of 40 tasks are annotated in {url}/projects/{project}" in said and f"--resume {ls}\n" in said + "\n"
    made = api(url, "GET", f"/api/projects/{project}")
    assert made["title"] == "tavaal round trip" and '<Choice value="tl"/>' in made["label_config"]
    # annotators see the images: Label Studio serves them from the run (a local-files storage tavaal added)
    task = tasks_of(ls, 0)[3]
    shown = api(url, "GET", task["data"]["image"], raw=True)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(shown))), files["pixels"][task["data"]["tavaal_id"]][0])
    # stage 0: half annotated, a resume asks again and imports nothing twice
    assert annotate(url, project, 0, files["truth"], count=20) == 20
    assert main(["--resume", str(ls)]) == 0
    assert "20 of 40 tasks are annotated" in capsys.readouterr().out and not checkpoint.list_stages(ls)
    assert annotate(url, project, 0, files["truth"]) == 20
    # stage 1's tasks go in with stage 0's predictions; a personal access token works as well as a legacy one
    pat = api(url, "POST", "/api/token/")["token"]
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", pat)
    assert main(["--resume", str(ls)]) == 0
    assert checkpoint.list_stages(ls) == [0]
    items = api(url, "GET", f"/api/projects/{project}/export?exportType=JSON&download_all_tasks=true")
    assert len(items) == 80 and sum(t["data"]["tavaal_stage"] == 1 for t in items) == 40
    stage1 = [t for t in items if t["data"]["tavaal_stage"] == 1]
    assert all(len(t["predictions"]) == 1 for t in stage1)  # the export names them by id
    shown = api(url, "GET", f"/api/predictions/{stage1[0]['predictions'][0]}")
    assert shown["result"][0]["value"]["choices"][0] in NAMES and 0.25 <= shown["score"] <= 1
    assert annotate(url, project, 1, files["truth"]) == 40
    # stage 1 answered from Label Studio's own export files instead (JSON; JSON_MIN reads the same)
    full = api(url, "GET", f"/api/projects/{project}/export?exportType=JSON", raw=True)
    flat = api(url, "GET", f"/api/projects/{project}/export?exportType=JSON_MIN", raw=True)
    (tmp_path / "export.json").write_bytes(full)
    (tmp_path / "export_min.json").write_bytes(flat)
    request, fix = ls / "to_label" / "stage_1.csv", "fix"
    assert export_answers(tmp_path / "export.json", request, fix) == export_answers(
        tmp_path / "export_min.json", request, fix
    )
    # stage 1 trains and queries, then stops for stage 2's batch
    assert main(["--resume", str(ls), "--labels", str(tmp_path / "export.json")]) == 0
    assert json.loads((ls / "labels" / "stage_1.json").read_text())["source"] == str(tmp_path / "export.json")
    # stage 2: the run waits for annotators (they finish while it polls) and goes on by itself
    assert checkpoint.list_stages(ls)[-1] == 1
    annotator = threading.Timer(3.0, annotate, (url, project, 2, files["truth"]))
    annotator.start()
    try:
        assert (
            main(["--resume", str(ls), "--set", "labelstudio.wait_minutes=2", "--set", "labelstudio.poll_seconds=1"])
            == 0
        )
    finally:
        annotator.join()
    assert "waiting up to 2 min" in capsys.readouterr().out
    a, b = checkpoint.load_latest(sim), checkpoint.load_latest(ls)
    assert a.stage == b.stage == 2
    assert [r["selected"] for r in b.records] == [r["selected"] for r in a.records]
    assert [r["label_counts"] for r in b.records] == [r["label_counts"] for r in a.records]
    assert [r["accuracy"] for r in b.records] == [r["accuracy"] for r in a.records]
    stored = json.loads((ls / "labels" / "stage_2.json").read_text())
    assert stored["source"] == f"{url}/projects/{project} (Label Studio)" and len(stored["labels"]) == 40


@pytest.mark.slow
def test_a_wrong_token_for_a_real_label_studio_is_one_line(files, label_studio, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "not-the-token")
    out = tmp_path / "run"
    cmd = args(files, "unlabeled.parquet", out, "--oracle", "labelstudio", "--labelstudio-url", label_studio[0])
    capsys.readouterr()
    assert main(cmd) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused the token in LABEL_STUDIO_API_KEY (401" in err[0], err
    assert not out.exists() or not any(out.rglob("*.json"))
