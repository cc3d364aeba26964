"""The image-folder layout: ``ROOT/images/<id>.(png|jpg|jpeg)``, optional ``ROOT/masks/<id>.png`` and
``ROOT/annotations.json``.

It is the simplest way to bring any data in and what the synthetic generator writes. The decoding helpers
here (``read_image``, ``read_instance_mask``...) are shared by every other adapter so that all of them fail
the same way: a ``DatasetError`` naming the file.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from featcache.datasets.base import IGNORE_LABEL, MASK_DTYPE, Dataset, Sample
from featcache.errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Used when no annotations.json bounds the instance count.
DEFAULT_MAX_INSTANCES = 64
ANNOTATIONS_NAME = "annotations.json"

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders embedded numbers numerically ("2" before "10"), so frames come in time order."""
    parts = _DIGITS.split(name)
    # Pieces alternate text / digits; tag each so ints and strings never get compared with each other.
    return tuple((1, int(part)) if index % 2 else (0, part) for index, part in enumerate(parts))


def one_line(error: BaseException) -> str:
    """An exception message squeezed onto one line (user-facing errors are one line)."""
    return " ".join(str(error).split()) or type(error).__name__


def dataset_root(root: str) -> Path:
    """The absolute folder behind ``root`` (``~`` expanded); DatasetError when it is missing or not a folder."""
    path = Path(os.path.abspath(os.path.expanduser(root)))
    if not path.exists():
        raise DatasetError(f"dataset path {path} does not exist")
    if not path.is_dir():
        raise DatasetError(f"dataset path {path} is a file; expected a folder")
    return path


def split_directory(root: Path, split: str | None) -> Path:
    """``root/split`` when a split is given (it must exist), else ``root``."""
    if split is None:
        return root
    directory = root / split
    if not directory.is_dir():
        raise DatasetError(f"split folder {directory} does not exist; expected ROOT/{split}/ for split {split!r}")
    return directory


_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _undecodable(what: str, path: Path, error: BaseException) -> DatasetError:
    return DatasetError(f"cannot decode {what} {path} ({one_line(error)}); expected a readable image file")


def _open_decoded(path: Path, what: str) -> Image.Image:
    """Open and fully decode ``path`` so truncated files fail here, with the file named."""
    try:
        image = Image.open(path)
    except FileNotFoundError:
        raise DatasetError(f"{what} file {path} does not exist") from None
    except _DECODE_ERRORS as error:
        raise _undecodable(what, path, error) from None
    try:
        image.load()
    except _DECODE_ERRORS as error:
        image.close()
        raise _undecodable(what, path, error) from None
    return image


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 RGB; alpha is dropped and grey/palette images are expanded."""
    with _open_decoded(path, "image") as image:
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            raise DatasetError(f"image {path} has {image.mode} pixels; expected 8-bit RGB, RGBA, grey or palette")
        rgb = image.convert("RGB")
    return np.asarray(rgb, dtype=np.uint8)  # (H, W, 3)


def read_index_image(path: Path, what: str) -> np.ndarray:
    """Decode a single-channel index PNG (8-bit grey, palette indices or 16-bit grey) to (H, W) uint16.

    Palette images keep their indices (not the colours), which is how VOC and ClevrTex store ids.
    """
    with _open_decoded(path, what) as image:
        if image.mode in ("L", "P", "1"):
            values = np.asarray(image, dtype=np.uint8)
        elif image.mode in ("I;16", "I;16B", "I;16L", "I"):
            values = np.asarray(image)
            if values.size and (values.min() < 0 or values.max() > np.iinfo(MASK_DTYPE).max):
                raise DatasetError(f"{what} {path} holds values outside 0..65535; expected 16-bit instance ids")
        else:
            raise DatasetError(
                f"{what} {path} has mode {image.mode}; expected a single-channel 8-bit, palette or 16-bit PNG"
            )
    return values.astype(MASK_DTYPE)  # (H, W)


def check_same_size(mask: np.ndarray, image: np.ndarray, mask_path: Path, image_path: Path) -> None:
    """DatasetError naming both files and sizes when a mask does not cover its image pixel for pixel."""
    if mask.shape != image.shape[:2]:
        mask_height, mask_width = mask.shape
        image_height, image_width = image.shape[:2]
        raise DatasetError(
            f"mask {mask_path} is {mask_width}x{mask_height} but image {image_path} is "
            f"{image_width}x{image_height}; expected the same size"
        )


def read_instance_mask(path: Path, image: np.ndarray, image_path: Path) -> np.ndarray:
    """Decode an instance-id PNG (0 = background, k = instance k, 65535 = ignore) sized like ``image``."""
    mask = read_index_image(path, "mask")  # (H, W) uint16
    check_same_size(mask, image, path, image_path)
    return mask


def highest_instance_id(mask: np.ndarray) -> int:
    """The largest instance id in ``mask``, ignoring IGNORE_LABEL (0 when there are no instances)."""
    return int(np.max(mask, where=mask != IGNORE_LABEL, initial=0))


def read_json(path: Path) -> Any:
    """Parse a JSON file; DatasetError naming it when it is missing or malformed."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise DatasetError(f"JSON file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"cannot parse JSON file {path} ({one_line(error)})") from None


