"""Ray tier: training through Ray Train (2 CPU workers, gloo), worker-failure recovery, a whole experiment."""

import dataclasses

import pytest
import torch

ray = pytest.importorskip("ray")

from tavaal.backends import LocalBackend  # noqa: E402
from tavaal.backends.ray.backend import RayBackend  # noqa: E402
from tavaal.config import BackendConfig, load_config  # noqa: E402
from tavaal.core.pool import initial_pool  # noqa: E402
from tavaal.core.seeding import numpy_rng  # noqa: E402
from tavaal.core.training import ModelSpec, TaskJob, evaluate  # noqa: E402
from tavaal.data import build_dataset  # noqa: E402

from conftest import on_ray_and_locally  # noqa: E402

CFG = load_config("configs/smoke.yaml", ["train.epochs=3", "vae.iterations=6"])


@pytest.fixture(scope="module")
def stage():
    data = build_dataset(CFG.data, CFG.seed)
    pool = initial_pool(len(data.train), 192, numpy_rng(0, "initial"))
    spec = ModelSpec(CFG.model.name, data.input_shape, data.num_classes)
    return data, pool.labeled_indices(), spec


def _ray_backend(data, **kw):
    backend = RayBackend(BackendConfig(name="ray", **kw))
    backend.prepare(data, torch.device("cpu"))
    return backend


def _train_local_and_on_ray(data, job, **backend_fields):
    """(local TaskResult, Ray TaskResult) for the same job."""
    local = LocalBackend()
    local.prepare(data, torch.device("cpu"))
    backend = _ray_backend(data, **backend_fields)
    try:
        on_ray = backend.train_task(job)
    finally:
        backend.close()
    return local.train_task(job), on_ray


def _accuracy(spec, result, data):
    model, _ = spec.build(with_ranker=False)
    model.load_state_dict(result.model_state)  # strict: the Ray checkpoint loads into the local model
    return evaluate(model, data, torch.device("cpu"))["accuracy"]


def test_one_worker_ray_stage_equals_local_exactly(ray_cluster, stage):
    """One worker runs the very same core code and seeds as the local backend: identical weights."""
    data, labeled, spec = stage
    job = TaskJob(spec, dataclasses.replace(CFG.train, epochs=1), labeled, "rank", seed=4)
    ref, on_ray = _train_local_and_on_ray(data, job, num_workers=1)
    for k, v in ref.model_state.items():
        torch.testing.assert_close(on_ray.model_state[k], v, rtol=1e-5, atol=1e-6)


def test_two_worker_stage_killed_mid_stage_resumes_matches_local_and_loads_locally(ray_cluster, stage):
    """Two workers (DDP, gloo), one of them killed at epoch 1: the job resumes from the last epoch checkpoint, and
    its weights load into a local model with the local backend's accuracy (one TorchTrainer.fit for both checks)."""
    data, labeled, spec = stage
    job = TaskJob(spec, CFG.train, labeled, "rank", seed=3)
    (ray_cluster / "fired").unlink(missing_ok=True)  # the fault fires once per "fired" file (the session's Ray)
    (ray_cluster / "armed").write_text("")
    try:
        ref, on_ray = _train_local_and_on_ray(data, job, num_workers=2, max_failures=1)
    finally:
        (ray_cluster / "armed").unlink()
    assert (ray_cluster / "fired").exists()  # a worker really died at epoch 1
    assert [h["epoch"] for h in on_ray.history] == [0, 1, 2]  # epoch 0 from the checkpoint, 1-2 after restart
    ranker_keys = set(on_ray.ranker_state)
    assert ranker_keys and not any(k.startswith("module.") for k in on_ray.model_state)  # unwrapped from DDP
    acc_local, acc_ray = _accuracy(spec, ref, data), _accuracy(spec, on_ray, data)
    assert acc_local > 0.6 and acc_ray > 0.6, (acc_local, acc_ray)
    assert abs(acc_local - acc_ray) < 0.2, (acc_local, acc_ray)


