"""The one interface every dataset adapter implements.

An adapter lists its samples cheaply at construction (ids and file paths, no pixel decoding) and
decodes one sample on demand with :meth:`Dataset.load`, so extraction workers can decode in parallel.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

#: Instance-mask value for pixels that drop out of every metric (VOC boundaries, overlapping COCO instances).
IGNORE_LABEL = 65535
#: Instance masks are uint16: 0 = background, 1..K = instances, IGNORE_LABEL = ignore.
MASK_DTYPE = np.uint16


@dataclass
class Sample:
    """One decoded image with its ground truth.

    image: (H, W, 3) uint8 RGB.
    instance_mask: (H, W) uint16, 0 = background, k = instance k, IGNORE_LABEL = ignore; None if the dataset has no masks.
    instance_classes: class id of instance k at position k - 1 (len == number of instances).
    clip_id / frame_index: set for video datasets (frames of one clip share clip_id), else None / 0.
    instance_boxes: (K, 4) float32 x0, y0, x1, y1 in pixels (x1/y1 exclusive) of instance k at row k - 1, a NaN row
    where the instance is not in this frame; None when the adapter gives no boxes (see ``boxes_from_mask``).
    """

    sample_id: str
    image: np.ndarray
    instance_mask: np.ndarray | None = None
    instance_classes: list[int] = field(default_factory=list)
    clip_id: str | None = None
    frame_index: int = 0
    instance_boxes: np.ndarray | None = None


def boxes_from_mask(mask: np.ndarray, count: int) -> np.ndarray:
    """(count, 4) float32 boxes x0, y0, x1, y1 (exclusive) around the pixels of ids 1..count of ``mask`` (H, W);
    NaN rows for ids with no pixel. IGNORE_LABEL pixels belong to no box."""
    boxes = np.full((count, 4), np.nan, dtype=np.float32)
    for instance_id in range(1, count + 1):
        rows, columns = np.nonzero(mask == instance_id)
        if rows.size:
            boxes[instance_id - 1] = (columns.min(), rows.min(), columns.max() + 1, rows.max() + 1)
    return boxes


class Dataset(ABC):
    """A split of a dataset as an indexable list of samples.

    Subclasses set ``kind`` (registry name), ``root`` and ``split`` and fill ``self._ids`` in ``__init__``.
    Adapters with options (``video:DIR?stride=2``) list them in ``options`` (name -> default, whose type the value
    is parsed to), take them as keyword arguments and keep the values given in ``self.option_values``.
    """

    kind: str = ""
    #: True when every sample has an instance mask.
    has_masks: bool = False
    #: True when samples are frames of clips (clip_id / frame_index meaningful).
    is_video: bool = False
    #: Spec options this adapter takes (``KIND:PATH?name=value&...``): name -> default value.
    options: dict[str, int | str | None] = {}

    def __init__(self, root: str, split: str | None = None) -> None:
        self.root = root
        self.split = split
        self._ids: list[str] = []
        self.option_values: dict[str, int | str | None] = {}

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def sample_ids(self) -> list[str]:
        return list(self._ids)

    @abstractmethod
    def load(self, index: int) -> Sample:
        """Decode sample ``index``; raise ``DatasetError`` naming the file when it is missing or corrupt."""

    @property
    def max_instances(self) -> int:
        """An upper bound on instances per sample (sizes the store's class-id table)."""
        return 64

    def clip_ids(self) -> list[str | None]:
        """Clip id of every sample without decoding pixels (None for image datasets)."""
        return [None] * len(self)

    def frame_indices(self) -> list[int]:
        """Frame index of every sample without decoding pixels (0 for image datasets)."""
        return [0] * len(self)

    def source(self) -> str:
        """The dataset spec a user would pass to ``--data`` to get this dataset back."""
        given = [f"{name}={value}" for name, value in self.option_values.items() if value != self.options.get(name)]
        return f"{self.kind}:{self.root}" + (f"?{'&'.join(given)}" if given else "")

    def fingerprint(self) -> str:
        """sha256 over kind, split and the ordered sample ids: two runs on different data never share a store."""
        digest = hashlib.sha256()
        digest.update(f"{self.kind}\n{self.split}\n".encode())
        for name, value in sorted(self.option_values.items()):  # frames sampled differently are other data
            if value != self.options.get(name):
                digest.update(f"{name}={value}\n".encode())
        for sample_id in self._ids:
            digest.update(sample_id.encode())
            digest.update(b"\n")
        return digest.hexdigest()
