"""Cityscapes semantic segmentation (fine annotations) in torchvision's on-disk layout, 19 training classes.

``<data_dir>/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png``  (RGB 2048x1024)
``<data_dir>/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png``   (8-bit labelIds)

The train split (2,975 images) is the pool and the val split (500) the test split: Cityscapes' own test split
has no public labels. The 34 labelIds (0..33) map to the 19 training ids of cityscapesScripts' ``labels.py``
(``trainId``); every other value (void classes, license plate -1, stored as 255 in a uint8 PNG, and anything
unknown) becomes 255, the ignore index of the segmentation contract. Images are resized bilinearly and masks by
nearest neighbour (labels are never interpolated) to ``data.image_size`` x ``2 * data.image_size``, Cityscapes'
1:2 aspect ratio. Images pair with masks by file stem (``<city>_<seq>_<frame>``); files are read in sorted order
so that indices are stable. Cityscapes needs a login to download, so there is no automatic download and
``data.download`` is ignored. Normalization: ImageNet's mean/std (the backbones' pretraining statistics).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tavaal.config import DataConfig
from tavaal.data.base import IGNORE_INDEX, ALData, Split
from tavaal.errors import ConfigError, DataError
from tavaal.registry import DATASETS

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGE_SUFFIX, MASK_SUFFIX = "_leftImg8bit.png", "_gtFine_labelIds.png"
MAX_BYTES = 32 * 2**30  # images + masks of one split held in memory (4 bytes a pixel)
HINT = (
    "download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from cityscapes-dataset.com (it needs "
    "a login, so it cannot be downloaded automatically) and extract both into one folder"
)

# cityscapesScripts labels.py: (labelId, trainId, name) of the 19 classes used for training and evaluation
TRAIN_CLASSES = (
    (7, 0, "road"),
    (8, 1, "sidewalk"),
    (11, 2, "building"),
    (12, 3, "wall"),
    (13, 4, "fence"),
    (17, 5, "pole"),
    (19, 6, "traffic light"),
    (20, 7, "traffic sign"),
    (21, 8, "vegetation"),
    (22, 9, "terrain"),
    (23, 10, "sky"),
    (24, 11, "person"),
    (25, 12, "rider"),
    (26, 13, "car"),
    (27, 14, "truck"),
    (28, 15, "bus"),
    (31, 16, "train"),
    (32, 17, "motorcycle"),
    (33, 18, "bicycle"),
)
CLASS_NAMES = tuple(name for _, _, name in TRAIN_CLASSES)
LABEL_TO_TRAIN = np.full(256, IGNORE_INDEX, dtype=np.uint8)  # any uint8 labelId -> trainId (255: ignore)
for _label, _train, _ in TRAIN_CLASSES:
    LABEL_TO_TRAIN[_label] = _train


def _root(cfg: DataConfig) -> Path:
    if cfg.data_dir is None:
        raise DataError(
            f"cityscapes needs data.data_dir (--data-dir) pointing at the folder holding leftImg8bit/ "
            f"and gtFine/; {HINT}"
        )
    root = Path(cfg.data_dir).expanduser()
    if not root.is_dir():
        raise DataError(
            f"data directory '{root}' does not exist; point data.data_dir at the folder holding "
            f"leftImg8bit/ and gtFine/; {HINT}"
        )
    return root


def _pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """Sorted (image, mask) paths of one split; an unpaired file or an empty split is a DataError."""
    image_dir, mask_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    for d in (image_dir, mask_dir):
        if not d.is_dir():
            raise DataError(
                f"cityscapes folder '{d}' not found; data.data_dir must hold leftImg8bit/{split}/ and "
                f"gtFine/{split}/; {HINT}"
            )
    images = {
        p.relative_to(image_dir).as_posix()[: -len(IMAGE_SUFFIX)]: p for p in image_dir.glob(f"*/*{IMAGE_SUFFIX}")
    }
    masks = {p.relative_to(mask_dir).as_posix()[: -len(MASK_SUFFIX)]: p for p in mask_dir.glob(f"*/*{MASK_SUFFIX}")}
    no_mask, no_image = sorted(images.keys() - masks.keys()), sorted(masks.keys() - images.keys())
    if no_mask:
        raise DataError(
            f"cityscapes image '{images[no_mask[0]]}' has no mask "
            f"'{mask_dir / (no_mask[0] + MASK_SUFFIX)}'; extract gtFine_trainvaltest.zip into '{root}' too"
        )
    if no_image:
        raise DataError(
            f"cityscapes mask '{masks[no_image[0]]}' has no image "
            f"'{image_dir / (no_image[0] + IMAGE_SUFFIX)}'; extract leftImg8bit_trainvaltest.zip into "
            f"'{root}' too"
        )
    if not images:
        raise DataError(f"cityscapes folder '{image_dir}' holds no <city>/*{IMAGE_SUFFIX} files; {HINT}")
    return [(images[s], masks[s]) for s in sorted(images)]


def _decode(path: Path, size: tuple[int, int], mask: bool) -> tuple[tuple[int, int], np.ndarray]:
    """(original width x height, resized array) of one PNG: RGB ``[3, H, W]`` (bilinear) or trainIds ``[H, W]``
    (nearest); any decoding failure (not a PNG, truncated) is a one-line DataError."""
    try:
        with Image.open(path) as im:
            if not mask:
                return im.size, np.asarray(im.convert("RGB").resize(size, Image.Resampling.BILINEAR)).transpose(2, 0, 1)
            if im.mode not in ("L", "P", "I", "I;16"):
                raise DataError(
                    f"cityscapes mask '{path}' has PIL mode {im.mode}, expected a one-channel "
                    f"*{MASK_SUFFIX} (labelIds, not the colour or instanceIds image)"
                )
            return im.size, _train_ids(im.resize(size, Image.Resampling.NEAREST))
    except DataError:
        raise
    except Exception as e:  # UnidentifiedImageError, OSError (truncated), SyntaxError, ...: a bad file
        raise DataError(
            f"cannot read cityscapes PNG '{path}' ({type(e).__name__}); replace it with a good copy "
            "from the original zip"
        ) from None


def _train_ids(mask: Image.Image) -> np.ndarray:
    """uint8 ``[H, W]`` trainIds (255: ignore) of a labelIds image (8-bit, or 16/32-bit with any value)."""
    ids = np.asarray(mask)
    if ids.dtype != np.uint8:  # a 16/32-bit PNG: values outside 0..255 (and -1) are unknown -> ignore
        ids = np.where((ids >= 0) & (ids < 256), ids, IGNORE_INDEX).astype(np.uint8)
    return LABEL_TO_TRAIN[ids]


def _read_split(pairs: list[tuple[Path, Path]], height: int, width: int) -> Split:
    """x uint8 ``[N, 3, height, width]``, y uint8 ``[N, height, width]``: allocated once, filled in order."""
    x = np.empty((len(pairs), 3, height, width), dtype=np.uint8)
    y = np.empty((len(pairs), height, width), dtype=np.uint8)
    for i, (image_path, mask_path) in enumerate(pairs):
        image_size, x[i] = _decode(image_path, (width, height), mask=False)
        mask_size, y[i] = _decode(mask_path, (width, height), mask=True)
        if image_size != mask_size:
            raise DataError(
                f"cityscapes mask '{mask_path}' is {mask_size[0]}x{mask_size[1]} but its image is "
                f"{image_size[0]}x{image_size[1]}; replace the pair with good copies"
            )
    return Split(torch.from_numpy(x), torch.from_numpy(y))


@DATASETS.register("cityscapes")
def cityscapes(cfg: DataConfig) -> ALData:
    """Cityscapes: x uint8 ``[N, 3, S, 2S]``, y uint8 ``[N, S, 2S]`` trainIds 0..18 or 255 (S = data.image_size)."""
    if cfg.channels != 3:
        raise ConfigError(f"config field 'data.channels' must be 3 for cityscapes (RGB), got {cfg.channels}")
    root = _root(cfg)
    height, width = cfg.image_size, 2 * cfg.image_size
    train_pairs, val_pairs = _pairs(root, "train"), _pairs(root, "val")
    need = max(len(train_pairs), len(val_pairs)) * 4 * height * width
    if need > MAX_BYTES:
        raise ConfigError(
            f"config field 'data.image_size' is {height}: a cityscapes split of {height}x{width} "
            f"images needs {need / 2**30:.0f} GiB in memory (at most {MAX_BYTES // 2**30}); lower it"
        )
    return ALData(
        name="cityscapes",
        train=_read_split(train_pairs, height, width),
        test=_read_split(val_pairs, height, width),
        num_classes=len(CLASS_NAMES),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        crop_pad=0,
        flip=True,  # a street scene mirrored is still a street scene (the mask must be flipped with it)
        class_names=CLASS_NAMES,
        task="segmentation",
    )