def _read_class_table(path: Path) -> dict[str, list[int]] | None:
    """``classes`` of an annotations.json as {sample id: [class of instance 1, ...]}, or None when absent."""
    annotations = read_json(path)
    if not isinstance(annotations, dict):
        raise DatasetError(f"{path} holds a {type(annotations).__name__}; expected a JSON object with 'classes'")
    classes = annotations.get("classes")
    if classes is None:
        return None
    if not isinstance(classes, dict):
        raise DatasetError(f"{path}: 'classes' is a {type(classes).__name__}; expected {{id: [class, ...]}}")
    table: dict[str, list[int]] = {}
    for sample_id, values in classes.items():
        if not isinstance(values, list) or not all(isinstance(value, int) for value in values):
            raise DatasetError(f"{path}: classes[{sample_id!r}] is {values!r}; expected a list of integer class ids")
        table[sample_id] = values
    return table


class ImageFolder:
    """One folder in the image-folder layout, listed without decoding pixels.

    Used directly by ``FolderDataset`` and once per clip by ``ClipsDataset``.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        images_directory = directory / "images"
        if not images_directory.is_dir():
            raise DatasetError(f"{images_directory} is not a folder; expected images in ROOT/images/<id>.png|jpg")
        self.image_paths: dict[str, Path] = {}
        with os.scandir(images_directory) as entries:
            for entry in entries:
                stem, suffix = os.path.splitext(entry.name)
                if entry.name.startswith(".") or suffix.lower() not in IMAGE_SUFFIXES or not entry.is_file():
                    continue
                if stem in self.image_paths:
                    raise DatasetError(
                        f"{images_directory} holds two images with id {stem!r} "
                        f"({self.image_paths[stem].name}, {entry.name}); expected one file per id"
                    )
                self.image_paths[stem] = Path(entry.path)
        if not self.image_paths:
            raise DatasetError(f"{images_directory} holds no .png/.jpg/.jpeg images")
        self.ids = sorted(self.image_paths, key=natural_key)
        self.masks_directory = directory / "masks"
        self.has_masks = self.masks_directory.is_dir()
        self.annotations_path = directory / ANNOTATIONS_NAME
        self.classes = _read_class_table(self.annotations_path) if self.annotations_path.is_file() else None

    def mask_path(self, sample_id: str) -> Path:
        return self.masks_directory / f"{sample_id}.png"

    def max_instances(self) -> int | None:
        """Most instances of any image per annotations.json, or None when it does not list every image."""
        if self.classes is None or any(sample_id not in self.classes for sample_id in self.ids):
            return None
        return max(1, max(len(self.classes[sample_id]) for sample_id in self.ids))

    def read(self, sample_id: str, require_mask: bool) -> tuple[np.ndarray, np.ndarray | None, list[int]]:
        """Decode one image, its mask (when the folder has masks or ``require_mask``) and instance classes.

        Returns image (H, W, 3) uint8, mask (H, W) uint16 or None, and one class id per instance id.
        """
        image_path = self.image_paths[sample_id]
        image = read_image(image_path)
        mask: np.ndarray | None = None
        if self.has_masks or require_mask:
            mask_path = self.mask_path(sample_id)
            if not mask_path.is_file():
                raise DatasetError(
                    f"mask file {mask_path} does not exist; expected a mask for every image once masks are present"
                )
            mask = read_instance_mask(mask_path, image, image_path)
        return image, mask, self._instance_classes(sample_id, mask)

    def _instance_classes(self, sample_id: str, mask: np.ndarray | None) -> list[int]:
        count = 0 if mask is None else highest_instance_id(mask)
        if self.classes is not None and sample_id in self.classes:
            classes = list(self.classes[sample_id])
            if len(classes) < count:
                raise DatasetError(
                    f"{self.annotations_path}: classes[{sample_id!r}] lists {len(classes)} instances but mask "
                    f"{self.mask_path(sample_id)} has instance id {count}; expected one class per instance id"
                )
            return classes
        return [0] * count


class FolderDataset(Dataset):
    """Images in ``ROOT[/split]/images/``, optional instance masks in ``masks/`` and classes in annotations.json."""

    kind = "folder"

    def __init__(self, root: str, split: str | None = None) -> None:
        root_path = dataset_root(root)
        super().__init__(str(root_path), split)
        self._folder = ImageFolder(split_directory(root_path, split))
        self._ids = list(self._folder.ids)
        self.has_masks = self._folder.has_masks

    @property
    def max_instances(self) -> int:
        return self._folder.max_instances() or DEFAULT_MAX_INSTANCES

    def load(self, index: int) -> Sample:
        sample_id = self._ids[index]
        image, mask, classes = self._folder.read(sample_id, require_mask=False)
        return Sample(sample_id=sample_id, image=image, instance_mask=mask, instance_classes=classes)
