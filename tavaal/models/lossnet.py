"""The learning-loss module (Yoo & Kweon 2019), TA-VAAL's ranker: features -> predicted loss r_hat."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LossNet(nn.Module):
    """Per feature: global average pool, Linear(C_i -> hidden) + ReLU; concat; Linear(hidden * n -> 1).

    Pools over each feature's actual spatial size (mean over H, W), so 28x28 inputs work; the public
    code's ``AvgPool2d(32/16/8/4)`` assumes 32x32 inputs. 2-D features ``[B, C_i]`` are used as they are.
    """

    def __init__(self, feature_channels: Sequence[int], hidden: int = 128) -> None:
        super().__init__()
        if len(feature_channels) == 0:
            raise ValueError("LossNet needs at least one feature (feature_channels is empty)")
        self.feature_channels = tuple(int(c) for c in feature_channels)
        self.fcs = nn.ModuleList([nn.Linear(c, hidden) for c in self.feature_channels])
        self.linear = nn.Linear(hidden * len(self.feature_channels), 1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """``features``: tensors ``[B, C_i, H_i, W_i]`` or ``[B, C_i]`` -> predicted loss ``[B]``."""
        if len(features) != len(self.fcs):
            raise ValueError(f"LossNet expects {len(self.fcs)} features, got {len(features)}")
        hidden = []
        for feature, fc in zip(features, self.fcs):
            if feature.dim() == 4:
                feature = feature.mean(dim=(2, 3))
            elif feature.dim() != 2:
                raise ValueError(f"LossNet features must be [B, C, H, W] or [B, C], got shape {tuple(feature.shape)}")
            hidden.append(F.relu(fc(feature)))
        return self.linear(torch.cat(hidden, dim=1)).squeeze(1)
