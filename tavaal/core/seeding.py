"""Seeds derived from (run seed, stage, purpose): each stage's randomness is fixed by the run seed alone,
so a resumed run draws exactly what an uninterrupted one would have."""

from __future__ import annotations

import zlib

import numpy as np
import torch


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed from the run seed and any keys (ints or names), stable across processes."""
    words = [seed] + [k if isinstance(k, int) else zlib.crc32(k.encode()) for k in keys]
    return int(np.random.SeedSequence(words).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1)


def numpy_rng(seed: int, *keys: int | str) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, *keys))


def torch_generator(seed: int, *keys: int | str) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(derive_seed(seed, *keys))
    return g
