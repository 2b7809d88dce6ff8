"""The data layer: real Fashion-MNIST, loaders on tiny files in the real on-disk formats, imbalance, subsets."""

from __future__ import annotations

import gzip
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tavaal.config import DataConfig
from tavaal.data import build_dataset, make_imbalanced
from tavaal.data.base import ALData, Split
from tavaal.data.fashionmnist import FILES, read_idx
from tavaal.data.imbalance import minority_size
from tavaal.errors import ConfigError, DataError
from tavaal.registry import DATASETS


def _assert_one_line(err: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    for n in needles:
        assert n in msg, (n, msg)


def _balanced(num_classes: int, per_class: int) -> ALData:
    """Labels ``arange % C``; image i stores i in two pixels so a kept subset can be traced back."""
    n = num_classes * per_class
    idx = np.arange(n)
    x = np.stack([idx // 256, idx % 256], axis=1).astype(np.uint8).reshape(n, 2, 1, 1)
    y = torch.from_numpy((idx % num_classes).astype(np.int64))
    split = Split(torch.from_numpy(x), y)
    return ALData(name="fake", train=split, test=split, num_classes=num_classes)


def _source_index(split: Split) -> np.ndarray:
    x = split.x.numpy().astype(np.int64)
    return x[:, 0, 0, 0] * 256 + x[:, 1, 0, 0]


def test_all_loaders_registered():
    assert {"fashionmnist", "cifar10", "cifar100", "svhn", "toy2d", "synthetic"} <= set(DATASETS.names())


def test_import_loads_neither_ray_nor_mlflow():
    code = "import sys, tavaal.data; print(sorted(m for m in ('ray', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- Fashion-MNIST


def test_fashionmnist_real_debian_files():
    # No skip: CI installs Debian's dataset-fashion-mnist; download=False so a missing file fails here.
    data = build_dataset(DataConfig(name="fashionmnist", download=False), seed=0)
    assert (len(data.train), len(data.test)) == (60_000, 10_000)
    assert data.input_shape == (1, 28, 28) and data.train.x.dtype == torch.uint8
    assert data.num_classes == 10 and len(data.class_names) == 10
    assert torch.bincount(data.train.y).tolist() == [6_000] * 10
    assert torch.bincount(data.test.y).tolist() == [1_000] * 10
    pixels = data.train.x.float().div(255)
    assert pixels.mean().item() == pytest.approx(data.mean[0], abs=1e-3)
    assert pixels.std().item() == pytest.approx(data.std[0], abs=1e-3)
    assert (data.crop_pad, data.flip) == (0, False)  # official code: T.ToTensor() only


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def _write_fmnist(root: Path, n_train: int = 20, n_test: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, 28, 28)),
        "train_y": np.arange(n_train) % 10,
        "test_x": rng.integers(0, 256, (n_test, 28, 28)),
        "test_y": np.arange(n_test)[::-1] % 10,
    }
    root.mkdir(parents=True, exist_ok=True)
    for i, (key, name) in enumerate(FILES.items()):
        _write_idx(root / (name + (".gz" if i % 2 else "")), arrays[key])  # mix .gz and uncompressed
    return arrays


def test_fashionmnist_from_data_dir_torchvision_layout(tmp_path):
    arrays = _write_fmnist(tmp_path / "FashionMNIST" / "raw")
    data = build_dataset(DataConfig(name="fashionmnist", data_dir=str(tmp_path), download=False), seed=0)
    assert data.train.x.shape == (20, 1, 28, 28) and data.test.x.shape == (10, 1, 28, 28)
    assert np.array_equal(data.train.x[:, 0].numpy(), arrays["train_x"])
    assert data.test.y.tolist() == arrays["test_y"].tolist() and data.test.y.dtype == torch.int64


def test_fashionmnist_missing_data_dir_is_one_line_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError) as err:
        build_dataset(DataConfig(name="fashionmnist", data_dir=str(missing)), seed=0)
    _assert_one_line(err, str(missing), "--data-dir")


