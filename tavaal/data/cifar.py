"""CIFAR-10 and CIFAR-100 from the "python version" pickles (the files torchvision downloads and extracts).

CIFAR-10:  ``<root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``
CIFAR-100: ``<root>/cifar-100-python/{train, test, meta}`` (``fine_labels``: the 100-class task)

Each batch is a pickled dict with ``data`` uint8 ``[N, 3072]`` (1024 red, 1024 green, 1024 blue values,
row-major) and a label list. We read the pickles ourselves rather than through torchvision, whose md5 check
would reject the tiny files the tests write; torchvision is used only to download when files are missing.
A pickle can run any code while it loads, and a data directory is not ours: ``CifarUnpickler`` builds dicts,
lists, numbers, strings and numpy arrays only and refuses any file that asks for more.
"""

from __future__ import annotations

import builtins
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tavaal.config import DataConfig
from tavaal.data.base import ALData, Split
from tavaal.errors import DataError
from tavaal.registry import DATASETS

CACHE_DIR = Path("~/.cache/tavaal/data").expanduser()
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"

# Normalization as in cubeyoung/TA-VAAL load_dataset.py: CIFAR-10's values are the ones it uses; CIFAR-100's
# are the ones it gives in a comment "# CIFAR-100" (the code itself normalizes CIFAR-100 with CIFAR-10's).
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)


