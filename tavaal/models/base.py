"""What every task model returns, and the factory the rest of the package builds task models with."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from tavaal.registry import MODELS


class TaskOutput(NamedTuple):
    """One forward pass of a task model.

    logits: ``[B, C]`` class scores, or ``[B, C, H, W]`` per pixel for segmentation models.
    embedding: ``[B, D]`` the penultimate representation (core-set distances use it).
    features: the four block outputs fed to the ranker, ``[B, C_i, H_i, W_i]`` or ``[B, C_i]``.
    """

    logits: Tensor
    embedding: Tensor
    features: list[Tensor]


def build_task_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build the registered task model ``name`` for inputs of ``input_shape`` (no batch dim).

    Every task model has ``feature_channels`` (channels of each feature, in order), ``embedding_dim``
    and ``forward(x) -> TaskOutput``; segmentation models also have ``task = "segmentation"``.
    """
    return MODELS.get(name)(tuple(input_shape), int(num_classes))


def model_task(model: nn.Module) -> str:
    """The task a built model solves: "segmentation" (per-pixel logits) or "classification"."""
    return getattr(model, "task", "classification")


def check_image_shape(model: str, input_shape: tuple[int, ...], min_size: int = 1) -> tuple[int, int, int]:
    """Return ``(C, H, W)`` or raise a ValueError naming what ``model`` expects."""
    if len(input_shape) != 3 or min(input_shape[1:]) < min_size:
        raise ValueError(
            f"model '{model}' expects an image input_shape (C, H, W) with H, W >= {min_size}, got {input_shape}"
        )
    c, h, w = (int(s) for s in input_shape)
    return c, h, w