def test_fashionmnist_nowhere_without_download_is_one_line_error(tmp_path, monkeypatch):
    from tavaal.data import fashionmnist

    monkeypatch.setattr(fashionmnist, "DEBIAN_DIR", tmp_path / "debian")
    monkeypatch.setattr(fashionmnist, "CACHE_DIR", tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as err:
        build_dataset(DataConfig(name="fashionmnist", data_dir=str(tmp_path / "empty"), download=False), seed=0)
    _assert_one_line(err, str(tmp_path / "empty"), "train-images-idx3-ubyte.gz", "dataset-fashion-mnist")


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_truncated_idx_raises_data_error(tmp_path, suffix):
    path = tmp_path / f"train-images-idx3-ubyte{suffix}"
    _write_idx(path, np.zeros((5, 28, 28)))
    assert read_idx(path).shape == (5, 28, 28)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError) as err:
        read_idx(path)
    _assert_one_line(err, str(path))


def test_idx_bad_magic_and_truncated_loader(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x1f\x00\x08\x03" + b"\x00" * 40)
    with pytest.raises(DataError, match="magic"):
        read_idx(bad)
    _write_fmnist(tmp_path / "d")
    img = tmp_path / "d" / FILES["train_x"]
    img.write_bytes(img.read_bytes()[:100])
    with pytest.raises(DataError) as err:
        build_dataset(DataConfig(name="fashionmnist", data_dir=str(tmp_path / "d"), download=False), seed=0)
    _assert_one_line(err, str(img))


# ---------------------------------------------------------------- CIFAR, SVHN on tiny files in the real format


def _cifar_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 3072)).astype(np.uint8)


def test_cifar10_python_pickles_roundtrip(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rows, labels = [], []
    for i in range(1, 6):  # Python 2 pickles read as bytes keys: write bytes keys to cover that case
        r, lab = _cifar_rows(rng, 4), [(4 * i + j) % 10 for j in range(4)]
        rows.append(r)
        labels += lab
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps({b"data": r, b"labels": lab}, protocol=2))
    test_rows = _cifar_rows(rng, 3)
    (folder / "test_batch").write_bytes(pickle.dumps({"data": test_rows, "labels": [9, 0, 5]}))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))

    data = build_dataset(DataConfig(name="cifar10", data_dir=str(tmp_path), download=False), seed=0)
    assert data.train.x.shape == (20, 3, 32, 32) and data.test.x.shape == (3, 3, 32, 32)
    assert data.train.y.tolist() == labels and data.test.y.tolist() == [9, 0, 5]
    # row layout: 1024 red, 1024 green, 1024 blue values, each 32x32 row-major
    assert data.train.x[5, 1, 2, 3].item() == rows[1][1, 1024 + 2 * 32 + 3]
    assert np.array_equal(data.test.x.reshape(3, -1).numpy(), test_rows)
    assert data.class_names[9] == "truck" and (data.crop_pad, data.flip) == (4, True)
    direct = build_dataset(DataConfig(name="cifar10", data_dir=str(folder), download=False), seed=0)
    assert torch.equal(direct.train.x, data.train.x)  # data_dir may also point at the folder itself


def test_cifar100_fine_labels_roundtrip(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train_rows, test_rows = _cifar_rows(rng, 6), _cifar_rows(rng, 2)
    fine, coarse = [99, 0, 50, 7, 3, 42], [19, 0, 10, 1, 2, 5]
    (folder / "train").write_bytes(pickle.dumps({"data": train_rows, "fine_labels": fine, "coarse_labels": coarse}))
    (folder / "test").write_bytes(pickle.dumps({"data": test_rows, "fine_labels": [1, 98], "coarse_labels": [0, 1]}))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}))

    data = build_dataset(DataConfig(name="cifar100", data_dir=str(tmp_path), download=False), seed=0)
    assert data.num_classes == 100 and data.train.y.tolist() == fine and data.test.y.tolist() == [1, 98]
    assert np.array_equal(data.train.x.reshape(6, -1).numpy(), train_rows)
    assert data.class_names[42] == "c42"


