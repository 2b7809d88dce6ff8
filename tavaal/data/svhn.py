"""SVHN (cropped digits): ``<root>/train_32x32.mat`` and ``<root>/test_32x32.mat``, torchvision's layout.

Each .mat holds ``X`` uint8 ``[32, 32, 3, N]`` (height, width, channel, sample) and ``y`` ``[N, 1]`` with
the digit 0 stored as label 10. The ``extra`` split is not used (the paper uses train/test).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tavaal.config import DataConfig
from tavaal.data.base import ALData, Split
from tavaal.errors import DataError
from tavaal.registry import DATASETS

CACHE_DIR = Path("~/.cache/tavaal/data").expanduser()
FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
MEAN, STD = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)  # SVHN train-split pixel statistics
CLASS_NAMES = tuple(str(d) for d in range(10))


def read_svhn_mat(path: Path) -> Split:
    """One .mat file -> x uint8 ``[N, 3, 32, 32]``, y int64 ``[N]`` in 0..9 (label 10 means digit 0)."""
    from scipy.io import loadmat  # scipy only where SVHN is used

    try:
        mat = loadmat(str(path))
    except Exception as e:  # scipy raises ValueError/TypeError/OSError on truncated or foreign files
        raise DataError(
            f"cannot read SVHN file '{path}' ({type(e).__name__}); replace it with a good copy "
            "or delete it to download again"
        ) from None
    if "X" not in mat or "y" not in mat:
        raise DataError(f"SVHN file '{path}' lacks the 'X' or 'y' entry; replace it with a good copy")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).astype(np.int64).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != y.shape[0]:
        raise DataError(
            f"SVHN file '{path}' has X of shape {x.shape} for {y.shape[0]} labels, expected "
            "[32, 32, 3, N]; replace it with a good copy"
        )
    y = np.where(y == 10, 0, y)
    if y.size and (y.min() < 0 or y.max() > 9):
        raise DataError(f"SVHN file '{path}' has labels outside 1..10; replace it with a good copy")
    x = np.ascontiguousarray(x.transpose(3, 2, 0, 1)).astype(np.uint8)  # [H, W, C, N] -> [N, C, H, W]
    return Split(torch.from_numpy(x), torch.from_numpy(y))


def _find(cfg: DataConfig) -> Path:
    """The folder with both .mat files; downloads the missing ones with torchvision if allowed."""
    root = Path(cfg.data_dir).expanduser() if cfg.data_dir is not None else CACHE_DIR
    missing = [split for split, name in FILES.items() if not (root / name).is_file()]
    if not missing:
        return root
    if not cfg.download:
        if cfg.data_dir is not None and not root.is_dir():
            raise DataError(
                f"data directory '{root}' does not exist; pass --data-dir with "
                f"{' and '.join(FILES.values())} or omit it"
            )
        raise DataError(
            f"SVHN file '{root / FILES[missing[0]]}' not found; put {' and '.join(FILES.values())} "
            "there, pass --data-dir, or set data.download=true"
        )
    try:
        from torchvision.datasets import SVHN

        for split in missing:
            SVHN(root=str(root), split=split, download=True)
    except Exception as e:  # network, disk, checksum: all end the same way for the user
        msg = (str(e).strip().splitlines() or [""])[0]
        raise DataError(
            f"could not download SVHN into '{root}' ({type(e).__name__}: {msg}); put "
            f"{' and '.join(FILES.values())} from http://ufldl.stanford.edu/housenumbers/ there"
        ) from None
    return root


@DATASETS.register("svhn")
def svhn(cfg: DataConfig) -> ALData:
    """SVHN: 73,257 train / 26,032 test RGB 32x32 digit images, 10 classes (label = digit)."""
    root = _find(cfg)
    return ALData(
        name="svhn",
        train=read_svhn_mat(root / FILES["train"]),
        test=read_svhn_mat(root / FILES["test"]),
        num_classes=10,
        mean=MEAN,
        std=STD,
        # Random crop but no flip: a mirrored digit is not the same digit. (The official TA-VAAL code
        # trains SVHN on T.ToTensor() alone; the crop follows our spec for 32x32 sets.)
        crop_pad=4,
        flip=False,
        class_names=CLASS_NAMES,
    )
