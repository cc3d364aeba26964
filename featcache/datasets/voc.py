"""Pascal VOC instance segmentation (``SegmentationObject``), the standard object-discovery benchmark split.

ROOT is the ``VOC2012`` folder or a ``VOCdevkit`` folder holding it. Palette index 255 marks object
boundaries and "difficult" regions; it becomes IGNORE_LABEL.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from featcache.datasets.base import IGNORE_LABEL, Dataset, Sample
from featcache.datasets.folder import check_same_size, dataset_root, highest_instance_id, read_image, read_index_image
from featcache.errors import DatasetError

DEFAULT_SPLIT = "val"
#: VOC's palette index for boundaries and ignored regions, in both object and class PNGs.
VOC_IGNORE_INDEX = 255
#: Palette indices are uint8, so class ids are below this.
_PALETTE_SIZE = 256


def find_voc_year_folder(root: Path) -> Path:
    """The folder holding JPEGImages/: ``root`` itself, or ``root/VOC2012`` (else the only ``root/VOC*``)."""
    if (root / "JPEGImages").is_dir():
        return root
    if (root / "VOC2012" / "JPEGImages").is_dir():
        return root / "VOC2012"
    candidates = sorted(path for path in root.glob("VOC*") if (path / "JPEGImages").is_dir())
    if len(candidates) == 1:
        return candidates[0]
    raise DatasetError(f"{root} has no JPEGImages/ (nor VOC2012/JPEGImages/); expected a VOC2012 or VOCdevkit folder")


def majority_classes(objects: np.ndarray, classes: np.ndarray, count: int) -> list[int]:
    """Most frequent class index under each instance 1..count, boundary pixels (255) left out; 0 if none.

    objects, classes: (H, W) palette indices of SegmentationObject and SegmentationClass.
    """
    valid = (objects >= 1) & (objects <= count) & (classes != VOC_IGNORE_INDEX) & (classes < _PALETTE_SIZE)
    pairs = objects[valid].astype(np.int64) * _PALETTE_SIZE + classes[valid]
    votes = np.bincount(pairs, minlength=(count + 1) * _PALETTE_SIZE).reshape(count + 1, _PALETTE_SIZE)
    winners = votes.argmax(axis=1)  # (count + 1,), argmax of an all-zero row is 0
    return [int(winner) for winner in winners[1:]]


class VocDataset(Dataset):
    """Images of ``ImageSets/Segmentation/<split>.txt`` with instance masks and per-instance majority classes."""

    kind = "voc"
    has_masks = True

    def __init__(self, root: str, split: str | None = None) -> None:
        root_path = dataset_root(root)
        split = split or DEFAULT_SPLIT
        super().__init__(str(root_path), split)
        self.year_folder = find_voc_year_folder(root_path)
        list_path = self.year_folder / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not list_path.is_file():
            available = sorted(path.stem for path in list_path.parent.glob("*.txt"))
            raise DatasetError(
                f"VOC split file {list_path} does not exist; available splits: {', '.join(available) or 'none'}"
            )
        lines = list_path.read_text(encoding="utf-8").splitlines()
        # Lines may carry a second column (e.g. "2007_000033 1"); the id is the first token.
        self._ids = sorted({line.split()[0] for line in lines if line.strip()})
        if not self._ids:
            raise DatasetError(f"VOC split file {list_path} lists no image ids")

    def load(self, index: int) -> Sample:
        sample_id = self._ids[index]
        image_path = self.year_folder / "JPEGImages" / f"{sample_id}.jpg"
        object_path = self.year_folder / "SegmentationObject" / f"{sample_id}.png"
        class_path = self.year_folder / "SegmentationClass" / f"{sample_id}.png"
        image = read_image(image_path)  # (H, W, 3)
        objects = read_index_image(object_path, "mask")  # (H, W) palette indices
        check_same_size(objects, image, object_path, image_path)
        classes = read_index_image(class_path, "class mask")  # (H, W) palette indices
        check_same_size(classes, image, class_path, image_path)
        mask = objects.copy()
        mask[objects == VOC_IGNORE_INDEX] = IGNORE_LABEL
        count = highest_instance_id(mask)
        return Sample(
            sample_id=sample_id,
            image=image,
            instance_mask=mask,
            instance_classes=majority_classes(objects, classes, count),
        )