def test_cifar_missing_without_download_is_one_line_error(tmp_path):
    with pytest.raises(DataError) as err:
        build_dataset(DataConfig(name="cifar10", data_dir=str(tmp_path), download=False), seed=0)
    _assert_one_line(err, str(tmp_path / "cifar-10-batches-py"), "--data-dir")
    (tmp_path / "cifar-100-python").mkdir()
    (tmp_path / "cifar-100-python" / "train").write_bytes(b"\x80\x02}q\x00(X")  # truncated pickle
    (tmp_path / "cifar-100-python" / "test").write_bytes(b"")
    with pytest.raises(DataError) as err:
        build_dataset(DataConfig(name="cifar100", data_dir=str(tmp_path), download=False), seed=0)
    _assert_one_line(err, str(tmp_path / "cifar-100-python" / "train"))


def test_svhn_mat_roundtrip_and_label_10_is_zero(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(3)
    x_train = rng.integers(0, 256, (32, 32, 3, 5)).astype(np.uint8)
    y_train = np.array([[10], [1], [9], [10], [5]], dtype=np.uint8)
    savemat(tmp_path / "train_32x32.mat", {"X": x_train, "y": y_train})
    savemat(tmp_path / "test_32x32.mat", {"X": x_train[..., :2], "y": y_train[:2]})

    data = build_dataset(DataConfig(name="svhn", data_dir=str(tmp_path), download=False), seed=0)
    assert data.train.x.shape == (5, 3, 32, 32) and data.test.x.shape == (2, 3, 32, 32)
    assert data.train.y.tolist() == [0, 1, 9, 0, 5]
    assert np.array_equal(data.train.x.numpy(), x_train.transpose(3, 2, 0, 1))  # [H,W,C,N] -> [N,C,H,W]
    assert data.train.x[4, 2, 7, 11].item() == x_train[7, 11, 2, 4]
    assert (data.crop_pad, data.flip) == (4, False)
    (tmp_path / "test_32x32.mat").unlink()
    with pytest.raises(DataError) as err:
        build_dataset(DataConfig(name="svhn", data_dir=str(tmp_path), download=False), seed=0)
    _assert_one_line(err, "test_32x32.mat")


# ---------------------------------------------------------------- imbalance, subsets


def test_imbalance_ratio_10_exact_counts_and_seeded_selection():
    data = _balanced(num_classes=10, per_class=100)
    a = make_imbalanced(data, ratio=10, minority="even", seed=0)
    assert torch.bincount(a.train.y).tolist() == [10, 100] * 5
    assert len(a.test) == 1000  # test split unchanged
    src = _source_index(a.train)
    assert np.all(np.diff(src) > 0)  # original order kept
    assert np.array_equal(a.train.y.numpy(), src % 10)  # images still match their labels
    b = make_imbalanced(data, ratio=10, minority="even", seed=0)
    c = make_imbalanced(data, ratio=10, minority="even", seed=1)
    assert torch.equal(a.train.x, b.train.x) and not torch.equal(a.train.x, c.train.x)
    assert not np.array_equal(src[a.train.y.numpy() == 0], np.arange(0, 100, 10))  # not simply the first 10
    odd = make_imbalanced(data, ratio=4, minority="0,3", seed=0)
    assert torch.bincount(odd.train.y).tolist() == [25, 100, 100, 25, 100, 100, 100, 100, 100, 100]


def test_imbalance_paper_numbers_and_bad_class_ids():
    assert minority_size(5_000, 100) == 50 and minority_size(5_000, 10) == 500 and minority_size(3, 100) == 1
    data = _balanced(num_classes=10, per_class=5_000)
    cut = make_imbalanced(data, ratio=100, minority="even", seed=0)
    assert torch.bincount(cut.train.y).tolist() == [50, 5_000] * 5
    with pytest.raises(ConfigError, match="minority_classes"):
        make_imbalanced(_balanced(4, 10), ratio=10, minority="1,7", seed=0)


def test_build_dataset_subsets_then_imbalance(monkeypatch):
    monkeypatch.setitem(DATASETS._items, "fake10", lambda cfg: _balanced(10, 100))
    sub = build_dataset(DataConfig(name="fake10", num_train=300, num_test=50), seed=0)
    assert (len(sub.train), len(sub.test)) == (300, 50)
    src = _source_index(sub.train)
    assert np.all(np.diff(src) > 0) and np.array_equal(sub.train.y.numpy(), src % 10)
    again = build_dataset(DataConfig(name="fake10", num_train=300, num_test=50), seed=0)
    other = build_dataset(DataConfig(name="fake10", num_train=300, num_test=50), seed=1)
    assert torch.equal(sub.train.x, again.train.x) and not torch.equal(sub.train.x, other.train.x)
    # num_test has its own stream: changing it leaves the train subset alone
    assert torch.equal(build_dataset(DataConfig(name="fake10", num_train=300), seed=0).train.x, sub.train.x)
    assert len(build_dataset(DataConfig(name="fake10", num_train=5_000), seed=0).train) == 1000
    imb = build_dataset(DataConfig(name="fake10", imbalance_ratio=10, minority_classes="odd"), seed=0)
    assert torch.bincount(imb.train.y).tolist() == [100, 10] * 5 and len(imb.test) == 1000
    both = build_dataset(DataConfig(name="fake10", num_train=500, imbalance_ratio=5), seed=0)
    counts = torch.bincount(both.train.y, minlength=10)
    assert counts[1::2].max().item() / counts[0::2].max().item() == pytest.approx(5, rel=0.1)


# ---------------------------------------------------------------- batches, toy sets


def test_batch_normalized_and_augmentation():
    data = build_dataset(DataConfig(name="synthetic"), seed=0)
    idx = np.arange(64)
    x1, y1 = data.batch("train", idx)
    x2, _ = data.batch("train", idx)
    assert torch.equal(x1, x2) and x1.dtype == torch.float32 and torch.equal(y1, data.train.y[:64])
    expected = (data.train.x[:64].float() / 255 - data.mean[0]) / data.std[0]
    assert torch.allclose(x1, expected, atol=1e-6)
    full, _ = data.batch("train", np.arange(len(data.train)))
    assert abs(full.mean().item()) < 0.05 and full.std().item() == pytest.approx(1.0, abs=0.05)
    xa, ya = data.batch("train", idx, augment=True, generator=torch.Generator().manual_seed(0))
    xb, _ = data.batch("train", idx, augment=True, generator=torch.Generator().manual_seed(0))
    assert xa.shape == x1.shape and torch.equal(ya, y1) and torch.equal(xa, xb)
    assert (xa != x1).any(dim=(1, 2, 3)).float().mean().item() > 0.5  # most samples shifted


def test_synthetic_shapes_balance_and_pattern():
    data = build_dataset(DataConfig(name="synthetic"), seed=0)
    assert data.train.x.shape == (512, 1, 16, 16) and data.test.x.shape == (256, 1, 16, 16)
    assert data.train.x.dtype == torch.uint8 and (data.crop_pad, data.flip) == (2, False)
    assert torch.bincount(data.train.y).tolist() == [128] * 4 and torch.bincount(data.test.y).tolist() == [64] * 4
    assert torch.equal(build_dataset(DataConfig(name="synthetic"), seed=5).train.x, data.train.x)
    small = build_dataset(DataConfig(name="synthetic", num_train=40, num_test=8), seed=0)
    assert (len(small.train), len(small.test)) == (40, 8)
    x = data.train.x[:, 0].float()
    quadrants = torch.stack([x[:, :8, :8], x[:, :8, 8:], x[:, 8:, :8], x[:, 8:, 8:]], 1).mean(dim=(2, 3))
    assert torch.equal(quadrants.argmax(1), data.train.y)  # the brightest quadrant names the class


def test_toy2d_shapes_and_ratios():
    data = build_dataset(DataConfig(name="toy2d"), seed=0)
    assert not data.is_image and data.train.x.shape == (2000, 2) and data.train.x.dtype == torch.float32
    assert torch.bincount(data.train.y).tolist() == [1818, 182]  # 10:1 pool
    assert torch.bincount(data.test.y).tolist() == [500, 500]  # balanced test
    assert data.mean == () and data.crop_pad == 0
    x, _ = data.batch("train", [3, 1], augment=True)
    assert torch.equal(x, data.train.x[[3, 1]])  # vectors: no normalization, no augmentation
    small = build_dataset(DataConfig(name="toy2d", num_train=220, num_test=100), seed=3)
    assert torch.bincount(small.train.y).tolist() == [200, 20] and torch.bincount(small.test.y).tolist() == [50, 50]
    assert torch.equal(build_dataset(DataConfig(name="toy2d"), seed=1).train.x, data.train.x)
    # the two moons are separable by the mean of each class (means differ by far more than the noise)
    mu = torch.stack([data.train.x[data.train.y == c].mean(0) for c in (0, 1)])
    assert (mu[0] - mu[1]).norm().item() > 0.5


# ---------------------------------------------------------------- synthetic_large: a lazily rendered pool


def test_synthetic_large_is_lazy_deterministic_and_learnable():
    from tavaal.data.synthetic import LazyImages

    data = build_dataset(DataConfig(name="synthetic_large"), seed=0)
    assert isinstance(data.train.x, LazyImages) and len(data.train) == 1_000_000
    assert data.is_image and data.input_shape == (1, 16, 16) and data.train.x.shape == (1_000_000, 1, 16, 16)
    assert len(data.test) == 256 and isinstance(data.test.x, torch.Tensor)
    assert torch.bincount(data.train.y).tolist() == [250_000] * 4  # balanced, shuffled as synthetic's
    assert len(pickle.dumps(data)) < 20 * 2**20  # labels only: the 244 MiB of pixels are not in it
    idx = torch.tensor([999_999, 0, 123_456, 0, 77])
    x = data.train.x[idx]
    assert x.shape == (5, 1, 16, 16) and x.dtype == torch.uint8
    assert torch.equal(x[1], x[3]) and not torch.equal(x[0], x[1])
    assert torch.equal(x[2], data.train.x[123_456])  # alone or in a batch: the same pixels
    assert torch.equal(x[0], data.train.x[torch.tensor([-1])][0])  # negative indices as for tensors
    again = pickle.loads(pickle.dumps(build_dataset(DataConfig(name="synthetic_large"), seed=3)))
    assert torch.equal(again.train.x[idx], x) and torch.equal(again.train.y, data.train.y)  # fixed seed
    sample = data.train.x[torch.arange(0, 1_000_000, 250)][:, 0].float()  # 4,000 images
    quadrants = torch.stack([sample[:, :8, :8], sample[:, :8, 8:], sample[:, 8:, :8], sample[:, 8:, 8:]], 1)
    assert torch.equal(quadrants.mean(dim=(2, 3)).argmax(1), data.train.y[::250])  # same pattern as synthetic
    xb, yb = data.batch("train", np.arange(0, 1_000_000, 250))  # ALData.batch unchanged; synthetic's mean/std
    assert abs(xb.mean().item()) < 0.05 and xb.std().item() == pytest.approx(1.0, abs=0.05)
    assert torch.equal(yb, data.train.y[::250])
    with pytest.raises(IndexError, match="out of bounds"):
        data.train.x[torch.tensor([1_000_000])]
    with pytest.raises(TypeError, match="integer indices"):
        data.train.x[np.array([0.5])]


def test_subsampling_a_lazy_pool_stays_lazy():
    from tavaal.data import subsample
    from tavaal.data.synthetic import LazyImages

    full = build_dataset(DataConfig(name="synthetic_large", num_train=5000, num_test=16), seed=0)
    assert (len(full.train), len(full.test)) == (5000, 16)
    part = subsample(full.train, 300, np.random.default_rng(1))
    assert isinstance(part.x, LazyImages) and len(part) == len(part.x) == 300 and part.x.shape[0] == 300
    kept = np.sort(np.random.default_rng(1).choice(5000, size=300, replace=False))  # what subsample drew
    assert torch.equal(part.y, full.train.y[kept])
    assert torch.equal(part.x[torch.arange(300)], full.train.x[torch.from_numpy(kept)])
    deeper = part.subset(torch.tensor([299, 0]))  # a view of a view
    assert torch.equal(deeper.x[torch.arange(2)], full.train.x[torch.from_numpy(kept[[299, 0]])])