def _numpy_reconstructors() -> dict[tuple[str, str], Any]:
    """The functions numpy's own pickles call, under every module name numpy 1 and 2 have written them with.

    numpy's pickling says where they live (``__reduce__``/``__reduce_ex__``), so no private module is imported.
    """
    reconstruct = np.zeros(1, np.uint8).__reduce__()[0]  # _reconstruct, protocols 0-4
    frombuffer = np.zeros(1, np.uint8).__reduce_ex__(5)[0]  # _frombuffer, protocol 5
    scalar = np.int64(0).__reduce__()[0]  # numpy scalars, e.g. in a label list
    found: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for package in ("numpy.core", "numpy._core"):
        found[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        found[(f"{package}.multiarray", "scalar")] = scalar
        found[(f"{package}.numeric", "_frombuffer")] = frombuffer
    return found


class RefusedPickle(pickle.UnpicklingError):
    """A pickle that asks for something a CIFAR batch never needs (it was stopped before that was loaded)."""


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as pickle protocols 0-2 use it for bytes (always latin1); any other codec is refused."""
    if encoding.replace("-", "").lower() != "latin1" or not isinstance(text, str):
        raise RefusedPickle(f"it asks to encode with {str(encoding)[:50]!r}")
    return text.encode("latin1")


_BUILTINS = (
    "dict",
    "list",
    "tuple",
    "set",
    "frozenset",
    "bytes",
    "bytearray",
    "str",
    "int",
    "float",
    "complex",
    "bool",
)
# everything a CIFAR batch (a dict of a numpy array, lists of numbers and strings) can ask an unpickler to load
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **_numpy_reconstructors(),
    ("_codecs", "encode"): _latin1_encode,
    **{(module, name): getattr(builtins, name) for module in ("builtins", "__builtin__") for name in _BUILTINS},
}


class CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds dicts, lists, numbers, strings and numpy arrays, and nothing else.

    A pickle can name any importable function and have it called while it loads (``os.system`` in a file
    someone put in a data directory), so ``find_class`` answers only the names in ``ALLOWED_GLOBALS`` and
    refuses every other before it is imported.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise RefusedPickle(f"it asks to load {f'{module}.{name}'[:200]!r}") from None  # repr: one line


def _unpickle(path: Path) -> dict[str, Any]:
    """Load one CIFAR pickle; keys as str whether the file was written by Python 2 (str) or 3 (bytes)."""
    try:
        with open(path, "rb") as f:
            d = CifarUnpickler(f, encoding="latin1").load()  # the originals were pickled by Python 2
    except RefusedPickle as e:
        raise DataError(
            f"'{path}' is not a CIFAR batch file ({e}; nothing in it was run); replace it with the files "
            f"from {CIFAR_URL}"
        ) from None
    except Exception as e:  # UnpicklingError, EOFError, ValueError...: a truncated or foreign file
        raise DataError(
            f"cannot read CIFAR file '{path}' ({type(e).__name__}); replace it with a good copy "
            "or delete it to download again"
        ) from None
    if not isinstance(d, dict):
        raise DataError(f"CIFAR file '{path}' does not hold a dict; replace it with a good copy")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}


def _read_batches(paths: list[Path], label_key: str, num_classes: int) -> Split:
    """Concatenate batches: x uint8 ``[N, 3, 32, 32]``, y int64 ``[N]``."""
    xs, ys = [], []
    for path in paths:
        d = _unpickle(path)
        if "data" not in d or label_key not in d:
            raise DataError(f"CIFAR file '{path}' lacks the 'data' or '{label_key}' entry; replace it with a good copy")
        x, y = np.asarray(d["data"], dtype=np.uint8), np.asarray(d[label_key], dtype=np.int64)
        if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or x.shape[0] != y.shape[0]:
            raise DataError(
                f"CIFAR file '{path}' has data of shape {x.shape} for {y.shape[0]} labels, expected "
                f"[N, 3072]; replace it with a good copy"
            )
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise DataError(f"CIFAR file '{path}' has labels outside 0..{num_classes - 1}; replace it")
        xs.append(x.reshape(-1, 3, 32, 32))  # the 3072 values are already channel-major: C, H, W
        ys.append(y)
    return Split(torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)))


def _class_names(path: Path, key: str) -> tuple[str, ...]:
    names = _unpickle(path).get(key, [])
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def _find(cfg: DataConfig, folder: str, required: list[str], title: str, tv_class: str) -> Path:
    """The folder holding ``required``: ``<root>/<folder>`` or ``<root>`` itself; downloads if allowed."""
    root = Path(cfg.data_dir).expanduser() if cfg.data_dir is not None else CACHE_DIR
    for d in (root / folder, root):
        if all((d / name).is_file() for name in required):
            return d
    where = f"'{root / folder}'"
    if not cfg.download:
        if cfg.data_dir is not None and not root.is_dir():
            raise DataError(
                f"data directory '{root}' does not exist; pass --data-dir with the {folder} folder or omit it"
            )
        raise DataError(
            f"{title} files not found in {where} (need {', '.join(required)}); extract the python "
            f"version there, pass --data-dir, or set data.download=true"
        )
    try:
        import torchvision.datasets as tvd

        getattr(tvd, tv_class)(root=str(root), train=True, download=True)
    except Exception as e:  # network, disk, checksum: all end the same way for the user
        msg = (str(e).strip().splitlines() or [""])[0]
        raise DataError(
            f"could not download {title} into '{root}' ({type(e).__name__}: {msg}); extract the "
            f"python version from {CIFAR_URL} into {where}"
        ) from None
    if not all((root / folder / name).is_file() for name in required):
        raise DataError(f"the {title} download left no complete {where}; delete it and retry")
    return root / folder


@DATASETS.register("cifar10")
def cifar10(cfg: DataConfig) -> ALData:
    """CIFAR-10: 50,000 train / 10,000 test RGB 32x32 images; random crop (pad 4) + flip for training."""
    train_files = [f"data_batch_{i}" for i in range(1, 6)]
    d = _find(cfg, "cifar-10-batches-py", train_files + ["test_batch"], "CIFAR-10", "CIFAR10")
    meta = d / "batches.meta"
    return ALData(
        name="cifar10",
        train=_read_batches([d / f for f in train_files], "labels", 10),
        test=_read_batches([d / "test_batch"], "labels", 10),
        num_classes=10,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        crop_pad=4,  # spec / official code: RandomCrop(32, padding=4), RandomHorizontalFlip()
        flip=True,
        class_names=_class_names(meta, "label_names") if meta.is_file() else (),
    )


@DATASETS.register("cifar100")
def cifar100(cfg: DataConfig) -> ALData:
    """CIFAR-100 (fine labels): 50,000 train / 10,000 test RGB 32x32 images, 100 classes."""
    d = _find(cfg, "cifar-100-python", ["train", "test"], "CIFAR-100", "CIFAR100")
    meta = d / "meta"
    return ALData(
        name="cifar100",
        train=_read_batches([d / "train"], "fine_labels", 100),
        test=_read_batches([d / "test"], "fine_labels", 100),
        num_classes=100,
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        crop_pad=4,  # the official code uses the CIFAR-10 train transform for CIFAR-100 too
        flip=True,
        class_names=_class_names(meta, "fine_label_names") if meta.is_file() else (),
    )
