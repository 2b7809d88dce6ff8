"""How much memory a device has, and a one-line refusal when a run's smallest need exceeds it.

The checks use lower bounds only (the bytes of one batch of inputs, or of a split held as uint8), never a model's
activations, which depend on the model: a run refused here could not have run, and a run that passes may still
need more. That keeps the refusal free of false alarms while catching the settings that cannot fit at all (an
image side of 65,536 pixels, say), which would otherwise die with a MemoryError after minutes of work.
"""

from __future__ import annotations

import os

import torch

from tavaal.errors import ConfigError

GIB = 1 << 30


def total_memory(device: torch.device) -> int:
    """Bytes of memory on ``device``: the GPU's own memory for CUDA, the machine's physical memory otherwise."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not POSIX: no bound rather than a wrong one
        return 1 << 62


def check_fits(need: int, device: torch.device, what: str, fix: str) -> None:
    """ConfigError when ``need`` bytes (a lower bound for ``what``) exceed the memory of ``device``."""
    have = total_memory(device)
    if need > have:
        raise ConfigError(f"{what} needs at least {need / GIB:,.1f} GiB but {device} has {have / GIB:,.1f} GiB; {fix}")


def batch_bytes(batch: int, sample_shape: tuple[int, ...], bytes_per_value: int = 4) -> int:
    """Bytes of one batch of ``sample_shape`` samples as float32 (the models' input)."""
    n = batch
    for d in sample_shape:
        n *= int(d)
    return n * bytes_per_value
