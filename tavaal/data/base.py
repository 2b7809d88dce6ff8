"""The in-memory data set every strategy sees: absolute indices in, normalized tensors out.

Images are kept as uint8 tensors ``[N, C, H, W]`` and normalized per batch; training augmentation
(random crop with zero padding, horizontal flip) is applied per batch with an explicit generator so
that a seed fixes it. Scoring, VAE/discriminator training and evaluation call ``batch(augment=False)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

IGNORE_INDEX = 255  # segmentation masks: pixels that count in no loss or metric (Cityscapes' void, crop padding)


class LazySource(Protocol):
    """What ``Split.x`` may be instead of a tensor: images rendered or decoded per batch
    (``synthetic.LazyImages``, ``encoded.EncodedImages``)."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def dim(self) -> int: ...

    def __len__(self) -> int: ...

    def __getitem__(self, idx: Any) -> torch.Tensor: ...

    def subset(self, idx: Any) -> LazySource: ...


@dataclass(frozen=True)
class Split:
    """One split: ``x`` uint8 ``[N, C, H, W]`` (images) or float32 ``[N, D]`` (vectors); ``y`` int64 ``[N]``, or
    for segmentation uint8 masks ``[N, H, W]`` (class per pixel, ``IGNORE_INDEX`` = ignore).

    ``x`` may also be a lazy image source (``synthetic.LazyImages``: ``shape``, ``dim()``, ``x[idx]`` renders
    a uint8 batch, ``x.subset(idx)`` a lazy view) for pools too big to hold in memory. ``y`` is -1 where the
    label is not known yet (own data, manual oracle). ``ids``: stable row ids of own data (None: the position).
    """

    x: torch.Tensor | LazySource
    y: torch.Tensor
    ids: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx: torch.Tensor) -> Split:
        """Rows ``idx`` (LongTensor) of this split; a lazy ``x`` stays lazy instead of being rendered."""
        x = self.x.subset(idx) if hasattr(self.x, "subset") else self.x[idx]
        return Split(x, self.y[idx], None if self.ids is None else self.ids[np.asarray(idx)])


@dataclass(frozen=True)
class ALData:
    """A data set for active learning: the train split is the pool, the test split is held out."""

    name: str
    train: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...] = ()  # per-channel normalization of images scaled to [0, 1]
    std: tuple[float, ...] = ()
    crop_pad: int = 0  # training augmentation: random crop of the original size after zero padding
    flip: bool = False  # training augmentation: random horizontal flip
    class_names: tuple[str, ...] = ()
    task: str = "classification"  # or "segmentation": y holds masks, logits are [B, C, H, W]

    @property
    def is_segmentation(self) -> bool:
        return self.task == "segmentation"

    @property
    def is_image(self) -> bool:
        return self.train.x.dim() == 4

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @property
    def train_targets(self) -> np.ndarray:
        return self.train.y.numpy()

    @property
    def known_rows(self) -> np.ndarray:
        """bool ``[N]``: pool rows whose label is known (a segmentation mask is always known)."""
        if self.is_segmentation:
            return np.ones(len(self.train), dtype=bool)
        return self.train_targets >= 0

    def split(self, name: str) -> Split:
        if name not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {name!r}")
        return self.train if name == "train" else self.test

    def batch(
        self,
        split: str,
        idx: torch.Tensor | np.ndarray,
        augment: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(x float32 [B, ...], y int64 [B] or [B, H, W])`` for absolute indices ``idx`` of ``split``."""
        s = self.split(split)
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        x, y = s.x[idx], s.y[idx].long()
        if not self.is_image:
            return x.float(), y
        x = x.float().div_(255.0)
        if augment:
            x, masks = augment_batch(x, self.crop_pad, self.flip, generator, y if self.is_segmentation else None)
            y = y if masks is None else masks
        if self.mean:
            mean = torch.tensor(self.mean, dtype=x.dtype).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=x.dtype).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x, y


def augment_batch(
    x: torch.Tensor, crop_pad: int, flip: bool, generator: torch.Generator | None, masks: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random crop (zero padding ``crop_pad``, as torchvision's RandomCrop) and horizontal flip, per sample.

    x: float ``[B, C, H, W]`` in [0, 1] (before normalization, so zero padding is black as in torchvision).
    masks: segmentation targets ``[B, H, W]`` or None; they get the same crop (padding = ``IGNORE_INDEX``) and
    flip as their images. Returns ``(x, masks)``; the random draws do not depend on ``masks``.
    """
    b, _, h, w = x.shape
    if crop_pad > 0:
        padded = torch.nn.functional.pad(x, (crop_pad,) * 4)
        dy = torch.randint(0, 2 * crop_pad + 1, (b,), generator=generator)
        dx = torch.randint(0, 2 * crop_pad + 1, (b,), generator=generator)
        rows = (dy.view(b, 1) + torch.arange(h).view(1, h)).view(b, 1, h, 1)
        cols = (dx.view(b, 1) + torch.arange(w).view(1, w)).view(b, 1, 1, w)
        bi = torch.arange(b).view(b, 1, 1, 1)
        ci = torch.arange(x.shape[1]).view(1, -1, 1, 1)
        x = padded[bi, ci, rows, cols]
        if masks is not None:
            padded_m = torch.nn.functional.pad(masks, (crop_pad,) * 4, value=IGNORE_INDEX)
            masks = padded_m[bi[:, 0], rows[:, 0], cols[:, 0]]
    if flip:
        mask = torch.rand(b, generator=generator) < 0.5
        x = torch.where(mask.view(b, 1, 1, 1), x.flip(3), x)
        if masks is not None:
            masks = torch.where(mask.view(b, 1, 1), masks.flip(2), masks)
    return x, masks
