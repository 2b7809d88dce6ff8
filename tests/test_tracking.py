"""MLflowTracker against real stores: a SQLite file under tmp_path and one real ``mlflow server`` on loopback."""

import csv
import json
import time

import pyarrow.parquet as pq
import pytest

from tavaal.config import Config
from tavaal.errors import TrackingError
from tavaal.tracking import MLflowTracker, NullTracker
from tavaal.tracking.metrics import stage_metrics
from tavaal.tracking.parent import find_child_run, log_parent_summary, start_parent_run

from conftest import free_port

CLASSES = 3
METRICS = (
    [
        "test/accuracy",
        "test/balanced_accuracy",
        "labels/count",
        "labels/entropy",
        "labels/entropy_norm",
        "time/stage",
        "time/train",
        "time/query",
        "info/vae_loss",
        "info/disc_loss",
        "labels/picked",
    ]
    + [f"labels/class_{c}" for c in range(CLASSES)]
    + [f"test/accuracy_class_{c}" for c in range(CLASSES)]
)


def make_record(stage: int, last: bool = False) -> dict:
    """A StageRecord.to_dict() as the loop makes it: 20 initial labels, 10 more per stage."""
    counts = [7 + 4 * stage, 7 + 3 * stage, 6 + 3 * stage]
    return {
        "stage": stage,
        "num_labeled": sum(counts),
        "accuracy": 0.5 + 0.1 * stage,
        "balanced_accuracy": 0.45 + 0.1 * stage,
        "per_class_accuracy": [0.4 + 0.1 * stage + 0.05 * c for c in range(CLASSES)],
        "label_counts": counts,
        "label_entropy": 1.05 + 0.01 * stage,
        "label_entropy_norm": 0.95 + 0.01 * stage,
        "selected": [] if last else [1000 * (stage + 1) + i for i in range(10)],
        "time_train": 1.5 + stage,
        "time_query": 0.25,
        "time_stage": 2.0 + stage,
        "info": {} if last else {"vae_loss": 3.0 - stage, "disc_loss": 0.7, "name": "not a number"},
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (its schema migration is the slow part); each test has its experiment."""
    d = tmp_path_factory.mktemp("store")
    return {"tracking_uri": f"sqlite:///{d}/mlflow.db", "artifact_location": (d / "artifacts").as_uri()}


def client_for(uri):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


def history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_null_tracker_returns_no_run_id():
    t = NullTracker()
    assert t.start({"seed": 0}, run_id="x") is None
    t.log_stage(make_record(0))
    t.end()


def test_stage_metrics_names_and_marker_last():
    m = stage_metrics(make_record(1))
    assert sorted(m) == sorted(METRICS)
    assert list(m)[-1] == "test/accuracy" and m["labels/count"] == 30.0 and m["info/vae_loss"] == 2.0


def test_run_logs_params_metrics_and_artifacts(store, tmp_path):
    cfg = Config()
    tracker = MLflowTracker(
        store["tracking_uri"], "exp-run", run_name="one", artifact_location=store["artifact_location"]
    )
    run_id = tracker.start(cfg.to_dict())
    for stage in range(3):
        tracker.log_stage(make_record(stage, last=stage == 2))
    tracker.end()

    client = client_for(store["tracking_uri"])
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "one"
    assert run.data.params == {k: str(v) for k, v in cfg.flat().items()}
    assert history(client, run_id, "test/accuracy") == [(0, 0.5), (1, 0.6), (2, pytest.approx(0.7))]
    assert history(client, run_id, "labels/count") == [(0, 20.0), (1, 30.0), (2, 40.0)]
    assert history(client, run_id, "labels/class_0") == [(0, 7.0), (1, 11.0), (2, 15.0)]
    assert history(client, run_id, "test/accuracy_class_2")[0] == (0, pytest.approx(0.5))
    assert history(client, run_id, "time/train") == [(0, 1.5), (1, 2.5), (2, 3.5)]
    assert history(client, run_id, "info/vae_loss") == [(0, 3.0), (1, 2.0)]  # stage 2 had no query
    # the stage metrics, the objective so far at every stage, and MLflow's system metrics (its own monitor)
    assert {k for k in run.data.metrics if not k.startswith("system/")} == set(METRICS) | {"auc", "final_accuracy"}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(run.data.metrics)
    # trapezoid over (20, 0.5), (30, 0.6), (40, 0.7), divided by the label range
    assert history(client, run_id, "auc") == [(0, 0.5), (1, pytest.approx(0.55)), (2, pytest.approx(0.6))]
    assert history(client, run_id, "final_accuracy") == [(0, 0.5), (1, 0.6), (2, pytest.approx(0.7))]
    tags = run.data.tags
    assert (tags["tavaal.strategy"], tags["tavaal.seed"], tags["tavaal.dataset"]) == ("tavaal", "0", "cifar10")
    assert tags["mlflow.source.name"] == "python -m tavaal.run" and "tavaal.sweep" not in tags

    names = sorted(a.path for a in client.list_artifacts(run_id, "selected"))
    assert names == ["selected/stage-0000.parquet", "selected/stage-0001.parquet"]  # empty selection: none
    table = pq.read_table(client.download_artifacts(run_id, "selected/stage-0001.parquet", str(tmp_path)))
    assert str(table.schema.field("index").type) == "int64"
    assert table.column("stage").to_pylist() == [1] * 10
    assert table.column("index").to_pylist() == list(range(2000, 2010))
    with open(client.download_artifacts(run_id, "config.json", str(tmp_path / "c"))) as f:
        config = json.load(f)
    assert config == json.loads(json.dumps(cfg.to_dict()))
    assert {a.path for a in client.list_artifacts(run_id)} >= {"config.json", "config.yaml", "accuracy.png", "selected"}
    with open(client.download_artifacts(run_id, "accuracy.png", str(tmp_path / "p")), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert run.info.artifact_uri.startswith(store["artifact_location"])  # nothing lands in the repo's mlruns/
    # MLflow 3's UI opens the experiment in its training view, not an empty GenAI traces page
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_resume_logs_nothing_twice(store):
    config = {"seed": 1, "al": {"stages": 4, "strategy": "tavaal"}}
    first = MLflowTracker(store["tracking_uri"], "exp-resume", artifact_location=store["artifact_location"])
    run_id = first.start(config)
    for stage in range(3):
        first.log_stage(make_record(stage))
    first.end("KILLED")

    resumed = MLflowTracker(store["tracking_uri"], "exp-resume")
    assert resumed.start(config | {"seed": 99}, run_id=run_id) == run_id
    client = client_for(store["tracking_uri"])
    assert client.get_run(run_id).info.status == "RUNNING"
    for stage in range(4):  # a resumed loop re-sends the stages the checkpoint holds
        resumed.log_stage(make_record(stage))
    resumed.log_stage(make_record(3))  # and a second send of the same stage is a no-op too
    resumed.end()

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["seed"] == "1"  # params are the run's, logged once
    for key in METRICS:
        assert [s for s, _ in history(client, run_id, key)] == [0, 1, 2, 3], key
    assert len(client.list_artifacts(run_id, "selected")) == 4


def test_resume_of_unknown_run_is_one_line_error(store):
    with pytest.raises(TrackingError, match="not found") as e:
        MLflowTracker(store["tracking_uri"], "exp-unknown").start({}, run_id="0" * 32)
    assert "\n" not in str(e.value)


def test_sweep_parent_children_and_summary(store, tmp_path):
    uri = store["tracking_uri"]
    parent = start_parent_run(uri, "sweep", "sweep-1", {"sweep": {"objective": "auc"}})  # artifacts beside the db
    children = {}
    for trial in ("t1", "t2"):
        t = MLflowTracker(
            uri, "sweep", run_name=f"trial-{trial}", parent_run_id=parent, tags={"tavaal.trial_id": trial}
        )
        children[trial] = t.start({"seed": 0, "trial": trial})
        for stage in range(2):
            t.log_stage(make_record(stage))
        t.end()
    assert find_child_run(uri, parent, "t2") == children["t2"]
    assert find_child_run(uri, parent, "t9") is None
    trials = [
        {"trial_id": "t2", "status": "OK", "auc": 0.8, "param.eta": 1.0},
        {"trial_id": "t1", "status": "OK", "auc": 0.6, "param.eta": 0.5},
    ]
    log_parent_summary(uri, parent, trials, "auc")

    client = client_for(uri)
    for run_id in children.values():
        assert client.get_run(run_id).data.tags["mlflow.parentRunId"] == parent
    run = client.get_run(parent)
    assert run.info.artifact_uri.startswith(uri[len("sqlite:///") :].replace("mlflow.db", "mlruns/sweep/"))
    assert run.info.status == "FINISHED" and run.data.params == {"sweep.objective": "auc"}
    # the best trial at a glance (issue 25): its objective as the parent's metrics, its id, run and point as tags
    assert run.data.metrics == {"auc": 0.8, "trials/finished": 2.0, "trials/errored": 0.0}
    assert run.data.tags["tavaal.best_trial_id"] == "t2" and run.data.tags["tavaal.best_run_id"] == children["t2"]
    assert run.data.tags["tavaal.best.eta"] == "1.0"
    with open(client.download_artifacts(parent, "trials.csv", str(tmp_path))) as f:
        assert list(csv.DictReader(f)) == [{k: str(v) for k, v in row.items()} for row in trials]
    with open(client.download_artifacts(parent, "comparison.png", str(tmp_path)), "rb") as f:
        assert f.read(4) == b"\x89PNG"


@pytest.mark.parametrize("kind", ["http", "sqlite"])
def test_unreachable_store_fails_fast_with_one_line(kind, tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    uri = f"http://127.0.0.1:{free_port()}" if kind == "http" else f"sqlite:///{tmp_path}/a-file/mlflow.db"
    t0 = time.monotonic()
    with pytest.raises(TrackingError) as e:
        MLflowTracker(uri).start({"seed": 0})
    assert time.monotonic() - t0 < 15
    msg = str(e.value)
    assert "\n" not in msg and uri in msg and "--tracking-uri sqlite:///mlflow.db" in msg
    if kind == "http":
        assert "unreachable" in msg


def test_real_mlflow_server(mlflow_server):
    uri = mlflow_server.uri

    tracker = MLflowTracker(uri, "served", run_name="remote")
    run_id = tracker.start({"seed": 3, "al": {"budget": 10}})
    for stage in range(2):
        tracker.log_stage(make_record(stage))
    tracker.end()

    client = client_for(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"seed": "3", "al.budget": "10"}
    assert history(client, run_id, "labels/count") == [(0, 20.0), (1, 30.0)]
    assert {a.path for a in client.list_artifacts(run_id)} >= {"config.json", "accuracy.png", "selected"}
    # the server stores this run's files under its artifact root (the server is shared: this run's folder)
    stored = [p for p in (mlflow_server.root / "artifacts").rglob("stage-0001.parquet") if run_id in p.parts]
    assert len(stored) == 1 and pq.read_table(stored[0]).column("index").to_pylist() == list(range(2000, 2010))


# ---------------------------------------------------------------- credentials in URIs (issue 24)

KEY_ID, SECRET, TOKEN, SIGNATURE = "AKIAEXAMPLE7Q", "wJalrXUt/K7MDENG+bPxRfiCYzz", "ghp_t0kenValue9", "5ig9ature0ff"


@pytest.mark.parametrize(
    "text,want",
    [
        ("s3://KEY:SECRET@bucket/pool.parquet", "s3://***@bucket/pool.parquet"),
        (f"s3://{KEY_ID}:{SECRET}@bucket/a/pool.parquet", "s3://***@bucket/a/pool.parquet"),  # "/" in the secret
        ("https://user:pass@host:8443/x?a=1", "https://***@host:8443/x?a=1"),
        (f"https://{TOKEN}@github.com/org/repo.git", "https://***@github.com/org/repo.git"),
        (
            f"https://b.s3.amazonaws.com/k?X-Amz-Credential=AK%2F1&X-Amz-Signature={SIGNATURE}&X-Amz-Expires=60#f",
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Expires=60#f",
        ),
        (
            "https://acct.blob.core.windows.net/c/p?sv=2024&sig=abc%2Fd&se=x",
            "https://acct.blob.core.windows.net/c/p?sv=2024&sig=***&se=x",
        ),
        ("http://h/api?token=t&password=p&api_key=k&page=2", "http://h/api?token=***&password=***&api_key=***&page=2"),
        (
            "error at http://u:p@127.0.0.1:9 (see http://u:p@127.0.0.1:9/health)",
            "error at http://***@127.0.0.1:9 (see http://***@127.0.0.1:9/health)",
        ),
        # no credentials: unchanged, character for character
        ("sqlite:///tmp/m.db?mode=ro", "sqlite:///tmp/m.db?mode=ro"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("http://[::1]:5000/x?", "http://[::1]:5000/x?"),
        ("gs://bucket/path@v2/x", "gs://bucket/path@v2/x"),
        ("no uri here: user:pass", "no uri here: user:pass"),
        (3.5, "3.5"),
    ],
)
def test_redact_known_values(text, want):
    from tavaal.redact import redact

    assert redact(text) == want


def test_redact_values_keeps_structure():
    from tavaal.redact import redact_values

    cfg = {"data": {"path": "s3://k:s@b/p", "n": 3, "paths": ["https://t@h/x", None]}, "seed": 0}
    assert redact_values(cfg) == {
        "data": {"path": "s3://***@b/p", "n": 3, "paths": ["https://***@h/x", None]},
        "seed": 0,
    }
    assert cfg["data"]["path"] == "s3://k:s@b/p"  # a copy: the run's own config is untouched


def store_files(root):
    """(path, bytes) of every file under ``root``: the SQLite file (and its journal) and every artifact."""
    return [(p, p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()]


def test_no_credentials_reach_the_mlflow_store(tmp_path, capsys):
    """A run whose config holds credentialed URIs, tracked into a real SQLite store (params, config artifacts,
    tags, a sweep's parent run and its trials.csv): no secret is anywhere in the store's bytes, the masked
    form is."""
    root = tmp_path / "store"
    root.mkdir()
    uri = f"sqlite:///{root}/mlflow.db"
    pool = f"s3://{KEY_ID}:{SECRET}@bucket/pool.parquet"
    config = Config().to_dict()
    config["data"]["path"] = pool
    config["backend"]["storage_path"] = f"https://{TOKEN}@host/ckpt?X-Amz-Signature={SIGNATURE}&part=1"
    tracker = MLflowTracker(uri, "creds", run_name="one", tags={"source": f"https://{TOKEN}@github.com/o/r.git"})
    run_id = tracker.start(config)
    for stage in range(2):
        tracker.log_stage(make_record(stage))
    tracker.end()
    parent = start_parent_run(uri, "creds-sweep", "sweep", {"sweep.base": pool}, tags={"origin": pool})
    log_parent_summary(uri, parent, [{"trial_id": "t1", "status": "OK", "auc": 0.5, "param.data.path": pool}], "auc")

    client = client_for(uri)
    run = client.get_run(run_id)
    assert run.data.params["data.path"] == "s3://***@bucket/pool.parquet"
    assert run.data.params["backend.storage_path"] == "https://***@host/ckpt?X-Amz-Signature=***&part=1"
    assert run.data.tags["source"] == "https://***@github.com/o/r.git"
    assert client.get_run(parent).data.params["sweep.base"] == "s3://***@bucket/pool.parquet"
    with open(client.download_artifacts(run_id, "config.json", str(tmp_path / "dl"))) as f:
        assert json.load(f)["data"]["path"] == "s3://***@bucket/pool.parquet"
    assert config["data"]["path"] == pool  # the run's own config keeps its credentials (it needs them)

    files = store_files(root)
    names = {p.name for p, _ in files}
    assert {"mlflow.db", "config.json", "config.yaml", "trials.csv", "accuracy.png"} <= names, names
    for secret in (KEY_ID, SECRET, TOKEN, SIGNATURE):
        leaks = [str(p) for p, data in files if secret.encode() in data]
        assert not leaks, f"{secret} found in {leaks}"
    masked = b"s3://***@bucket/pool.parquet"
    for name in ("mlflow.db", "config.json", "config.yaml", "trials.csv"):
        assert any(masked in data for p, data in files if p.name == name), name
    out = capsys.readouterr()
    assert not [s for s in (KEY_ID, SECRET, TOKEN, SIGNATURE) if s in out.out + out.err]


def test_a_password_in_an_unreachable_tracking_uri_stays_out_of_the_error(capsys):
    uri = f"http://user:s3cretPw@127.0.0.1:{free_port()}"
    with pytest.raises(TrackingError) as e:
        MLflowTracker(uri).start({"seed": 0})
    msg = str(e.value)
    assert "s3cretPw" not in msg and "\n" not in msg
    assert f"http://***@127.0.0.1:{uri.rsplit(':', 1)[1]} is unreachable" in msg
    out = capsys.readouterr()
    assert "s3cretPw" not in out.out + out.err


def test_a_password_in_a_server_uri_is_used_but_never_printed(mlflow_server, capsys):
    """User info in a server URI reaches the server (the health check sends it as basic auth; this server has no
    auth and ignores it), and neither the tracker nor mlflow's "View run at <URI>" lines print it."""
    uri = mlflow_server.uri.replace("http://", "http://user:s3cretPw@")
    tracker = MLflowTracker(uri, "served-creds", run_name="remote")
    run_id = tracker.start({"seed": 3})
    tracker.log_stage(make_record(0))
    tracker.end()
    assert client_for(mlflow_server.uri).get_run(run_id).info.status == "FINISHED"
    out = capsys.readouterr()
    assert "s3cretPw" not in out.out + out.err
