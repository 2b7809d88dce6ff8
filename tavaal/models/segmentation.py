"""Segmentation task models: per-pixel logits, plus the multi-scale encoder features the ranker pools.

Every model here has ``task = "segmentation"`` and ``forward(x [B, C, H, W]) -> TaskOutput`` with
``logits [B, classes, H, W]`` (at the input's resolution), ``embedding [B, D]`` = global average pool of the
deepest encoder feature (core-set distances), and ``features`` = the four encoder stages, which the ranker
(LossNet) pools exactly as it pools ResNet-18's four blocks for classification.

- ``seg_small`` (CPU runs): a light U-Net. Encoder: four conv3x3-BN-ReLU blocks of widths 16/32/64/128,
  strides 1/2/2/2 (32x32 -> 32, 16, 8, 4); decoder: three [upsample x2, concatenate the skip, conv3x3-BN-ReLU]
  back to full resolution, then a 1x1 conv to classes.
- ``deeplabv3_resnet50`` (GPU protocols): DeepLabv3 (Chen et al. 2017) on a ResNet-50 with output stride 8
  (layers 3 and 4 dilated), torchvision's ResNet and ``DeepLabHead``; logits upsampled bilinearly to the
  input size. VAAL and TA-VAAL report Cityscapes with a dilated residual network (DRN-D-22, Yu et al. 2017),
  which torchvision does not ship; DeepLabv3-ResNet50 is the closest dilated ResNet that it does. It starts
  from random weights (nothing is downloaded); both papers started from ImageNet weights, so expect lower
  absolute mIoU at small budgets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tavaal.models.base import TaskOutput, check_image_shape
from tavaal.models.small_cnn import conv_block
from tavaal.registry import MODELS


class SmallSegNet(nn.Module):
    """A light U-Net for CPU-scale segmentation (inputs with H, W >= 8)."""

    task = "segmentation"
    feature_channels: tuple[int, ...] = (16, 32, 64, 128)
    embedding_dim: int = 128

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        in_channels, _, _ = check_image_shape("seg_small", input_shape, min_size=8)
        w1, w2, w3, w4 = self.feature_channels
        self.encoder = nn.ModuleList(
            [conv_block(in_channels, w1, 1), conv_block(w1, w2, 2), conv_block(w2, w3, 2), conv_block(w3, w4, 2)]
        )
        self.decoder = nn.ModuleList(
            [conv_block(w4 + w3, w3, 1), conv_block(w3 + w2, w2, 1), conv_block(w2 + w1, w1, 1)]
        )
        self.classifier = nn.Conv2d(w1, num_classes, 1)

    def forward(self, x: Tensor) -> TaskOutput:
        features = []
        for block in self.encoder:
            x = block(x)
            features.append(x)
        y = features[-1]
        for block, skip in zip(self.decoder, reversed(features[:-1])):
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = block(torch.cat([y, skip], dim=1))
        embedding = F.adaptive_avg_pool2d(features[-1], 1).flatten(1)
        return TaskOutput(self.classifier(y), embedding, features)


class DeepLabV3ResNet50(nn.Module):
    """DeepLabv3 with a dilated ResNet-50 (output stride 8); features = the outputs of layers 1-4."""

    task = "segmentation"
    feature_channels: tuple[int, ...] = (256, 512, 1024, 2048)
    embedding_dim: int = 2048

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        from torchvision.models import resnet50
        from torchvision.models.segmentation.deeplabv3 import DeepLabHead

        in_channels, _, _ = check_image_shape("deeplabv3_resnet50", input_shape, min_size=32)
        net = resnet50(weights=None, replace_stride_with_dilation=[False, True, True])
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layers = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        self.head = DeepLabHead(2048, num_classes)

    def forward(self, x: Tensor) -> TaskOutput:
        size = x.shape[-2:]
        x = self.stem(x)
        features = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        logits = F.interpolate(self.head(x), size=size, mode="bilinear", align_corners=False)
        embedding = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return TaskOutput(logits, embedding, features)


@MODELS.register("seg_small")
def seg_small(input_shape: tuple[int, ...], num_classes: int) -> SmallSegNet:
    return SmallSegNet(input_shape, num_classes)


@MODELS.register("deeplabv3_resnet50")
def deeplabv3_resnet50(input_shape: tuple[int, ...], num_classes: int) -> DeepLabV3ResNet50:
    return DeepLabV3ResNet50(input_shape, num_classes)
