"""Cityscapes and Caltech-101 on tiny trees in the real on-disk layouts; the synthetic ``shapes_seg`` set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tavaal.data  # noqa: F401 (registration)
from tavaal.config import DataConfig
from tavaal.data import build_dataset
from tavaal.data.shapes import MAX_PIXELS
from tavaal.errors import ConfigError, DataError
from tavaal.registry import DATASETS


def _load(name: str, **fields) -> tavaal.data.ALData:
    return DATASETS.get(name)(DataConfig(name=name, download=False, **fields))


def _assert_one_line(err: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(err.value)
    assert msg and "\n" not in msg and msg.strip() == msg
    for n in needles:
        assert n in msg, (n, msg)


# ---------------------------------------------------------------- Cityscapes

# labelIds of a 64x32 mask: 2 rows x 4 columns of 16x16 blocks (block values survive a nearest 2x downscale)
_IDS = np.array([[7, 26, 33, 0], [1, 250, 7, 26]], dtype=np.uint8)
_TRAIN_ID = {7: 0, 26: 13, 33: 18, 24: 11, 0: 255, 1: 255, 250: 255}  # cityscapesScripts labels.py


def _write_cityscapes(root: Path) -> dict[str, Path]:
    """aachen + bochum in train, frankfurt in val; each image one colour; bochum's mask all person (24)."""
    paths = {}
    for split, city, colour, ids in (
        ("train", "bochum", (10, 200, 10), np.full((2, 4), 24, np.uint8)),
        ("train", "aachen", (200, 10, 10), _IDS),
        ("val", "frankfurt", (10, 10, 200), _IDS[::-1]),
    ):
        stem = f"{city}_000000_000019"
        for folder, suffix, img in (
            ("leftImg8bit", "leftImg8bit", Image.new("RGB", (64, 32), colour)),
            ("gtFine", "gtFine_labelIds", Image.fromarray(np.kron(ids, np.ones((16, 16), np.uint8)), "L")),
        ):
            path = root / folder / split / city / f"{stem}_{suffix}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            img.save(path)
            paths[f"{city}/{folder}"] = path
    (root / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_color.png").write_bytes(b"ignored")
    return paths


def test_cityscapes_layout_sizes_and_label_mapping(tmp_path):
    _write_cityscapes(tmp_path)
    data = _load("cityscapes", data_dir=str(tmp_path), image_size=16)
    assert data.train.x.shape == (2, 3, 16, 32) and data.train.y.shape == (2, 16, 32)
    assert data.test.x.shape == (1, 3, 16, 32) and data.test.y.shape == (1, 16, 32)  # test split = val
    assert {t.dtype for t in (data.train.x, data.train.y, data.test.x, data.test.y)} == {torch.uint8}
    assert data.num_classes == 19 and len(data.class_names) == 19 and data.task == "segmentation"
    assert (data.class_names[0], data.class_names[13], data.class_names[18]) == ("road", "car", "bicycle")
    assert data.mean == (0.485, 0.456, 0.406) and data.std == (0.229, 0.224, 0.225) and data.flip
    # sorted order: aachen (red) then bochum (green); each mask stays with its own image
    assert data.train.x[0, :, 5, 7].tolist() == [200, 10, 10] and data.train.x[1, :, 0, 0].tolist() == [10, 200, 10]
    expected = np.vectorize(_TRAIN_ID.get)(np.kron(_IDS, np.ones((8, 8), np.int64)))
    assert np.array_equal(data.train.y[0].numpy(), expected)
    assert (data.train.y[1] == 11).all()
    assert np.array_equal(data.test.y[0].numpy(), expected[::-1])
    assert set(np.unique(data.train.y.numpy()).tolist()) == {0, 11, 13, 18, 255}


def test_cityscapes_full_lookup_table():
    from tavaal.data.cityscapes import LABEL_TO_TRAIN

    official = {
        7: 0,
        8: 1,
        11: 2,
        12: 3,
        13: 4,
        17: 5,
        19: 6,
        20: 7,
        21: 8,
        22: 9,
        23: 10,
        24: 11,
        25: 12,
        26: 13,
        27: 14,
        28: 15,
        31: 16,
        32: 17,
        33: 18,
    }
    assert LABEL_TO_TRAIN.dtype == np.uint8 and LABEL_TO_TRAIN.shape == (256,)
    assert {i: int(t) for i, t in enumerate(LABEL_TO_TRAIN) if t != 255} == official  # all others (-1 = 255) ignored


def test_cityscapes_missing_dir_mask_and_corrupt_png_are_one_line_errors(tmp_path):
    with pytest.raises(DataError) as err:
        _load("cityscapes", image_size=16)
    _assert_one_line(err, "data.data_dir", "leftImg8bit/", "gtFine/", "cityscapes-dataset.com")
    with pytest.raises(DataError) as err:
        _load("cityscapes", data_dir=str(tmp_path / "nowhere"))
    _assert_one_line(err, str(tmp_path / "nowhere"))

    paths = _write_cityscapes(tmp_path)
    mask = paths["bochum/gtFine"]
    mask.rename(mask.with_suffix(".bak"))
    with pytest.raises(DataError) as err:
        _load("cityscapes", data_dir=str(tmp_path), image_size=16)
    _assert_one_line(err, str(paths["bochum/leftImg8bit"]), str(mask), "gtFine")
    mask.with_suffix(".bak").rename(mask)
    paths["frankfurt/leftImg8bit"].unlink()  # a mask without its image (and then an empty val split)
    with pytest.raises(DataError) as err:
        _load("cityscapes", data_dir=str(tmp_path), image_size=16)
    _assert_one_line(err, str(paths["frankfurt/gtFine"]), "leftImg8bit")

    _write_cityscapes(tmp_path)
    png = paths["aachen/leftImg8bit"]
    good = png.read_bytes()
    for bad in (b"not a png at all", good[: len(good) // 2]):  # foreign bytes; a truncated file
        png.write_bytes(bad)
        with pytest.raises(DataError) as err:
            _load("cityscapes", data_dir=str(tmp_path), image_size=16)
        _assert_one_line(err, str(png))


# ---------------------------------------------------------------- Caltech-101

_CATEGORIES = {"accordion": 5, "Faces_easy": 3, "ant": 2}  # sorted: Faces_easy, accordion, ant


def _write_caltech(top: Path) -> Path:
    """``top/caltech101/101_ObjectCategories``: image i of sorted class k has colour (30 + 50k, 30 + 40i, 128)."""
    folder = top / "caltech101" / "101_ObjectCategories"
    for k, (name, n) in enumerate(sorted(_CATEGORIES.items())):
        (folder / name).mkdir(parents=True)
        for i in range(n):
            img = Image.new("RGB", (20 + 3 * i, 12 + k), (30 + 50 * k, 30 + 40 * i, 128))
            if name == "ant" and i == 1:
                img = Image.new("L", (17, 23), 90)  # grayscale, as some real images are
            img.save(folder / name / f"image_{i + 1:04d}.jpg", quality=95)
    (folder / "BACKGROUND_Google").mkdir()
    for i in range(2):
        Image.new("RGB", (16, 16), (250, 250, 250)).save(folder / "BACKGROUND_Google" / f"image_{i + 1:04d}.jpg")
    return folder


def test_caltech101_classes_split_and_layouts(tmp_path):
    folder = _write_caltech(tmp_path)
    data = _load("caltech101", data_dir=str(tmp_path), image_size=8)
    assert data.num_classes == 3 and data.class_names == ("Faces_easy", "accordion", "ant")
    assert data.task == "classification" and (data.crop_pad, data.flip) == (1, True)
    assert data.train.x.shape == (7, 3, 8, 8) and data.test.x.shape == (3, 3, 8, 8)
    assert data.train.x.dtype == torch.uint8 and data.train.y.dtype == torch.int64
    assert torch.bincount(data.test.y, minlength=3).tolist() == [1, 1, 1]  # 0.2 of 3, 5, 2: at least one each
    assert torch.bincount(data.train.y, minlength=3).tolist() == [2, 4, 1]  # natural imbalance kept
    x, y = torch.cat([data.train.x, data.test.x]), torch.cat([data.train.y, data.test.y])
    gray = (x[:, 0] == x[:, 1]).all(dim=(1, 2)) & (x[:, 1] == x[:, 2]).all(dim=(1, 2))  # RGB from mode "L"
    assert gray.sum().item() == 1 and y[gray].item() == 2 and (x[gray] - 90).abs().max().item() <= 2
    red = x[:, 0].float().mean(dim=(1, 2))  # each colour image carries its class in its red value
    assert torch.equal(((red[~gray] - 30) / 50).round().long(), y[~gray])
    assert (x < 240).all()  # no BACKGROUND_Google image (250, 250, 250) was loaded
    again = _load("caltech101", data_dir=str(folder.parent), image_size=8)  # data_dir holding 101_ObjectCategories
    assert torch.equal(again.train.x, data.train.x) and torch.equal(again.test.y, data.test.y)
    cfg = DataConfig(name="caltech101", data_dir=str(tmp_path), image_size=8, download=False)
    seeded = [build_dataset(cfg, seed=s) for s in (0, 7)]  # the split ignores the run seed
    assert all(torch.equal(d.test.x, data.test.x) and torch.equal(d.train.x, data.train.x) for d in seeded)
    half = _load("caltech101", data_dir=str(tmp_path), image_size=8, test_fraction=0.5)
    assert torch.bincount(half.test.y).tolist() == [2, 3, 1] and torch.bincount(half.train.y).tolist() == [1, 2, 1]
    assert half.train.x.shape[0] + half.test.x.shape[0] == 10


def test_caltech101_held_out_is_stratified_and_fixed():
    from tavaal.data.caltech101 import held_out

    assert held_out("x", 1, 0.2).size == 0 and held_out("x", 2, 0.01).tolist() in ([0], [1])
    a = held_out("airplanes", 800, 0.2)
    assert a.size == 160 and np.array_equal(a, held_out("airplanes", 800, 0.2)) and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, held_out("Motorbikes", 800, 0.2))  # each class its own permutation
    assert held_out("x", 31, 0.2).size == 6 and held_out("x", 10, 0.25).size == 3  # rounded half up


def test_caltech101_missing_files_and_bad_images_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(DataError) as err:
        _load("caltech101", data_dir=str(tmp_path))
    _assert_one_line(err, str(tmp_path / "caltech101" / "101_ObjectCategories"), "data.download", "--data-dir")
    with pytest.raises(DataError) as err:
        _load("caltech101", data_dir=str(tmp_path / "nowhere"))
    _assert_one_line(err, str(tmp_path / "nowhere"))

    import torchvision.datasets

    def offline(*args, **kwargs):  # stands in for the download: no network in tests
        raise RuntimeError("Failed to download\nsecond line")

    monkeypatch.setattr(torchvision.datasets, "Caltech101", offline)
    with pytest.raises(DataError) as err:
        DATASETS.get("caltech101")(DataConfig(name="caltech101", data_dir=str(tmp_path), download=True))
    _assert_one_line(err, "could not download", "RuntimeError: Failed to download", "101_ObjectCategories.tar.gz")

    folder = _write_caltech(tmp_path)
    bad = folder / "ant" / "image_0001.jpg"
    bad.write_bytes(bad.read_bytes()[:20])
    with pytest.raises(DataError) as err:
        _load("caltech101", data_dir=str(tmp_path), image_size=8)
    _assert_one_line(err, str(bad))
    with pytest.raises(ConfigError, match="data.test_fraction"):
        _load("caltech101", data_dir=str(tmp_path), test_fraction=0.0)


# ---------------------------------------------------------------- shapes_seg


def test_shapes_seg_shapes_determinism_and_class_frequencies():
    data = _load("shapes_seg")
    assert data.train.x.shape == (2000, 3, 32, 32) and data.train.y.shape == (2000, 32, 32)
    assert data.test.x.shape == (500, 3, 32, 32) and data.test.y.shape == (500, 32, 32)
    assert {t.dtype for t in (data.train.x, data.train.y, data.test.x, data.test.y)} == {torch.uint8}
    assert data.num_classes == 5 and data.task == "segmentation" and data.class_names[4] == "ring"
    again = _load("shapes_seg")
    assert torch.equal(again.train.x, data.train.x) and torch.equal(again.test.y, data.test.y)
    assert not torch.equal(data.train.y[:500], data.test.y)
    assert int(data.train.y.max()) == 4 and int(data.test.y.max()) == 4  # 0..4 only: no 255 in this set
    freq = torch.bincount(data.train.y.flatten(), minlength=5).double() / data.train.y.numel()
    assert (freq > 0.005).all() and len(set(freq.tolist())) == 5
    bg, disc, square, triangle, ring = freq.tolist()
    assert bg > 0.6 and disc > square > 2 * triangle and triangle > ring  # rare triangles and rings by design
    # the mask follows the painting: shapes are bright in every channel, the texture is dark
    shape_px = data.train.y.unsqueeze(1).expand_as(data.train.x) > 0
    assert data.train.x[shape_px].min().item() >= 130 and data.train.x[~shape_px].max().item() <= 122
    per_image = (data.train.y.flatten(1)[:, None, :] == torch.arange(1, 5)[None, :, None]).any(2).sum(1)
    assert per_image.min().item() >= 1 and per_image.max().item() <= 4
    pixels = data.train.x.double().div(255)
    assert pixels.mean(dim=(0, 2, 3)).tolist() == pytest.approx(data.mean, abs=0.005)
    assert pixels.std(dim=(0, 2, 3)).tolist() == pytest.approx(data.std, abs=0.005)


def test_shapes_seg_sizes_prefix_and_bounds():
    small = _load("shapes_seg", num_train=300, num_test=7, image_size=16)
    assert small.train.x.shape == (300, 3, 16, 16) and small.test.y.shape == (7, 16, 16)
    assert torch.equal(_load("shapes_seg", num_train=100).train.x, _load("shapes_seg", num_train=300).train.x[:100])
    sub = build_dataset(DataConfig(name="shapes_seg", num_train=50, num_test=20, image_size=48), seed=0)
    assert sub.train.y.shape == (50, 48, 48) and sub.test.x.shape == (20, 3, 48, 48)
    for size in (8, 129):
        with pytest.raises(ConfigError) as err:
            _load("shapes_seg", image_size=size)
        _assert_one_line(err, "data.image_size", "16", "128")
    with pytest.raises(ConfigError) as err:
        _load("shapes_seg", num_train=MAX_PIXELS // (32 * 32) + 1)
    _assert_one_line(err, "data.num_train", "shapes_seg")
    with pytest.raises(ConfigError, match="data.num_test"):
        _load("shapes_seg", num_test=MAX_PIXELS // (128 * 128) + 1, image_size=128)
