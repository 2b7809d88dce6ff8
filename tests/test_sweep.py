"""Sweeps: search-space checks, the objective, and real sweeps (local Ray, MLflow store and server)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tavaal import faults
from tavaal.config import load_config
from tavaal.core.metrics import objective_metrics
from tavaal.errors import ConfigError
from tavaal.search_space import check_space, default_point, read_space
from tavaal.sweep.presets import STATE_FILE

from conftest import ROOT, call_main, free_port, stop_group


def sweep_main(capsys, *args):
    """``python -m tavaal.sweep ARGS`` in this process (a sweep's trials then run on the session's Ray)."""
    from tavaal.sweep.cli import main

    return call_main(main, args, capsys)


def write_space(tmp_path, text):
    p = tmp_path / "space.yaml"
    p.write_text(text)
    return str(p)


def test_sweep_package_has_no_cycle_and_help_imports_no_ray():
    """cli -> runner -> trial / callback: the lower modules import neither cli nor runner; --help imports no Ray."""
    code = (
        "import sys, tavaal.sweep.trial, tavaal.sweep.callback; "
        "up = sorted({'tavaal.sweep.cli', 'tavaal.sweep.runner'} & set(sys.modules)); print(up); "
        "sys.exit(1 if up else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    code = (
        "import runpy, sys; sys.argv = ['tavaal.sweep', '--help']\n"
        "try: runpy.run_module('tavaal.sweep', run_name='__main__')\n"
        "except SystemExit as e: assert e.code == 0, e.code\n"
        "bad = sorted({'ray', 'mlflow', 'tavaal.sweep.runner'} & set(sys.modules)); print(bad); "
        "sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0 and "usage: python -m tavaal.sweep" in res.stdout, res.stdout + res.stderr


def test_objective_known_values():
    recs = [
        {"num_labeled": 100, "accuracy": 0.5},
        {"num_labeled": 200, "accuracy": 0.7},
        {"num_labeled": 400, "accuracy": 0.8},
    ]
    m = objective_metrics(recs)
    # trapezoid: (100·0.6 + 200·0.75) / 300 = 0.7
    assert m["auc"] == pytest.approx(0.7) and m["final_accuracy"] == 0.8
    assert objective_metrics(recs[:1]) == {"auc": 0.5, "final_accuracy": 0.5}


@pytest.mark.parametrize(
    "text,needle",
    [
        ("train.nope: {uniform: [0, 1]}", "unknown config key 'train.nope'"),
        ("train.eta: {uniform: [2, 2]}", "empty range"),
        ("vae.latent_dim: {choice: []}", "empty choice"),
        ("train.eta: {loguniform: [0, 1]}", "low end > 0"),
        ("train.lr: {uniform: [-1, 1]}", "train.lr"),
        ("train.eta: {normal: [0, 1]}", "must be one of"),
    ],
)
def test_bad_space_is_rejected(tmp_path, text, needle):
    base = load_config("configs/smoke.yaml").to_dict()
    path = write_space(tmp_path, text)
    with pytest.raises(ConfigError, match=needle) as e:
        check_space(read_space(path), base, path)
    assert "\n" not in str(e.value)


def test_default_point_is_the_paper_default():
    base = load_config("configs/cifar10_tavaal.yaml").to_dict()
    point = default_point(read_space("tune/tavaal.yaml"), base)
    assert point["train.eta"] == 1.0 and point["vae.latent_dim"] == 32 and point["vae.kl_reduction"] == "mean"
    assert point["vae.vae_steps"] == 1


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--space", "SPACE"], "unknown config key"),
        (["--tracking-uri", "http://127.0.0.1:9"], "unreachable"),
        (["--resume", "no-such-sweep"], "no sweep 'no-such-sweep'"),
        (["--set", "al.oracle=manual"], "sweeps need the simulated oracle"),
        # a password in the tracking URI: named redacted (issue 24)
        (["--tracking-uri", "http://user:s3cret@127.0.0.1:9"], "MLflow tracking server http://***@127.0.0.1:9 is"),
    ],
)
def test_sweep_bad_input_exits_2_before_any_trial(tmp_path, capsys, extra, needle):
    extra = [write_space(tmp_path, "vae.nope: {choice: [1]}") if a == "SPACE" else a for a in extra]
    res = sweep_main(
        capsys,
        "--preset",
        "smoke",
        "--storage-path",
        str(tmp_path / "runs"),
        "--tracking-uri",
        f"sqlite:///{tmp_path}/m.db",
        *extra,
    )
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], res.stderr
    assert "s3cret" not in res.stderr + res.stdout
    assert not list((tmp_path / "runs").glob("*/tavaal_sweep.json"))


def no_ray(address=None, log_to_driver=False):
    raise AssertionError("the sweep started or joined Ray")


@pytest.mark.parametrize(
    "flag,value,needle",
    [
        ("--cpus-per-trial", "nan", "--cpus-per-trial nan: expected a finite number > 0 (CPUs each trial reserves"),
        ("--cpus-per-trial", "0", "--cpus-per-trial 0: expected a finite number > 0"),
        ("--cpus-per-trial", "-1", "--cpus-per-trial -1: expected a finite number > 0"),
        ("--cpus-per-trial", "inf", "--cpus-per-trial inf: expected a finite number > 0"),
        ("--gpus-per-trial", "inf", "--gpus-per-trial inf: expected a finite number >= 0 (GPUs each trial reserves"),
        ("--gpus-per-trial", "nan", "--gpus-per-trial nan: expected a finite number >= 0"),
        ("--gpus-per-trial", "-0.5", "--gpus-per-trial -0.5: expected a finite number >= 0"),
        ("--max-concurrent", "0", "--max-concurrent 0: expected a whole number >= 1 (trials at once)"),
        ("--max-concurrent", "1.5", "--max-concurrent 1.5: expected a whole number >= 1"),
        ("--num-samples", "0", "--num-samples 0: expected a whole number >= 1 (the number of trials)"),
        ("--num-samples", "nan", "--num-samples nan: expected a whole number >= 1"),
        ("--num-samples", "inf", "--num-samples inf: expected a whole number >= 1"),
        ("--max-failures", "-1", "--max-failures -1: expected a whole number >= 0 (retries of a failed trial"),
        ("--seed", "-1", "--seed -1: expected a whole number >= 0 and <= 4294967295 (the search algorithm's seed)"),
        ("--seed", "nan", "--seed nan: expected a whole number >= 0"),
        ("--cpus-per-trial", "two", "argument --cpus-per-trial: 'two' is not a number; see python -m tavaal.sweep"),
    ],
)
def test_sweep_flag_out_of_bounds_is_one_line_before_anything(tmp_path, capsys, monkeypatch, flag, value, needle):
    """nan, inf, zero or negative numeric flags: one line naming the flag, the value and what it takes, exit 2,
    before Ray starts or anything is written (issue 24: these gave tracebacks, a sweep that hung, or ran)."""
    monkeypatch.setattr("tavaal.backends.ray.connect.connect_ray", no_ray)
    res = sweep_main(
        capsys,
        "--preset",
        "smoke",
        "--storage-path",
        tmp_path / "runs",
        "--tracking-uri",
        f"sqlite:///{tmp_path}/m.db",
        flag,
        value,
    )
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-2000:]
    assert needle in lines[0], lines[0]
    assert list(tmp_path.iterdir()) == []  # no sweep directory, no MLflow store


@pytest.mark.parametrize("flag,what", [("--cpus-per-trial", "CPUs"), ("--gpus-per-trial", "GPUs")])
def test_sweep_asking_more_than_this_machine_has_is_one_line(tmp_path, capsys, monkeypatch, flag, what):
    """A sweep that starts its own Ray: a trial that needs more than the machine has would wait forever."""
    import torch

    from tavaal.sweep.runner import check_fits_this_machine

    have = os.cpu_count() if what == "CPUs" else torch.cuda.device_count()
    monkeypatch.setattr("tavaal.backends.ray.connect.starts_local_ray", lambda address: True)
    monkeypatch.setattr("tavaal.backends.ray.connect.connect_ray", no_ray)
    args = ["--preset", "smoke", "--storage-path", tmp_path / "runs", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]
    res = sweep_main(capsys, *args, flag, have + 1)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr[-2000:]
    assert lines[0].startswith(
        f"error: {flag} {have + 1}: this machine has {have} {what} and the sweep starts its own Ray"
    ), lines[0]
    assert list(tmp_path.iterdir()) == []
    # joining a cluster (an address): it may have, or gain, what this machine lacks
    monkeypatch.setattr("tavaal.backends.ray.connect.starts_local_ray", lambda address: address is None)
    from argparse import Namespace

    check_fits_this_machine(Namespace(address="ray://head:10001", cpus_per_trial=1e6, gpus_per_trial=64.0))
    with pytest.raises(ConfigError, match=f"this machine has {os.cpu_count()} CPUs"):
        check_fits_this_machine(Namespace(address=None, cpus_per_trial=1e6, gpus_per_trial=0.0))


def child_runs(uri, experiment="tavaal-sweep"):
    import mlflow

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def check_sweep_store(uri, trials=2, stages=2, experiment="tavaal-sweep", sweep_dir=None):
    """A finished sweep's MLflow runs: the parent with the best trial at a glance, every child with its stage and
    objective metrics, tags, system metrics, dataset inputs and final models (issue 25); with ``sweep_dir`` (the
    sweep's Tune directory), the best trial's logged model predicts what its last checkpoint's weights predict."""
    client, parents, children = child_runs(uri, experiment)
    assert len(parents) == 1 and len(children) == trials
    parent = parents[0]
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"trials.csv", "comparison.png"}
    sweep = parent.info.run_name
    assert parent.data.tags["tavaal.sweep"] == sweep and parent.data.tags["tavaal.role"] == "sweep"
    best = max(children, key=lambda r: r.data.metrics["auc"])  # the objective is auc (the default)
    assert parent.data.tags["tavaal.best_trial_id"] == best.data.tags["tavaal.trial_id"]
    assert parent.data.tags["tavaal.best_run_id"] == best.info.run_id
    assert parent.data.tags["tavaal.best_model_uri"] == best.data.tags["tavaal.model_uri"]
    assert parent.data.metrics["auc"] == best.data.metrics["auc"]
    assert parent.data.metrics["final_accuracy"] == best.data.metrics["final_accuracy"]
    assert parent.data.metrics["trials/finished"] == trials
    assert {k for k in parent.data.tags if k.startswith("tavaal.best.")}, parent.data.tags  # its parameters
    # the data the trials ran on shows on the (collapsed) parent's row too
    assert {d.dataset.name for d in parent.inputs.dataset_inputs} == {"synthetic pool", "synthetic test"}
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        for key in ("test/accuracy", "labels/count", "labels/entropy", "labels/entropy_norm", "time/stage"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == list(range(stages)), key
        for key in ("auc", "final_accuracy"):  # the objective, per stage and final
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == list(range(stages)), key
        tags = run.data.tags
        assert (tags["tavaal.strategy"], tags["tavaal.seed"], tags["tavaal.dataset"]) == ("tavaal", "0", "synthetic")
        assert tags["tavaal.sweep"] == sweep and run.data.params["al.strategy"] == "tavaal"  # params kept too
        assert run.info.run_name == f"tavaal-seed0-trial-{tags['tavaal.trial_id']}"
        assert "system/cpu_utilization_percentage" in run.data.metrics  # MLflow's own monitor
        inputs = {(d.dataset.name, tuple(t.value for t in d.tags)) for d in run.inputs.dataset_inputs}
        assert inputs == {("synthetic pool", ("train",)), ("synthetic test", ("test",))}
        assert all(len(d.dataset.digest) == 10 for d in run.inputs.dataset_inputs)
        assert tags["tavaal.model_uri"].startswith("models:/") and tags["tavaal.ranker_uri"].startswith("models:/")
        assert run.data.params["al.stages"] == str(stages)
        arts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.json", "accuracy.png", "selected"} <= arts
        assert [a.path for a in client.list_artifacts(run.info.run_id, "selected")] == [
            f"selected/stage-{k:04d}.parquet" for k in range(stages - 1)
        ]  # the last stage queries nothing
    if sweep_dir is not None:
        trial_dir = next(Path(sweep_dir).glob(f"*_{best.data.tags['tavaal.trial_id']}_*"))
        last = sorted(trial_dir.glob("checkpoint_*"))[-1]
        model_predicts_like_checkpoint(uri, best.data.tags["tavaal.model_uri"], last)
    return client, parents, children


def model_predicts_like_checkpoint(uri, model_uri, checkpoint_dir):
    """``mlflow.pytorch.load_model`` of a logged final model gives the logits of the checkpoint's own weights."""
    import mlflow
    import torch

    from tavaal.core.training import ModelSpec
    from tavaal.tracking.runinfo import using_tracking_uri

    with using_tracking_uri(uri):
        loaded = mlflow.pytorch.load_model(model_uri)
        example = mlflow.models.Model.load(model_uri).load_input_example()
    state = torch.load(Path(checkpoint_dir) / "state.pt", weights_only=True)
    num_classes = state["states"]["model"]["linear.weight"].shape[0]
    net, _ = ModelSpec("small_cnn", tuple(example.shape[1:]), num_classes).build(with_ranker=False)
    net.load_state_dict(state["states"]["model"])
    x = torch.from_numpy(example).float()
    x = torch.cat([x, torch.randn(3, *x.shape[1:])])  # the example and three inputs it has never seen
    with torch.no_grad():
        assert torch.allclose(loaded(x), net.eval()(x).logits, atol=1e-5)


def test_sweep_dirs_on_uris_and_resources_kept_for_a_resume(tmp_path):
    from tavaal.sweep.cli import build_parser
    from tavaal.sweep.runner import _resources, _sweep_dir, join, read_text, write_text

    assert join("s3://bucket/sweeps/", "a") == "s3://bucket/sweeps/a"
    assert join(str(tmp_path), "a") == str(tmp_path / "a")
    base = f"file://{tmp_path}/store"
    write_text(join(join(base, "k"), STATE_FILE), json.dumps({"resources": {"cpus_per_trial": 4.0}}))
    assert json.loads(read_text(f"{base}/k/{STATE_FILE}")) == {"resources": {"cpus_per_trial": 4.0}}
    args = build_parser().parse_args(["--resume", "k", "--storage-path", base, "--gpus-per-trial", "1"])
    assert _sweep_dir(args) == ("k", base, f"{base}/k")
    _resources(args, {"cpus_per_trial": 4.0, "gpus_per_trial": 0.0})
    assert (args.cpus_per_trial, args.gpus_per_trial, args.max_failures) == (4.0, 1.0, 1)  # given now wins
    new = build_parser().parse_args(["--name", "k", "--storage-path", base])
    with pytest.raises(ConfigError, match="sweep 'k' already exists"):
        _sweep_dir(new)
    with pytest.raises(ConfigError, match="no sweep 'nope' to resume"):
        _sweep_dir(build_parser().parse_args(["--resume", "nope", "--storage-path", base]))


def final_pools(sweep_dir):
    """trial params -> final labeled_at, read from the trials' last Tune checkpoints (our stage format)."""
    import torch

    out = {}
    for trial in Path(sweep_dir).iterdir():
        if not (trial / "params.json").exists():
            continue
        params = json.loads((trial / "params.json").read_text())
        last = sorted(trial.glob("checkpoint_*"))[-1]
        state = torch.load(last / "state.pt", weights_only=True)
        out[json.dumps(params, sort_keys=True)] = (state["stage"], state["pool"]["labeled_at"].tolist())
    return out


@pytest.mark.slow
def test_killed_sweep_resumes_without_duplicate_steps_and_same_picks(tmp_path, ray_cluster, capsys):
    """A sweep driver SIGKILLed (a real process group) mid-sweep, resumed: every trial ends well, each stage is
    in MLflow once, and the final pools equal an uninterrupted sweep's (the reference and the resume run in this
    process, on the session's Ray)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = [
        "--preset",
        "smoke",
        "--search",
        "random",
        "--seed",
        "3",
        "--max-concurrent",
        "1",
        "--set",
        "al.stages=3",
        "--set",
        "vae.iterations=30",
    ]
    ref = sweep_main(
        capsys,
        *common,
        "--storage-path",
        str(tmp_path / "ref"),
        "--name",
        "r",
        "--tracking-uri",
        f"sqlite:///{tmp_path}/ref.db",
    )
    assert ref.returncode == 0, ref.stderr[-3000:]
    runs = tmp_path / "runs"
    # the first trial also errors once after its first stage: Tune retries it from that stage's checkpoint
    fault = tmp_path / "fault"
    fault.mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tavaal.sweep",
            *common,
            "--storage-path",
            str(runs),
            "--name",
            "k",
            "--tracking-uri",
            uri,
            "--max-failures",
            "2",
        ],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, faults.ENV: f"trial:0:{fault}"},
    )
    deadline = time.monotonic() + 300
    while not list(runs.glob("k/*/checkpoint_000001")):  # the first trial has finished 2 stages
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep driver and everything it started
    proc.wait()
    assert (fault / "fired").exists()  # the trial error happened before the kill, and was survived
    res = sweep_main(capsys, "--resume", "k", "--storage-path", str(runs))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ERROR" not in res.stdout  # every trial ended well
    assert f"mlflow ui --backend-store-uri {uri}" in res.stdout  # a store sweep's last line
    client, parents, children = child_runs(uri)
    assert len(parents) == 1 and len(children) == 2
    for run in children:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "test/accuracy")] == [0, 1, 2]
    # a sweep in a local (SQLite) store: parent, children, metrics, artifacts, the best trial's model
    check_sweep_store(uri, stages=3, sweep_dir=runs / "k")
    assert final_pools(runs / "k") == final_pools(tmp_path / "ref" / "r")


def wait_authorized(url: str, token: str, proc, log, timeout: float = 120) -> None:
    """Until ``url`` answers 200 to a request that carries ``token`` (it must refuse one without it)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(
                urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"}), timeout=2
            ) as r:
                assert r.status == 200
            break
        except OSError:
            assert proc.poll() is None, Path(log).read_text()[-2000:]
            time.sleep(0.5)
    else:
        raise AssertionError(f"{url} did not come up in {timeout} s")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=5)
    assert refused.value.code == 401


