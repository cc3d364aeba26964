"""Views: the crops of a source image that are each run through the VFM and cached separately.

A flipped image's ViT features are not the flipped features, so every view (centre crop, its flip,
random resized crops) is extracted on its own. A view's crop is described by ``CropParams`` in source
pixels; the model input, the cached small image and the mask are all cut from that same crop, so
masks and images follow each view. Crop parameters of a random view depend only on
(seed, sample index, view index), never on processing order: resumed and distributed runs match.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from featcache.errors import FeatcacheError

#: VVO's augmentation recipe: area of the largest centred square kept, and aspect ratio range.
RANDOM_CROP_SCALE = (0.75, 1.0)
RANDOM_CROP_RATIO = (3 / 4, 4 / 3)
RANDOM_FLIP_PROBABILITY = 0.5


@dataclass(frozen=True)
class ViewSpec:
    """How a view is cut: ``center`` = largest centred square; ``random_crop`` = random resized crop."""

    name: str
    kind: Literal["center", "random_crop"]
    #: For ``center`` views: flip or not. Random crops draw their flip with p = 0.5.
    flip: bool = False


@dataclass(frozen=True)
class CropParams:
    """A crop in source-image pixels plus a horizontal flip applied after resizing."""

    top: float
    left: float
    height: float
    width: float
    flip: bool

    def as_array(self) -> np.ndarray:
        return np.array([self.top, self.left, self.height, self.width, float(self.flip)], dtype=np.float32)


def default_views(crops: int = 0) -> list[ViewSpec]:
    """Centre crop and its horizontal flip, then ``crops`` random resized crops."""
    if crops < 0:
        raise FeatcacheError(f"--crops must be >= 0, got {crops}")
    views = [ViewSpec("center", "center", flip=False), ViewSpec("center-flip", "center", flip=True)]
    views += [ViewSpec(f"crop{index}", "random_crop") for index in range(crops)]
    return views


def crop_params(view: ViewSpec, image_height: int, image_width: int, seed: int, sample_index: int, view_index: int) -> CropParams:
    """The crop of ``view`` for one sample; random views are seeded by (seed, sample_index, view_index)."""
    side = min(image_height, image_width)
    if view.kind == "center":
        return CropParams((image_height - side) / 2, (image_width - side) / 2, side, side, view.flip)
    rng = np.random.default_rng([seed, sample_index, view_index])
    area = side * side * rng.uniform(*RANDOM_CROP_SCALE)
    log_ratio = rng.uniform(math.log(RANDOM_CROP_RATIO[0]), math.log(RANDOM_CROP_RATIO[1]))
    ratio = math.exp(log_ratio)  # width / height
    width = min(math.sqrt(area * ratio), image_width)
    height = min(math.sqrt(area / ratio), image_height)
    top = rng.uniform(0, image_height - height)
    left = rng.uniform(0, image_width - width)
    flip = bool(rng.random() < RANDOM_FLIP_PROBABILITY)
    return CropParams(top, left, height, width, flip)


def resize_crop_image(image: np.ndarray, crop: CropParams, size: int) -> np.ndarray:
    """Cut ``crop`` from an (H, W, 3) uint8 image and resize it (bicubic, antialiased) to (size, size, 3)."""
    box = (crop.left, crop.top, crop.left + crop.width, crop.top + crop.height)
    resized = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC, box=box))
    return np.ascontiguousarray(resized[:, ::-1]) if crop.flip else resized


def resize_crop_mask(mask: np.ndarray, crop: CropParams, size: int) -> np.ndarray:
    """Cut ``crop`` from an (H, W) label mask and resize it by nearest neighbour (labels never blend)."""
    # Sample each target pixel's centre in source coordinates.
    rows = np.floor(crop.top + (np.arange(size) + 0.5) * crop.height / size).astype(np.int64)
    cols = np.floor(crop.left + (np.arange(size) + 0.5) * crop.width / size).astype(np.int64)
    rows = np.clip(rows, 0, mask.shape[0] - 1)
    cols = np.clip(cols, 0, mask.shape[1] - 1)
    resized = mask[rows[:, None], cols[None, :]]
    return np.ascontiguousarray(resized[:, ::-1]) if crop.flip else resized
