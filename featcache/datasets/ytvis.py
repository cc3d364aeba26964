"""YouTube-VIS 2019 / 2021 / HQ-YTVIS: ``ytvis:ROOT --split train|valid|...``.

The annotation file of split S is the first of (the layouts of the official releases):

- ``ROOT/S/instances.json`` with frames in ``ROOT/S/JPEGImages/`` (YouTube-VIS 2021 and 2022),
- ``ROOT/S.json`` with frames in ``ROOT/S/JPEGImages/`` (YouTube-VIS 2019),
- ``ROOT/ytvis_hq-S.json`` or ``ROOT/annotations/ytvis_hq-S.json`` (HQ-YTVIS, SysCV/vmt: re-annotated YTVIS 2019
  train videos) with frames in ``ROOT/JPEGImages/`` or else ``ROOT/train/JPEGImages/``.

``videos`` lists each video's ``file_names`` (relative to JPEGImages), ``height`` and ``width``; each entry of
``annotations`` is one instance of one video with a per-frame ``segmentations`` list (compressed or uncompressed
RLE, polygons, or null where the instance is not in the frame) and ``category_id``. Instance k of a video is its
k-th non-crowd annotation in file order, the same id in every frame; ``instance_classes`` are the category ids.
Pixels two instances claim are IGNORE_LABEL (as for COCO). Boxes come from ``bboxes`` (x, y, w, h) when present,
else from the masks. Splits without ``annotations`` (the official valid/test sets) have no masks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from featcache.datasets.base import IGNORE_LABEL, MASK_DTYPE, Dataset, Sample, boxes_from_mask
from featcache.datasets.folder import dataset_root, natural_key, one_line, read_image, read_json
from featcache.errors import DatasetError

DEFAULT_SPLIT = "train"


def _locate(root: Path, split: str) -> tuple[Path, Path]:
    """(annotation file, frame folder) of ``split`` in the first release layout that has it."""
    for annotation_file, frames in (
        (root / split / "instances.json", root / split / "JPEGImages"),
        (root / f"{split}.json", root / split / "JPEGImages"),
        (root / f"ytvis_hq-{split}.json", None),
        (root / "annotations" / f"ytvis_hq-{split}.json", None),
    ):
        if annotation_file.is_file():
            if frames is None:  # HQ-YTVIS: all videos in one JPEGImages folder, or YTVIS 2019's train folder
                frames = root / "JPEGImages" if (root / "JPEGImages").is_dir() else root / "train" / "JPEGImages"
            if not frames.is_dir():
                raise DatasetError(f"frame folder {frames} of {annotation_file} does not exist; expected JPEGImages/<video>/<frame>.jpg")
            return annotation_file, frames
    raise DatasetError(
        f"{root} has no YouTube-VIS annotations for split {split!r}; expected {split}/instances.json (2021), "
        f"{split}.json (2019) or ytvis_hq-{split}.json (HQ-YTVIS)"
    )


def _require(record: Any, keys: tuple[str, ...], what: str, path: Path) -> None:
    if not isinstance(record, dict) or any(key not in record for key in keys):
        missing = [key for key in keys if not isinstance(record, dict) or key not in record]
        raise DatasetError(f"{path}: an entry of '{what}' has no {', '.join(map(repr, missing))}; expected keys {', '.join(keys)}")


class YtvisDataset(Dataset):
    """Every frame of every video of a YouTube-VIS split; sample id ``<video folder>/<frame stem>``."""

    kind = "ytvis"
    is_video = True

    def __init__(self, root: str, split: str | None = None) -> None:
        root_path = dataset_root(root)
        split = split or DEFAULT_SPLIT
        super().__init__(str(root_path), split)
        self.annotation_path, self.frame_directory = _locate(root_path, split)
        data = read_json(self.annotation_path)
        path = self.annotation_path
        if not isinstance(data, dict) or not isinstance(data.get("videos"), list):
            raise DatasetError(f"{path} has no 'videos' list; expected a YouTube-VIS annotation file")
        videos = data["videos"]
        if not videos:
            raise DatasetError(f"{path} lists no videos")
        for video in videos:
            _require(video, ("id", "file_names", "height", "width"), "videos", path)
            if not isinstance(video["file_names"], list) or not video["file_names"]:
                raise DatasetError(f"{path}: video {video['id']} has no 'file_names'; expected a list of frame files")
        annotations = data.get("annotations")
        self.has_masks = annotations is not None
        if annotations is not None and not isinstance(annotations, list):
            raise DatasetError(f"{path}: 'annotations' is a {type(annotations).__name__}; expected a list")
        frames_of = {video["id"]: len(video["file_names"]) for video in videos}
        self._instances: dict[Any, list[dict[str, Any]]] = {video["id"]: [] for video in videos}
        for annotation in annotations or []:
            _require(annotation, ("video_id", "category_id", "segmentations"), "annotations", path)
            video_id = annotation["video_id"]
            if video_id not in frames_of:
                raise DatasetError(f"{path}: an annotation names video_id {video_id!r}, which 'videos' does not list")
            if not isinstance(annotation["segmentations"], list) or len(annotation["segmentations"]) != frames_of[video_id]:
                raise DatasetError(
                    f"{path}: an annotation of video {video_id} has {len(annotation['segmentations'])} segmentations; "
                    f"expected one per frame ({frames_of[video_id]}, null where absent)"
                )
            if not annotation.get("iscrowd", 0):
                self._instances[video_id].append(annotation)
        self._videos = sorted(videos, key=lambda video: natural_key(str(video["id"])))
        # Clip id: the frames' folder ("0043f083b5"), unique per video in every release.
        self._clip_names = [os.path.dirname(video["file_names"][0]) or str(video["id"]) for video in self._videos]
        if len(set(self._clip_names)) != len(self._clip_names):
            self._clip_names = [str(video["id"]) for video in self._videos]
        self._frames = [(position, frame) for position, video in enumerate(self._videos) for frame in range(len(video["file_names"]))]
        self._ids = [
            f"{self._clip_names[position]}/{Path(self._videos[position]['file_names'][frame]).stem}" for position, frame in self._frames
        ]
        self._max_instances = max([1, *(len(instances) for instances in self._instances.values())])

    @property
    def max_instances(self) -> int:
        return self._max_instances

    def clip_ids(self) -> list[str | None]:
        return [self._clip_names[position] for position, _ in self._frames]

    def frame_indices(self) -> list[int]:
        return [frame for _, frame in self._frames]

    def _region(self, segmentation: Any, height: int, width: int, video: Any) -> np.ndarray:
        """(H, W) bool pixels of one frame's segmentation (RLE or polygons)."""
        where = f"{self.annotation_path}: a segmentation of video {video}"
        try:
            if isinstance(segmentation, list):  # polygons [[x0, y0, x1, y1, ...], ...]
                rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
            elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
                if list(segmentation["size"]) != [height, width]:
                    raise DatasetError(f"{where} is an RLE of size {segmentation['size']}; expected the video's [{height}, {width}]")
                counts = segmentation["counts"]
                if isinstance(counts, list):  # uncompressed RLE
                    rle = mask_utils.frPyObjects(segmentation, height, width)
                else:
                    rle = {"size": segmentation["size"], "counts": counts.encode() if isinstance(counts, str) else counts}
            else:
                raise DatasetError(f"{where} is {str(segmentation)[:60]!r}; expected an RLE ({{size, counts}}), polygons or null")
            region = mask_utils.decode(rle)
        except DatasetError:
            raise
        except (ValueError, TypeError, IndexError, KeyError) as error:
            raise DatasetError(f"{where} is unreadable ({one_line(error)}); expected an RLE or polygons") from None
        return region.astype(bool).reshape(height, width)

    def load(self, index: int) -> Sample:
        position, frame = self._frames[index]
        video = self._videos[position]
        height, width = int(video["height"]), int(video["width"])
        image_path = self.frame_directory / video["file_names"][frame]
        image = read_image(image_path)  # (H, W, 3)
        if image.shape[:2] != (height, width):
            raise DatasetError(
                f"frame {image_path} is {image.shape[1]}x{image.shape[0]} but {self.annotation_path} says {width}x{height}; expected the annotated size"
            )
        sample = Sample(sample_id=self._ids[index], image=image, clip_id=self._clip_names[position], frame_index=frame)
        if not self.has_masks:
            return sample
        instances = self._instances[video["id"]]
        mask = np.zeros((height, width), dtype=MASK_DTYPE)  # (H, W)
        covered = np.zeros((height, width), dtype=bool)
        overlapped = np.zeros((height, width), dtype=bool)
        boxes = np.full((len(instances), 4), np.nan, dtype=np.float32)  # (K, 4)
        given_boxes = True
        for instance_id, annotation in enumerate(instances, start=1):
            segmentation = annotation["segmentations"][frame]
            if segmentation is None:  # not in this frame: no pixels, no box
                continue
            region = self._region(segmentation, height, width, video["id"])
            overlapped |= covered & region
            covered |= region
            mask[region] = instance_id
            bboxes = annotation.get("bboxes")
            box = bboxes[frame] if isinstance(bboxes, list) and len(bboxes) > frame else None
            if box is not None and len(box) == 4:
                x, y, w, h = (float(value) for value in box)
                boxes[instance_id - 1] = (x, y, x + w, y + h)
            else:
                given_boxes = False
        mask[overlapped] = IGNORE_LABEL
        if not given_boxes:
            boxes = boxes_from_mask(mask, len(instances))
        sample.instance_mask = mask
        sample.instance_classes = [int(annotation["category_id"]) for annotation in instances]
        sample.instance_boxes = boxes
        return sample
