"""ClevrTex: ``CLEVRTEX_<variant>_<index>.png`` with ``..._<index>_flat.png`` masks and ``..._<index>.json``.

Files may sit in any subfolders (the release shards them into numbered folders). Splits follow the
ClevrTex benchmark: sorted by index, the first 10% is ``test``, the next 10% ``val``, the rest ``train``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from featcache.datasets.base import Dataset, Sample
from featcache.datasets.folder import dataset_root, highest_instance_id, read_image, read_instance_mask, read_json
from featcache.errors import DatasetError

#: Split name -> (start, end) fraction of the index-sorted file list, as in the ClevrTex benchmark.
SPLITS: dict[str, tuple[float, float]] = {"test": (0.0, 0.1), "val": (0.1, 0.2), "train": (0.2, 1.0)}
#: ClevrTex shape names; class id = position + 1, 0 for an unknown shape or missing metadata.
SHAPES = ("cube", "cylinder", "sphere", "monkey")
#: ClevrTex scenes hold at most 10 objects (plus background).
MAX_OBJECTS = 10

_IMAGE_NAME = re.compile(r"^CLEVRTEX_(?P<variant>.+)_(?P<index>\d{6})\.png$")


def shape_class(shape: object) -> int:
    """Stable class id of a ClevrTex shape name (1-based position in SHAPES, 0 when unknown)."""
    return SHAPES.index(shape) + 1 if shape in SHAPES else 0


class ClevrTexDataset(Dataset):
    """One ClevrTex split (or all images when split is None), ids = image file stems."""

    kind = "clevrtex"
    has_masks = True

    def __init__(self, root: str, split: str | None = None) -> None:
        root_path = dataset_root(root)
        if split is not None and split not in SPLITS:
            raise DatasetError(f"unknown ClevrTex split {split!r}; expected one of {', '.join(SPLITS)}")
        super().__init__(str(root_path), split)
        found: dict[tuple[int, str], Path] = {}
        for directory, folders, files in os.walk(root_path):
            folders.sort()  # deterministic walk order
            for name in files:
                match = _IMAGE_NAME.match(name)
                if match is None:
                    continue
                key = (int(match["index"]), match["variant"])
                if key in found:
                    raise DatasetError(
                        f"ClevrTex image {name} appears twice ({found[key]}, {Path(directory) / name}); "
                        "expected one copy"
                    )
                found[key] = Path(directory) / name
        if not found:
            raise DatasetError(f"{root_path} holds no CLEVRTEX_<variant>_<index>.png images")
        ordered = [found[key] for key in sorted(found)]
        if split is not None:
            start, end = SPLITS[split]
            ordered = ordered[int(start * len(ordered)) : int(end * len(ordered))]
            if not ordered:
                raise DatasetError(f"ClevrTex split {split!r} of {root_path} is empty ({len(found)} images in all)")
        self._image_paths = ordered
        self._ids = [path.stem for path in ordered]

    @property
    def max_instances(self) -> int:
        return MAX_OBJECTS

    def load(self, index: int) -> Sample:
        image_path = self._image_paths[index]
        stem = image_path.stem
        image = read_image(image_path)  # (H, W, 3), alpha dropped
        mask_path = image_path.with_name(f"{stem}_flat.png")
        if not mask_path.is_file():
            raise DatasetError(f"ClevrTex mask file {mask_path} does not exist; expected one next to {image_path.name}")
        mask = read_instance_mask(mask_path, image, image_path)  # (H, W)
        count = highest_instance_id(mask)
        classes = [0] * count
        metadata_path = image_path.with_suffix(".json")
        if metadata_path.is_file():
            metadata = read_json(metadata_path)
            objects = metadata.get("objects") if isinstance(metadata, dict) else None
            if not isinstance(objects, list):
                raise DatasetError(f"ClevrTex metadata {metadata_path} has no 'objects' list")
            # Object k of the list is mask index k; a fully hidden object still keeps its slot.
            classes = [shape_class(item.get("shape") if isinstance(item, dict) else None) for item in objects]
            classes += [0] * (count - len(classes))
        return Sample(sample_id=self._ids[index], image=image, instance_mask=mask, instance_classes=classes)
