"""How a stage's numbers are computed: precision (fp32, bf16 autocast, or auto) and the memory format.

bf16 autocast makes convolutions cheaper on CPUs with avx512_bf16 (some CPUs lack it) and on GPUs with bf16
units; ``auto`` picks it where the device supports it, else fp32. channels_last (NHWC) lets oneDNN
and cuDNN skip the layout reorders around every convolution.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import torch

from tavaal.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "auto")


@functools.cache
def bf16_supported(device_type: str) -> bool:
    """Whether bf16 autocast runs natively: ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` on CPUs,
    ``torch.cuda.is_bf16_supported()`` on GPUs; False elsewhere."""
    if device_type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``"auto"`` -> ``"bf16"`` where ``device`` supports it (``bf16_supported``), else ``"fp32"``; other values
    are returned as they are."""
    if precision == "auto":
        return "bf16" if bf16_supported(torch.device(device).type) else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def autocast(device: torch.device | str, precision: str):
    """A context that runs the enclosed forward passes in ``precision`` ("fp32", "bf16" or "auto")."""
    if resolve_precision(precision, device) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """Move a batch to ``device``; image batches ``[B, C, H, W]`` in channels_last when asked (others as they are)."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def score_batch_size(value: int | None, device: torch.device | str) -> int:
    """``al.score_batch_size``: None -> 128 on CPUs (smaller batches stay in the CPU's caches, so they are faster
    per image there: benchmarks/paper_stage.py), 512 on GPUs."""
    if value is not None:
        return value
    return 512 if torch.device(device).type == "cuda" else 128


def for_device(cfg, device: torch.device | str):
    """``cfg`` (a ``tavaal.config.Config``) with its per-device choices made once, for the whole run and its
    record: ``train.precision`` auto -> bf16 or fp32, ``al.score_batch_size`` null -> a number."""
    train = dataclasses.replace(cfg.train, precision=resolve_precision(cfg.train.precision, device))
    al = dataclasses.replace(cfg.al, score_batch_size=score_batch_size(cfg.al.score_batch_size, device))
    return dataclasses.replace(cfg, train=train, al=al)


def resolve_device(name: str) -> torch.device:
    """ "auto" -> cuda when available, else cpu. A CUDA device this machine does not have is a ConfigError now,
    not a traceback at the first tensor moved to it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(
                f"config field 'device' is '{name}' but torch sees no CUDA GPU on this machine; "
                "use --device cpu (or auto)"
            )
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"config field 'device' is '{name}' but this machine has {count} CUDA GPU(s) "
                f"(cuda:0..cuda:{count - 1}); choose one of them, or --device auto"
            )
    return device
