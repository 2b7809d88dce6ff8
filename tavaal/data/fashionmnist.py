"""Fashion-MNIST from its IDX files: 60,000 train / 10,000 test grayscale 28x28 images, 10 classes.

Search order: ``cfg.data_dir`` (and its ``FashionMNIST/raw/`` subfolder, torchvision's layout), then
Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist/``), then files a
previous download left in ``~/.cache/tavaal/data``, then torchvision's download when ``cfg.download``.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from tavaal.config import DataConfig
from tavaal.data.base import ALData, Split
from tavaal.errors import DataError
from tavaal.registry import DATASETS

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path("~/.cache/tavaal/data").expanduser()
FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MEAN, STD = (0.2860,), (0.3530,)  # Fashion-MNIST training-set pixel statistics

# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT")
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path, ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (``.gz`` or uncompressed) into an array of the shape its header states.

    Raises DataError if the file is unreadable, its magic number is wrong, it has the wrong number of
    dimensions or its payload is shorter or longer than the header says (a truncated download).
    """
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read IDX file '{path}' ({_first_line(e)}); replace it with a good copy") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"'{path}' is not an IDX file (bad magic number); replace it with a good copy")
    dtype, dims = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    if ndim is not None and dims != ndim:
        raise DataError(f"IDX file '{path}' has {dims} dimensions, expected {ndim}; check the file name")
    header = 4 + 4 * dims
    if len(raw) < header:
        raise DataError(f"IDX file '{path}' is truncated (short header); replace it with a good copy")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=dims, offset=4))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"IDX file '{path}' has {len(raw)} bytes, its header says {expected}; "
            "it is truncated or garbled, replace it with a good copy"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _files_in(directory: Path) -> dict[str, Path] | None:
    """The four IDX paths in ``directory`` (each ``.gz`` or not), or None if any is missing."""
    found = {}
    for key, name in FILES.items():
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


def _candidate_dirs(cfg: DataConfig) -> list[Path]:
    dirs = []
    if cfg.data_dir is not None:
        root = Path(cfg.data_dir).expanduser()
        if not root.is_dir():
            raise DataError(
                f"data directory '{root}' does not exist; pass --data-dir with the Fashion-MNIST "
                f"IDX files ({FILES['train_x']}.gz, ...) or omit it"
            )
        dirs += [root, root / "FashionMNIST" / "raw"]
    return dirs + [DEBIAN_DIR, CACHE_DIR / "FashionMNIST" / "raw"]


def _download(cfg: DataConfig) -> dict[str, Path]:
    """torchvision's download into the data dir (or the cache); any failure becomes one DataError line."""
    root = Path(cfg.data_dir).expanduser() if cfg.data_dir is not None else CACHE_DIR
    hint = (
        f"put {FILES['train_x']}.gz and the other three IDX files in '{root}' or install "
        f"Debian's dataset-fashion-mnist package ({DEBIAN_DIR})"
    )
    if not cfg.download:
        raise DataError(f"Fashion-MNIST files not found and data.download is false; {hint}")
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(root=str(root), train=True, download=True)
    except Exception as e:  # network, disk, checksum: all end the same way for the user
        raise DataError(f"could not download Fashion-MNIST into '{root}' ({_first_line(e)}); {hint}") from None
    files = _files_in(root / "FashionMNIST" / "raw")
    if files is None:
        raise DataError(f"the Fashion-MNIST download left no IDX files in '{root / 'FashionMNIST' / 'raw'}'; {hint}")
    return files


def _split(x_path: Path, y_path: Path) -> Split:
    """x: uint8 ``[N, 1, 28, 28]``, y: int64 ``[N]``."""
    x, y = read_idx(x_path, ndim=3), read_idx(y_path, ndim=1)
    if x.shape[0] != y.shape[0]:
        raise DataError(
            f"'{x_path}' has {x.shape[0]} images but '{y_path}' has {y.shape[0]} labels; "
            "replace them with a matching pair"
        )
    if y.size and (y.min() < 0 or y.max() >= len(CLASS_NAMES)):
        raise DataError(f"'{y_path}' has labels outside 0..9; replace it with a good copy")
    return Split(torch.from_numpy(x.astype(np.uint8)).unsqueeze(1), torch.from_numpy(y.astype(np.int64)))


@DATASETS.register("fashionmnist")
def fashionmnist(cfg: DataConfig) -> ALData:
    """Fashion-MNIST: images uint8 ``[N, 1, 28, 28]``, labels 0..9, no training augmentation.

    The official TA-VAAL code feeds ``T.ToTensor()`` alone (no normalization); we normalize with the
    data set's mean/std like every other image set, an affine change the first BatchNorm absorbs.
    """
    files = next((f for d in _candidate_dirs(cfg) if (f := _files_in(d)) is not None), None)
    if files is None:
        files = _download(cfg)
    return ALData(
        name="fashionmnist",
        train=_split(files["train_x"], files["train_y"]),
        test=_split(files["test_x"], files["test_y"]),
        num_classes=len(CLASS_NAMES),
        mean=MEAN,
        std=STD,
        # cubeyoung/TA-VAAL load_dataset.py, 'fashionmnist': train transform is T.Compose([T.ToTensor()]),
        # i.e. no random crop and no flip (unlike its CIFAR transform), so no augmentation here either.
        crop_pad=0,
        flip=False,
        class_names=CLASS_NAMES,
    )
