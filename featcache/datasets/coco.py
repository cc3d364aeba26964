"""COCO instance segmentation: ``ROOT/annotations/instances_<split>.json`` with images in ``ROOT/<split>/``.

Instance masks follow the object-discovery convention: crowd regions are not instances, and pixels claimed
by two or more instances are IGNORE_LABEL, so overlapping polygons never bias a metric either way.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from featcache.datasets.base import IGNORE_LABEL, MASK_DTYPE, Dataset, Sample
from featcache.datasets.folder import dataset_root, one_line, read_image, read_json
from featcache.errors import DatasetError

DEFAULT_SPLIT = "val2017"


def _require_keys(record: Any, keys: tuple[str, ...], what: str, path: Path) -> None:
    if not isinstance(record, dict) or any(key not in record for key in keys):
        raise DatasetError(f"{path}: an entry of '{what}' is {str(record)[:80]!r}; expected keys {', '.join(keys)}")


class CocoDataset(Dataset):
    """Every image listed in the split's instances file (also those without annotations), sorted by image id."""

    kind = "coco"
    has_masks = True

    def __init__(self, root: str, split: str | None = None) -> None:
        root_path = dataset_root(root)
        split = split or DEFAULT_SPLIT
        super().__init__(str(root_path), split)
        self.annotation_path = root_path / "annotations" / f"instances_{split}.json"
        if not self.annotation_path.is_file():
            raise DatasetError(
                f"COCO annotation file {self.annotation_path} does not exist; "
                "expected ROOT/annotations/instances_<split>.json"
            )
        self.image_directory = root_path / split
        self._coco = self._index(self.annotation_path)
        image_ids = sorted(self._coco.imgs)
        self._image_ids: list[int] = image_ids
        self._ids = [str(image_id) for image_id in image_ids]
        # Non-crowd annotations per image in file order: instance k is the k-th of them.
        self._instances: dict[int, list[dict[str, Any]]] = {
            image_id: [
                annotation for annotation in self._coco.imgToAnns.get(image_id, []) if not annotation.get("iscrowd", 0)
            ]
            for image_id in image_ids
        }
        self._max_instances = max([1, *(len(anns) for anns in self._instances.values())])

    @staticmethod
    def _index(path: Path) -> COCO:
        """Validate the instances file and build pycocotools' index over it (without its console chatter)."""
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise DatasetError(f"{path} has no 'images' list; expected a COCO instances file")
        annotations = data.setdefault("annotations", [])
        if not isinstance(annotations, list):
            raise DatasetError(f"{path}: 'annotations' is not a list; expected a COCO instances file")
        for image in data["images"]:
            _require_keys(image, ("id", "file_name", "height", "width"), "images", path)
        for annotation in annotations:
            _require_keys(annotation, ("id", "image_id", "category_id", "segmentation"), "annotations", path)
        if not data["images"]:
            raise DatasetError(f"{path} lists no images")
        coco = COCO()
        coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco

    @property
    def max_instances(self) -> int:
        return self._max_instances

    def load(self, index: int) -> Sample:
        image_id = self._image_ids[index]
        info = self._coco.imgs[image_id]
        image_path = self.image_directory / info["file_name"]
        image = read_image(image_path)  # (H, W, 3)
        height, width = image.shape[:2]
        if (height, width) != (info["height"], info["width"]):
            raise DatasetError(
                f"image {image_path} is {width}x{height} but {self.annotation_path} says "
                f"{info['width']}x{info['height']}; expected the annotated size"
            )
        instances = self._instances[image_id]
        mask = np.zeros((height, width), dtype=MASK_DTYPE)  # (H, W)
        covered = np.zeros((height, width), dtype=bool)
        overlapped = np.zeros((height, width), dtype=bool)
        for instance_id, annotation in enumerate(instances, start=1):
            if not annotation["segmentation"]:  # an empty polygon list covers nothing
                continue
            try:
                region = self._coco.annToMask(annotation).astype(bool)  # (H, W)
            except (ValueError, TypeError, IndexError, KeyError) as error:
                raise DatasetError(
                    f"{self.annotation_path}: annotation {annotation['id']} has an unreadable segmentation "
                    f"({one_line(error)})"
                ) from None
            overlapped |= covered & region
            covered |= region
            mask[region] = instance_id
        mask[overlapped] = IGNORE_LABEL
        return Sample(
            sample_id=self._ids[index],
            image=image,
            instance_mask=mask,
            instance_classes=[int(annotation["category_id"]) for annotation in instances],
        )