def test_kept_worker_group_runs_a_whole_experiment_like_local(ray_cluster, tmp_path):
    """backend.keep_workers: one Ray Train run for every job of a 3-stage TA-VAAL experiment, the same picks as
    the local backend on the same thread count; the run grows by the budget and leaves alone the Ray it did not
    start."""
    sets = [
        "train.epochs=1",
        "vae.iterations=4",
        "al.stages=3",
        "num_threads=1",
        "backend.name=ray",
        "backend.keep_workers=true",
        f"backend.storage_path={tmp_path / 'train'}",
    ]
    cfg = load_config("configs/smoke.yaml", sets)
    on_ray, local = on_ray_and_locally(cfg, tmp_path)
    assert [r.selected for r in on_ray] == [r.selected for r in local]
    assert [r.accuracy for r in on_ray] == [r.accuracy for r in local]
    assert [r.num_labeled for r in on_ray] == [r.num_labeled for r in local] == [40, 80, 120]
    assert len(set(on_ray[0].selected)) == 40
    assert ray.is_initialized()  # the backend did not shut down a Ray it did not start
    runs = [p.name for p in (tmp_path / "train").iterdir()]
    assert len(runs) == 1 and runs[0].startswith("session-"), runs  # 3 task + 2 VAE jobs, one Train run


def test_kept_worker_group_survives_a_worker_killed_mid_job(ray_cluster, stage):
    from tavaal.core.vae_training import VAEJob

    data, labeled, spec = stage
    (ray_cluster / "fired").unlink(missing_ok=True)  # the fault fires once per "fired" file
    (ray_cluster / "armed").write_text("")
    backend = _ray_backend(data, num_workers=2, max_failures=1, keep_workers=True)
    try:
        result = backend.train_task(TaskJob(spec, CFG.train, labeled, None, seed=5))
        v = dataclasses.replace(CFG.vae, vae_steps=1, kl_reduction="mean")
        vae = backend.train_vae(VAEJob(data.input_shape, v, labeled[:64], labeled[64:], 6, 0, False))
    finally:
        backend.close()
        (ray_cluster / "armed").unlink()
    assert (ray_cluster / "fired").exists()  # a worker of the kept group really died at epoch 1
    assert [h["epoch"] for h in result.history] == [0, 1, 2]  # epoch 0 from the checkpoint, 1-2 after restart
    assert _accuracy(spec, result, data) > 0.6
    assert [h["iteration"] for h in vae.history][-1] == 6  # the restarted group took the next job too


def test_keep_workers_refuses_a_ray_too_small_to_score_beside_them():
    from tavaal.backends.ray.backend import check_room_to_score
    from tavaal.errors import ConfigError

    check_room_to_score(BackendConfig(num_workers=1, keep_workers=True), {"CPU": 2.0})
    with pytest.raises(ConfigError, match="keep_workers: 2 training workers x 1 CPU"):
        check_room_to_score(BackendConfig(num_workers=2, keep_workers=True), {"CPU": 2.0})
    with pytest.raises(ConfigError, match="GPU"):
        check_room_to_score(
            BackendConfig(gpus_per_worker=1, score_gpus_per_actor=1, keep_workers=True), {"CPU": 8.0, "GPU": 1.0}
        )
    # a Parquet pool's read tasks need a CPU beside the kept worker and the scoring actor: 3 > 2 would hang
    with pytest.raises(ConfigError, match="1 CPU for reading the Parquet files"):
        check_room_to_score(BackendConfig(num_workers=1, keep_workers=True), {"CPU": 2.0}, parquet=True)
    check_room_to_score(BackendConfig(num_workers=1, keep_workers=True), {"CPU": 3.0}, parquet=True)


def test_backend_shortcut_flags_set_the_backend_fields():
    from tavaal.run import build_parser, resolve_config

    args = build_parser().parse_args(
        [
            "--config",
            "configs/smoke.yaml",
            "--backend",
            "ray",
            "--num-workers",
            "2",
            "--cpus-per-worker",
            "0.5",
            "--keep-workers",
        ]
    )
    b = resolve_config(args).backend
    assert (b.name, b.num_workers, b.cpus_per_worker, b.keep_workers) == ("ray", 2, 0.5, True)
    assert resolve_config(build_parser().parse_args(["--config", "configs/smoke.yaml"])).backend.keep_workers is False