@pytest.mark.slow
def test_ray_job_submit_to_a_local_head_with_token_authentication(tmp_path, mlflow_server):
    """`ray start --head` with token authentication (a token made here), then `ray job submit -- python -m
    tavaal.sweep --preset smoke`: with the token it runs and its runs are in MLflow; without the token, or with
    another, the job API refuses and starts no job; a run that joins the cluster without a token is refused in
    one line. The job is the suite's two-trial, two-stage sweep through the real command line: its trials tracked
    by a real ``mlflow server``, its storage a file:// URI, its log the project's lines only."""
    import secrets

    gcs, dash, agent = free_port(), free_port(), free_port()
    address = f"http://127.0.0.1:{dash}"
    log = tmp_path / "head.log"
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))  # what `ray get-auth-token --generate` makes
    user = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_")}  # no token, no mode: a new user
    user |= {"OMP_WAIT_POLICY": "PASSIVE", "RAY_USAGE_STATS_ENABLED": "0"}
    env = user | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}  # never the machine's ~/.ray
    ray_tmp = f"/tmp/tvhead-{gcs}"  # short: Ray's socket paths
    head = subprocess.Popen(
        [
            "ray",
            "start",
            "--head",
            "--block",
            "--port",
            str(gcs),
            "--num-cpus",
            "2",
            "--include-dashboard",
            "true",
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(dash),
            "--temp-dir",
            ray_tmp,
            # not the agent's default port 52365: the session's Ray (conftest) may hold it, and the job API needs it
            "--dashboard-agent-listen-port",
            str(agent),
        ],
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=env,
    )
    try:
        wait_authorized(f"{address}/api/version", token.read_text(), head, log)

        def submit(job_id, job_env, *entrypoint):
            # the dashboard answers before its job agent is up ("No available agent to submit job, please try
            # again later"; seen on a loaded machine): try again for up to a minute, as Ray says
            for _ in range(30):
                res = subprocess.run(
                    [
                        "ray",
                        "job",
                        "submit",
                        "--address",
                        address,
                        "--submission-id",
                        job_id,
                        "--working-dir",
                        str(ROOT),
                        "--",
                        *entrypoint,
                    ],
                    capture_output=True,
                    text=True,
                    timeout=600,
                    env=job_env,
                )
                if "No available agent to submit job" not in res.stdout + res.stderr:
                    return res
                time.sleep(2)
            return res

        uri = mlflow_server.uri
        # storage given as a URI (as s3:// or gs:// on a cluster): it must stay one, through Tune and the state file
        sweep = [
            "python",
            "-m",
            "tavaal.sweep",
            "--preset",
            "smoke",
            "--tracking-uri",
            uri,
            "--experiment",
            "job",
            "--storage-path",
            f"file://{tmp_path}/runs",
            "--name",
            "s",
            "--cpus-per-trial",
            "2",
        ]
        refused = {
            "no-token": (user, "Missing authentication token"),
            "other-token": (env | {"RAY_AUTH_TOKEN": secrets.token_hex(32)}, "Invalid authentication token"),
        }
        for job_id, (job_env, needle) in refused.items():
            res = submit(job_id, job_env, *sweep)
            assert res.returncode != 0 and needle in res.stdout + res.stderr, (res.stdout + res.stderr)[-3000:]
        res = submit("tavaal-smoke", env, *sweep)
        assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
        assert "succeeded" in res.stdout
        # the job's log (stdout and stderr of the sweep), between `ray job submit`'s own (coloured) lines
        log = res.stdout.split("Tailing logs until the job exits (disable with --no-wait):", 1)[1]
        log = log.split("-" * len("Job 'tavaal-smoke' succeeded"), 1)[0].rsplit("\n", 1)[0]
        assert "trials, best auc first" in log and f"browse the runs: open {uri}" in log
        # the project's lines and table only: no Tune reporter box or TensorBoard hint, no per-stage checkpoint
        # line, no colour codes
        lines = log.splitlines()
        assert [line for line in lines if line.startswith("trial ")] and len(
            [line for line in lines if " stage " in line]
        ) == 4
        for noise in (
            "Configuration for experiment",
            "TensorBoard",
            "View detailed results",
            "Checkpoint successfully",
            "\x1b[",
        ):
            assert noise not in log, noise
        check_sweep_store(uri, experiment="job", sweep_dir=tmp_path / "runs" / "s")  # through the server
        state = json.loads((tmp_path / "runs" / "s" / STATE_FILE).read_text())
        assert state["resources"] == {"cpus_per_trial": 2.0, "gpus_per_trial": 0.0, "max_failures": 1}
        assert len(list((tmp_path / "runs" / "s").glob("*/params.json"))) == 2
        # nothing named "file:" in the job's working directory (Ray's copy of the checkout) nor in the checkout
        copies = list(Path(ray_tmp).glob("session_*/runtime_resources/working_dir_files/*"))
        assert copies and not [c for c in copies if (c / "file:").exists()] and not (ROOT / "file:").exists()
        jobs = subprocess.run(
            ["ray", "job", "list", "--address", address], capture_output=True, text=True, timeout=120, env=env
        )
        assert jobs.returncode == 0 and "submission_id='tavaal-smoke'" in jobs.stdout + jobs.stderr, jobs.stderr
        assert not [j for j in refused if f"submission_id='{j}'" in jobs.stdout + jobs.stderr]
        # a driver that joins without the token (mode on, none found): one line naming the fix, exit 2
        home = tmp_path / "home"
        home.mkdir()
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "tavaal.run",
                "--config",
                "configs/smoke.yaml",
                "--backend",
                "ray",
                "--address",
                f"127.0.0.1:{gcs}",
                "--out",
                str(tmp_path / "run"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env=user | {"RAY_AUTH_MODE": "token", "HOME": str(home)},
        )
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1 and "RAY_AUTH_TOKEN" in lines[0], res.stderr[-3000:]
    finally:
        stop_group(head)
        shutil.rmtree(ray_tmp, ignore_errors=True)
