"""``vae.normalize``: the official Fashion-MNIST path feeds the VAE raw [0, 1] pixels; the field changes the VAE's
input (and so its reconstruction target) and nothing else."""

import dataclasses

import numpy as np
import torch

from tavaal.config import load_config
from tavaal.core.vae_training import VAEJob, VAETraining, fit_to_vae
from tavaal.data import build_dataset
from tavaal.experiment import run_experiment

SETS = ["train.epochs=1", "vae.iterations=4", "al.stages=2"]


def test_raw_pixels_are_the_normalized_batch_with_its_normalization_undone():
    cfg = load_config("configs/smoke.yaml", SETS)
    data = build_dataset(cfg.data, cfg.seed)
    idx = np.arange(8)
    x, _ = data.batch("train", idx)  # what the task model sees: (pixels / 255 - mean) / std
    raw = data.train.x[torch.as_tensor(idx)].float() / 255
    assert not torch.allclose(x, raw)
    assert torch.allclose(fit_to_vae(x, None, (data.mean, data.std)), raw, atol=1e-6)
    assert torch.equal(fit_to_vae(x, None, None), x)
    job = VAEJob(
        data.input_shape,
        dataclasses.replace(cfg.vae, vae_steps=1, kl_reduction="mean"),
        idx,
        idx + 8,
        1,
        0,
        False,
        pixel_stats=(data.mean, data.std),
    )
    assert torch.allclose(VAETraining(job, torch.device("cpu"))._batch(x), raw, atol=1e-6)


def test_the_field_changes_the_vae_and_its_picks_but_not_the_task_model():
    runs = {
        flag: run_experiment(load_config("configs/smoke.yaml", [*SETS, f"vae.normalize={flag}"]), log=lambda m: None)
        for flag in ("true", "false")
    }
    a, b = runs["true"][0], runs["false"][0]
    assert (a.accuracy, a.train_accuracy, a.label_counts) == (b.accuracy, b.train_accuracy, b.label_counts)
    assert a.health["disc_loss_tail"] != b.health["disc_loss_tail"]  # the VAE/discriminator saw other inputs
