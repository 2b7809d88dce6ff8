"""What an MLflow user expects of a tracked run (issue 25), through the real command line against the session's real
``mlflow server``: the final task model and ranker logged as MLflow models that load with ``mlflow.pytorch`` and
predict what the checkpoint's weights predict, a registered model version, system metrics, the data as run inputs,
tags. Sweeps are checked on the suite's own sweeps (tests/test_sweep.py, ``check_sweep_store``)."""

import pytest
import torch

from tavaal import checkpoint
from tavaal.core.training import ModelSpec

from conftest import TINY, run_main


@pytest.fixture(scope="module")
def tracked_run(mlflow_server, tmp_path_factory):
    """One tiny 3-stage run of python -m tavaal.run with --tracking-uri (the server) and --register-model."""
    from tavaal.run import main

    out = tmp_path_factory.mktemp("ux") / "run"
    argv = [*TINY, "--out", str(out), "--tracking-uri", mlflow_server.uri, "--experiment", "ux"]
    assert main([*argv, "--register-model", "tavaal-ux"]) == 0
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_server.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("ux").experiment_id])
    return mlflow_server.uri, client, run, out


def test_final_model_and_ranker_load_and_predict_like_the_checkpoint(tracked_run):
    import mlflow

    from tavaal.tracking.runinfo import using_tracking_uri

    uri, client, run, out = tracked_run
    with using_tracking_uri(uri):
        model = mlflow.pytorch.load_model(run.data.tags["tavaal.model_uri"])
        rank = mlflow.pytorch.load_model(run.data.tags["tavaal.ranker_uri"])
        info = mlflow.models.get_model_info(run.data.tags["tavaal.model_uri"])
    assert info.signature is not None and info.saved_input_example_info is not None
    shape = list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"])
    assert shape == [-1, 1, 16, 16]  # any batch of the smoke data's images
    states = checkpoint.load_latest(out).states  # the last stage's weights, as the run checkpointed them
    net, ranker = ModelSpec("small_cnn", tuple(shape[1:]), 4).build(with_ranker=True)
    net.load_state_dict(states["model"])
    ranker.load_state_dict(states["ranker"])
    net.eval()
    ranker.eval()
    example = torch.randn(5, *shape[1:])
    with torch.no_grad():
        assert torch.allclose(model(example), net(example).logits, atol=1e-5)
        assert torch.allclose(rank(example), ranker(net(example).features), atol=1e-5)
    (version,) = client.search_model_versions("name = 'tavaal-ux'")
    assert version.run_id == run.info.run_id


def test_system_metrics_inputs_and_tags(tracked_run):
    _, client, run, _ = tracked_run
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(run.data.metrics)
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert sorted(inputs) == ["synthetic pool", "synthetic test"]
    pool = inputs["synthetic pool"]
    assert pool.dataset.source == "tavaal:synthetic" and len(pool.dataset.digest) == 10
    assert [(t.key, t.value) for t in pool.tags] == [("mlflow.data.context", "train")]
    tags = run.data.tags
    assert (tags["tavaal.strategy"], tags["tavaal.seed"], tags["tavaal.dataset"]) == ("tavaal", "0", "synthetic")
    assert run.info.run_name == "tavaal-synthetic-seed0-run"  # what it is, then its directory
    assert [m.step for m in client.get_metric_history(run.info.run_id, "auc")] == [0, 1, 2]
    assert run.data.metrics["final_accuracy"] == run.data.metrics["test/accuracy"]


def test_register_model_needs_a_tracking_uri(tmp_path, capsys):
    res = run_main(capsys, *TINY, "--out", str(tmp_path / "r"), "--register-model", "x")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert "--register-model NAME" in lines[0] and "--tracking-uri" in lines[0]
    assert not (tmp_path / "r").exists()
