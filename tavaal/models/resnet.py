"""ResNet-18, CIFAR variant (He et al. 2016; as used by LL4AL and TA-VAAL).

3x3 stride-1 stem, no max-pool, BasicBlock stages [2, 2, 2, 2] of widths 64/128/256/512 with strides
1/2/2/2, adaptive global average pooling (so 28x28 Fashion-MNIST and 32x32 CIFAR both work). The stem
takes the input's channel count (1 for Fashion-MNIST). PyTorch's default init, as in the public code.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from tavaal.models.base import TaskOutput, check_image_shape
from tavaal.registry import MODELS


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """``forward(x [B, C, H, W]) -> TaskOutput`` with features = the four stage outputs."""

    feature_channels: tuple[int, ...] = (64, 128, 256, 512)
    embedding_dim: int = 512

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        in_channels, _, _ = check_image_shape("resnet18", input_shape)
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, in_planes = [], 64
        for planes, stride in zip(self.feature_channels, (1, 2, 2, 2)):
            layers.append(nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(self.embedding_dim, num_classes)

    def forward(self, x: Tensor) -> TaskOutput:
        out = F.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(out)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        embedding = F.adaptive_avg_pool2d(f4, 1).flatten(1)
        return TaskOutput(self.linear(embedding), embedding, [f1, f2, f3, f4])


@MODELS.register("resnet18")
def resnet18(input_shape: tuple[int, ...], num_classes: int) -> ResNet18:
    return ResNet18(input_shape, num_classes)
