"""Reliability: damaged checkpoints fall back to the newest good stage, kept-checkpoint pruning, kills at
random moments, tracking outages, random bad input, and runs refused or failed before their end leaving nothing
started behind."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tavaal import checkpoint, faults
from tavaal.config import load_config
from tavaal.experiment import run_experiment

from conftest import ROOT, TINY, free_port, run_cli, run_main

CFG = load_config("configs/smoke.yaml", ["train.epochs=1", "vae.iterations=4"])


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """An uninterrupted 3-stage smoke run: the reference every damaged-and-resumed copy must reproduce."""
    out = tmp_path_factory.mktemp("full") / "run"
    records = run_experiment(CFG, out_dir=out, log=lambda m: None)
    return out, records


def _truncate(d):
    f = d / "state.pt"
    f.write_bytes(f.read_bytes()[:1000])


def _flip_byte(d):
    f = d / "state.pt"
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0x01  # one bit, same size: only the checksum can tell
    f.write_bytes(bytes(b))


def _drop_config(d):
    (d / "config.json").unlink()


def _drop_manifest(d):
    (d / "manifest.json").unlink()


def _garble_config(d):  # valid length, wrong bytes in the JSON the resume reads its config from
    f = d / "config.json"
    f.write_text(f.read_text().replace('"seed": 0', '"seed": 7'))


CORRUPTIONS = {
    "truncated state.pt": (_truncate, "state.pt is damaged"),
    "flipped byte": (_flip_byte, "state.pt is damaged"),
    "missing config.json": (_drop_config, "config.json is missing"),
    "missing manifest": (_drop_manifest, "no readable manifest.json"),
    "edited config.json": (_garble_config, "config.json is damaged"),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_damaged_newest_stage_is_named_and_resume_falls_back(full_run, tmp_path, kind):
    ref_dir, ref = full_run
    out = tmp_path / "run"
    shutil.copytree(ref_dir, out)
    damage, needle = CORRUPTIONS[kind]
    damage(checkpoint.stage_dir(out, 2))
    good = {p: p.read_bytes() for p in sorted(out.glob("stage-000[01]/*"))}
    lines = []
    ck = checkpoint.load_latest(out, log=lines.append)
    assert ck.stage == 1 and len(lines) == 2
    assert "stage-0002" in lines[0] and needle in lines[0] and "falling back to stage-0001" in lines[1]
    records = run_experiment(CFG, out_dir=out, resume=True, log=lines.append)
    # the redone stage equals the lost one; the good stages were not touched; the damaged one was kept aside
    assert [r.selected for r in records] == [r.selected for r in ref]
    assert [r.accuracy for r in records] == [r.accuracy for r in ref]
    assert {p: p.read_bytes() for p in sorted(out.glob("stage-000[01]/*"))} == good
    assert checkpoint.load_latest(out).stage == 2
    assert len(list(out.glob("stage-0002.damaged-*"))) == 1 and checkpoint.list_stages(out) == [0, 1, 2]


def test_cli_resume_falls_back_and_says_so(full_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(full_run[0], out)
    _flip_byte(checkpoint.stage_dir(out, 2))
    res = run_main(capsys, "--resume", str(out))
    assert res.returncode == 0, res.stderr
    assert "warning: checkpoint file" in res.stdout and "falling back to stage-0001" in res.stdout
    ref = checkpoint.load_latest(full_run[0])
    assert checkpoint.load_latest(out).pool.labeled_at.tolist() == ref.pool.labeled_at.tolist()


def test_every_stage_damaged_exits_2_with_one_line_and_writes_nothing(full_run, tmp_path):
    """The real command line (a subprocess); the other cases here call tavaal.run.main in this process."""
    out = tmp_path / "run"
    shutil.copytree(full_run[0], out)
    for s in (0, 1, 2):
        _truncate(checkpoint.stage_dir(out, s))
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    res = run_cli("--resume", str(out))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "no good stage checkpoint" in lines[0] and "3 damaged" in lines[0], res.stderr
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before


def test_keep_checkpoints_prunes_old_stages_and_resume_still_works(tmp_path, capsys):
    cfg = load_config(
        "configs/smoke.yaml", ["train.epochs=1", "vae.iterations=4", "al.stages=4", "al.keep_checkpoints=2"]
    )
    records = run_experiment(cfg, out_dir=tmp_path, log=lambda m: None)
    assert checkpoint.list_stages(tmp_path) == [2, 3]
    ck = checkpoint.load_latest(tmp_path)
    assert [r["selected"] for r in ck.records] == [r.selected for r in records]  # the history is in every stage
    more = load_config(
        "configs/smoke.yaml", ["train.epochs=1", "vae.iterations=4", "al.stages=5", "al.keep_checkpoints=2"]
    )
    assert len(run_experiment(more, out_dir=tmp_path, resume=True, log=lambda m: None)) == 5
    assert checkpoint.list_stages(tmp_path) == [3, 4]
    assert json.loads((checkpoint.stage_dir(tmp_path, 4) / "config.json").read_text())["al"]["stages"] == 5
    res = run_main(capsys, *TINY, "--set", "al.keep_checkpoints=-1", "--out", str(tmp_path / "x"))
    assert res.returncode == 2 and "al.keep_checkpoints" in res.stderr and ">= 0" in res.stderr


def _steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@pytest.mark.slow
def test_tracking_outage_mid_run_then_at_the_end_loses_and_duplicates_nothing(tmp_path, capsys):
    """A real mlflow server stopped during a run: the run goes on, warns once, and every stage reaches MLflow
    exactly once — when the server is back mid-run, or (still down at the end) through --resume."""
    import mlflow

    from tavaal.tracking import MLflowTracker
    from tavaal.tracking.metrics import MARKER

    from conftest import MlflowServer

    cfg = load_config("configs/smoke.yaml", ["train.epochs=1", "vae.iterations=4", "al.stages=4"])
    with MlflowServer(tmp_path / "mlflow") as server:
        client = mlflow.MlflowClient(tracking_uri=server.uri)
        # 1. down after stage 1 is logged, back after stage 3: stages 2-3 are held back, sent with stage 4
        said: list[str] = []
        tracker = MLflowTracker(server.uri, "outage", warn=said.append)
        down_then_up = {0: server.stop, 2: server.start}
        records = run_experiment(
            cfg,
            tracker=tracker,
            out_dir=tmp_path / "a",
            log=lambda m: None,
            on_stage=lambda r, path: down_then_up.get(r.stage, lambda: None)(),
        )
        assert len(records) == 4 and tracker.pending == []
        assert len(said) == 2 and "unreachable" in said[0] and "goes on" in said[0] and "back" in said[1]
        run = client.get_run(tracker.run_id)
        assert run.info.status == "FINISHED"
        for key in (MARKER, "labels/count", "labels/entropy", "time/stage", "test/accuracy_class_0"):
            assert _steps(client, tracker.run_id, key) == [0, 1, 2, 3], key
        assert [a.path for a in client.list_artifacts(tracker.run_id, "selected")] == [
            f"selected/stage-000{s}.parquet" for s in range(3)
        ]

        # 2. down after stage 1 until the run has ended: the run finishes (exit 0), the MLflow run stays open
        out = tmp_path / "b"
        said.clear()
        tracker = MLflowTracker(server.uri, "outage", warn=said.append)
        records = run_experiment(
            cfg,
            tracker=tracker,
            out_dir=out,
            log=lambda m: None,
            on_stage=lambda r, path: server.stop() if r.stage == 0 else None,
        )
        assert len(records) == 4 and tracker.pending == [1, 2, 3]
        assert len(said) == 2 and "stages [1, 2, 3] are not in MLflow" in said[1] and "--resume" in said[1]
        server.start()
        assert client.get_run(tracker.run_id).info.status == "RUNNING"
        res = run_main(capsys, "--resume", str(out), "--tracking-uri", server.uri)
        assert res.returncode == 0, res.stderr
        assert client.get_run(tracker.run_id).info.status == "FINISHED"
        for key in (MARKER, "labels/count", "time/stage"):
            assert _steps(client, tracker.run_id, key) == [0, 1, 2, 3], key


def _all_stage_dirs_whole(out) -> bool:
    for stage in checkpoint.list_stages(out):
        checkpoint.verify_stage(checkpoint.stage_dir(out, stage))  # raises if half-written or damaged
    return True


@pytest.mark.slow
def test_ten_sigkills_at_seeded_moments_change_nothing(tmp_path, capsys):
    """SIGKILL ``python -m tavaal.run`` 10 times — at random moments and while a checkpoint is being written —
    resuming after each; the final labeled set and every stage's picks equal the uninterrupted run's (which, and
    the last resume, run in this process)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import numpy as np

    from conftest import ROOT

    args = TINY + ["--set", "al.stages=6", "--set", "vae.iterations=30"]
    ref = tmp_path / "ref"
    assert run_main(capsys, *args, "--out", str(ref)).returncode == 0
    out = tmp_path / "killed"
    env = {**os.environ, faults.ENV: "checkpoint:0.3"}
    rng = np.random.default_rng(2026)
    kills, log = 0, []
    while kills < 10:
        cmd = ["--resume", str(out)] if checkpoint.list_stages(out) else [*args, "--out", str(out)]
        proc = subprocess.Popen(
            [sys.executable, "-m", "tavaal.run", *cmd],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        during_write = rng.random() < 0.3
        deadline = time.monotonic() + (120 if during_write else rng.uniform(2.0, 12.0))
        while proc.poll() is None and time.monotonic() < deadline:
            if during_write and any(out.glob(".stage-*.tmp-*")):
                break
            time.sleep(0.005)
        if proc.poll() is not None:  # finished (or failed) before the kill
            assert proc.returncode == 0, proc.stderr.read()
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        log.append(("write" if during_write else "time", checkpoint.list_stages(out)))
        assert _all_stage_dirs_whole(out)
    res = run_main(capsys, *(["--resume", str(out)] if checkpoint.list_stages(out) else [*args, "--out", str(out)]))
    assert res.returncode == 0, res.stderr  # the rest of the run (nothing new if it had finished)
    assert res.returncode == 0, res.stderr
    a, b = checkpoint.load_latest(ref), checkpoint.load_latest(out)
    assert a.stage == b.stage == 5 and _all_stage_dirs_whole(out)
    assert a.pool.labeled_at.tolist() == b.pool.labeled_at.tolist()
    assert [r["selected"] for r in a.records] == [r["selected"] for r in b.records]
    assert not list(out.glob(".stage-*.tmp-*"))
    print(
        f"kills survived: {kills}/{kills} ({sum(k == 'write' for k, _ in log)} during a checkpoint write); "
        f"stages after each kill: {[s[-1] if s else None for _, s in log]}"
    )


# ---------------------------------------------------------------- random bad input (hypothesis)

FIELDS = sorted(CFG.flat())
SECTIONS = sorted({k.split(".")[0] for k in FIELDS if "." in k})


def _strategies():
    from hypothesis import strategies as st

    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(),
        st.text(max_size=10),
        st.lists(st.integers(-3, 300), max_size=3),
        st.just("1e999"),
    )
    junk_key = st.text(alphabet="abcdefgz_.0 ", max_size=12)
    keys = st.one_of(st.sampled_from(FIELDS), st.sampled_from(SECTIONS), junk_key)
    sets = st.lists(st.tuples(keys, st.one_of(scalars, st.text(max_size=12))), max_size=4)
    section = st.dictionaries(
        st.one_of(st.sampled_from(sorted({k.split(".")[-1] for k in FIELDS})), junk_key), scalars, max_size=4
    )
    docs = st.one_of(
        st.dictionaries(st.one_of(st.sampled_from(SECTIONS), junk_key), st.one_of(section, scalars), max_size=4),
        scalars,
        st.text(max_size=40),
    )
    return sets, docs


