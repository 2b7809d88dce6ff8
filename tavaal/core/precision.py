"""Mixed precision as a config field: bf16 autocast halves conv cost on CPUs with avx512_bf16."""
from __future__ import annotations

import contextlib

import torch


def autocast(device: torch.device | str, precision: str):
    """A context that runs the enclosed forward passes in ``precision`` ("fp32" or "bf16")."""
    if precision == "fp32":
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
