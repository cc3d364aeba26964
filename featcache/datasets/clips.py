"""Video datasets exported to frames: ``ROOT/<clip_id>/images/<frame>.png``, optional ``masks/<frame>.png``.

Each clip folder follows the image-folder layout (instance ids stable over a clip's frames, optional
per-clip annotations.json), so decoding is delegated to ``ImageFolder``. The synthetic video generator writes
this layout; MOVi and YouTube-VIS in their own release/converter layouts are read by ``movi:`` and ``ytvis:``.
"""

from __future__ import annotations

import os

from featcache.datasets.base import Dataset, Sample
from featcache.datasets.folder import DEFAULT_MAX_INSTANCES, ImageFolder, dataset_root, natural_key, split_directory
from featcache.errors import DatasetError


class ClipsDataset(Dataset):
    """Every frame of every clip under ``ROOT[/split]``; sample id ``<clip_id>/<frame name>``."""

    kind = "clips"
    is_video = True

    def __init__(self, root: str, split: str | None = None) -> None:
        root_path = dataset_root(root)
        super().__init__(str(root_path), split)
        directory = split_directory(root_path, split)
        with os.scandir(directory) as entries:
            clip_names = sorted(
                (entry.name for entry in entries if entry.is_dir() and not entry.name.startswith(".")),
                key=natural_key,
            )
        if not clip_names:
            raise DatasetError(f"{directory} holds no clip folders; expected ROOT/<clip_id>/images/<frame>.png")
        for name in clip_names:
            if not (directory / name / "images").is_dir():
                raise DatasetError(
                    f"clip folder {directory / name} has no images/ subfolder; "
                    "expected ROOT/<clip_id>/images/<frame>.png"
                )
        self._clip_names = clip_names
        self._folders = [ImageFolder(directory / name) for name in clip_names]
        # One entry per frame: (position of its clip, frame name, frame index within the clip).
        self._frames: list[tuple[int, str, int]] = [
            (clip_position, frame, frame_index)
            for clip_position, folder in enumerate(self._folders)
            for frame_index, frame in enumerate(folder.ids)
        ]
        self._ids = [f"{clip_names[clip_position]}/{frame}" for clip_position, frame, _ in self._frames]
        # Masks are all-or-nothing: a clip without masks/ fails at load time naming the expected file.
        self.has_masks = any(folder.has_masks for folder in self._folders)

    @property
    def max_instances(self) -> int:
        per_clip = [folder.max_instances() for folder in self._folders]
        if any(count is None for count in per_clip):
            return DEFAULT_MAX_INSTANCES
        return max(count for count in per_clip if count is not None)

    def clip_ids(self) -> list[str | None]:
        return [self._clip_names[clip_position] for clip_position, _, _ in self._frames]

    def frame_indices(self) -> list[int]:
        return [frame_index for _, _, frame_index in self._frames]

    def load(self, index: int) -> Sample:
        clip_position, frame, frame_index = self._frames[index]
        image, mask, classes = self._folders[clip_position].read(frame, require_mask=self.has_masks)
        return Sample(
            sample_id=self._ids[index],
            image=image,
            instance_mask=mask,
            instance_classes=classes,
            clip_id=self._clip_names[clip_position],
            frame_index=frame_index,
        )