def _main(argv: list[str]) -> tuple[int, str]:
    """``python -m tavaal.run ARGV`` in this process: (exit code, stderr). Any other exception fails the test
    with its traceback: exactly what must never reach a user."""
    import contextlib
    import io

    from tavaal.run import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's own exit
            code = e.code
    return code, err.getvalue()


def _one_line_or_ok(code: int, err: str, tried: dict) -> None:
    assert code in (0, 2), (code, err)
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err
    tried[code] = tried.get(code, 0) + 1


def _yaml_text(value) -> str:
    import yaml

    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def test_random_set_values_and_config_documents_end_in_a_run_check_or_one_line_exit_2(tmp_path, capsys):
    """Random ``--set`` values on the smoke preset, and random config documents: each passes ``--check`` (the
    run's own checks up to the first stage: config, data, pool size, strategy) or exits 2 with one line."""
    import yaml
    from hypothesis import HealthCheck, given, settings

    sets, docs = _strategies()
    tried: dict = {}

    @settings(max_examples=250, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(sets)
    def random_sets(pairs):
        argv = ["--config", "configs/smoke.yaml", "--check"] + [f"--set={k}={_yaml_text(v)}" for k, v in pairs]
        _one_line_or_ok(*_main(argv), tried)

    @settings(max_examples=250, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(docs)
    def random_docs(doc):
        path = tmp_path / "random.yaml"
        path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
        _one_line_or_ok(*_main(["--config", str(path), "--check"]), tried)

    random_sets()
    random_docs()
    assert tried.get(2, 0) >= 200 and tried.get(0, 0) >= 1, tried  # both outcomes were really exercised
    assert not list(tmp_path.glob("runs*")) and not (tmp_path / "runs").exists()
    print(
        f"random inputs: {sum(tried.values())} tried, {tried.get(2, 0)} clean one-line errors, {tried.get(0, 0)} valid"
    )
    # a valid one runs for real (the smoke preset trimmed), and --check wrote nothing anywhere
    res = run_main(capsys, *TINY, "--set", "al.stages=2", "--out", str(tmp_path / "real"))
    assert res.returncode == 0 and checkpoint.list_stages(tmp_path / "real") == [0, 1], res.stderr


# --- refused or failed runs leave nothing started behind ------------------------------------------------------------


def _mlflow_runs(uri: str) -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def _processes_naming(text: str) -> list[int]:
    """Ids of the processes whose command line contains ``text`` (every process of a Ray names its temp dir)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:  # ended meanwhile
            pass
    return pids


@pytest.fixture
def ray_tmp():
    """A temp dir of its own for any Ray a test's subprocess starts (RAY_TMPDIR); short, for Ray's socket paths."""
    path = Path(tempfile.mkdtemp(prefix="tvrun", dir="/tmp"))
    yield path
    for pid in _processes_naming(str(path)):  # a failing test's leftovers: ours, by id
        os.kill(pid, 9)
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_a_model_data_mismatch_is_refused_before_anything_starts(tmp_path, ray_tmp, capsys, backend):
    """A model that cannot take the data: one line, exit 2, and nothing behind it: no MLflow run (so none left
    RUNNING), no output directory and, with --backend ray (a subprocess: a Ray of its own if it started one), no
    Ray started."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    argv = [
        *TINY,
        "--set",
        "model.name=mlp",
        "--backend",
        backend,
        "--tracking-uri",
        uri,
        "--out",
        str(tmp_path / "out"),
    ]
    res = run_cli(*argv, env={"RAY_TMPDIR": str(ray_tmp)}) if backend == "ray" else run_main(capsys, *argv)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert "model 'mlp' expects a vector input_shape" in lines[0]
    assert _mlflow_runs(uri) == [] and not (tmp_path / "out").exists()
    assert list(ray_tmp.iterdir()) == [] and _processes_naming(str(ray_tmp)) == []


REFUSED_AFTER_RAY_STARTED = """
import os, sys, time
from pathlib import Path
import ray
from tavaal.config import load_config
from tavaal.errors import TrackingError
from tavaal.experiment import run_experiment
from tavaal.tracking import MLflowTracker

cfg = load_config("configs/smoke.yaml", ["backend.name=ray", "train.epochs=1", "vae.iterations=4"])
try:
    run_experiment(cfg, tracker=MLflowTracker(sys.argv[1]), log=lambda m: None)
except TrackingError as e:
    print("refused:", e)
print("ray initialized:", ray.is_initialized())
tmp = os.environ["RAY_TMPDIR"]
started = bool(list(Path(tmp).glob("ray/session_*")))  # Ray keeps its sessions in $RAY_TMPDIR/ray

def naming(proc):
    try:
        return tmp.encode() in proc.joinpath("cmdline").read_bytes()
    except OSError:
        return False

deadline = time.monotonic() + 30
while time.monotonic() < deadline:  # before this process exits: no atexit hook does the work
    left = [p for p in Path("/proc").glob("[0-9]*") if naming(p)]
    if not left:
        break
    time.sleep(0.5)
print("ray started:", started, "processes left:", len(left))
"""


@pytest.mark.slow
def test_a_run_refused_after_its_ray_started_stops_that_ray(ray_tmp):
    """The Ray backend starts a local Ray, then the tracking server turns out to be unreachable: the run is refused
    in one line, and the Ray it started is shut down before it returns, all of its processes gone."""
    res = subprocess.run(
        [sys.executable, "-c", REFUSED_AFTER_RAY_STARTED, f"http://127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "RAY_TMPDIR": str(ray_tmp)},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "refused: MLflow tracking server" in res.stdout and "unreachable" in res.stdout, res.stdout
    assert "ray initialized: False" in res.stdout
    assert "ray started: True processes left: 0" in res.stdout, res.stdout


@pytest.mark.parametrize("error,status", [(RuntimeError, "FAILED"), (KeyboardInterrupt, "KILLED")])
def test_a_run_that_stops_mid_way_ends_its_mlflow_run(tmp_path, error, status):
    import mlflow

    from tavaal.tracking import MLflowTracker

    def stop(record, stage_path):
        raise error("stopped after stage 0")

    tracker = MLflowTracker(f"sqlite:///{tmp_path}/mlflow.db", "stops")
    with pytest.raises(error, match="stopped after stage 0"):
        run_experiment(CFG, tracker=tracker, out_dir=tmp_path / "run", log=lambda m: None, on_stage=stop)
    run = mlflow.MlflowClient(tracking_uri=tracker.tracking_uri).get_run(tracker.run_id)
    assert run.info.status == status
    assert checkpoint.list_stages(tmp_path / "run") == [0]  # what was done is kept for --resume


def test_the_fault_seam_fires_only_where_and_when_it_is_told(tmp_path, monkeypatch):
    """``tavaal.faults``: nothing without its variable; a trial fault raises once at its stage; a worker fault
    waits for its arming file (the process death itself is what the Ray Train tests exercise)."""
    faults.point("trial", 0)  # unset: nothing happens
    monkeypatch.setenv(faults.ENV, f"task:1:{tmp_path},trial:2:{tmp_path}")
    faults.point("trial", 1)
    faults.point("task", 1)  # not armed: no death
    with pytest.raises(RuntimeError, match="injected trial fault after stage 2"):
        faults.point("trial", 2)
    assert (tmp_path / "fired").is_file()
    faults.point("trial", 2)  # once per fired file
