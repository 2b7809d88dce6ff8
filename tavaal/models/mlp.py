"""An MLP task model for vector inputs ``(D,)`` (the 2-D toy data set)."""

from __future__ import annotations

from torch import Tensor, nn

from tavaal.models.base import TaskOutput
from tavaal.registry import MODELS


class MLP(nn.Module):
    """Four Linear+ReLU layers; features = the four hidden activations ``[B, width]``."""

    embedding_dim: int

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 64) -> None:
        super().__init__()
        if len(input_shape) != 1:
            raise ValueError(f"model 'mlp' expects a vector input_shape (D,), got {input_shape}")
        dims = [int(input_shape[0]), width, width, width, width]
        self.layers = nn.ModuleList(
            [nn.Sequential(nn.Linear(d_in, d_out), nn.ReLU()) for d_in, d_out in zip(dims[:-1], dims[1:])]
        )
        self.linear = nn.Linear(width, num_classes)
        self.feature_channels = (width,) * 4
        self.embedding_dim = width

    def forward(self, x: Tensor) -> TaskOutput:
        features = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return TaskOutput(self.linear(x), x, features)


@MODELS.register("mlp")
def mlp(input_shape: tuple[int, ...], num_classes: int) -> MLP:
    return MLP(input_shape, num_classes)
