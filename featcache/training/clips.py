"""Clip windows from a video store: the batches of temporal OCL models (``model.temporal.enabled``).

A video store holds one sample per frame with its clip id and frame number. A batch is B windows of ``window``
consecutive frames, each from a random clip: features (B, T, h, w, C), tokens (B, T, h, w), and with box
queries the first frame's boxes (B, S, 4) derived from the stored instance masks. Window starts follow VVO's
StridedRandomSlice1 (object_centric_bench/datum/transform.py): a random multiple of ``window`` (non-overlapping
windows; VVO asserts the clip length is a multiple, here a last partial window is never drawn), or any frame
(``window_sampling: any``, VVO's RandomSliceTo1). Clips shorter than ``window`` give windows of the shortest
clip's length. One view per window for all its frames: only views cut alike in every frame (the centre crop
and its flip) are drawn, since a random-crop view's crop is drawn per frame (featcache.views) and would jump.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from featcache.errors import ConfigError, StoreError
from featcache.ocl.config import TemporalConfig
from featcache.ocl.temporal import boxes_from_masks
from featcache.store import FeatureStore
from featcache.training.loader import MEMORY_FRACTION


@dataclass
class ClipBatch:
    """One batch of clip windows on the target device."""

    features: torch.Tensor  # (B, T, h, w, C) float32
    tokens: torch.Tensor | None  # (B, T, h, w) int64
    boxes: torch.Tensor | None  # (B, S, 4) first frame's boxes (query_init bbox)
    sample_indices: np.ndarray  # (B, T) store sample index of each frame
    view_indices: np.ndarray  # (B,) the view of each window
    images: torch.Tensor | None = None  # unused (no pixel targets for clips), kept for the loop's Batch interface


def clip_table(store: FeatureStore) -> dict[str, np.ndarray]:
    """Clip id -> its written samples in frame order; frames that failed to extract are left out."""
    if not store.layout.is_video or store.clip_ids is None or store.frame_indices is None:
        raise StoreError(f"store {store.path} holds images, not clips: a temporal model (model.temporal.enabled) needs a video store")
    return store.clips()


def consistent_views(store: FeatureStore) -> list[int]:
    """Views cut alike in every frame of a clip (``center`` kind: the centre crop and its flip)."""
    views = [index for index, view in enumerate(store.attributes.get("views", [])) if view.get("kind") == "center"]
    if not views:
        raise StoreError(f"store {store.path} has no centre-crop view; clip windows need views cut alike in every frame")
    return views


def window_starts(length: int, window: int, sampling: str) -> np.ndarray:
    """Allowed first frames of a ``window``-frame window in a clip of ``length`` frames (``window <= length``)."""
    if sampling == "strided":
        return np.arange(0, length - window + 1, window)
    return np.arange(0, length - window + 1)


class ClipBatches:
    """Endless random batches of clip windows; repeats exactly for a seed and resumes from ``state_dict``.

    Holds the features (and tokens) of the drawable views in memory when they take at most MEMORY_FRACTION of
    the free memory, else reads each batch's frames from the store (chunk-aware reads: slower, same batches).
    """

    def __init__(
        self,
        store: FeatureStore,
        batch_size: int,
        device: torch.device,
        temporal: TemporalConfig,
        num_slots: int,
        feature_kind: str | None = None,
        seed: int = 0,
        token_name: str | None = None,
        mode: str = "auto",
    ) -> None:
        store.require_complete()
        if token_name:
            store.require_token_set(token_name)
        self.store = store
        self.batch_size = batch_size
        self.device = device
        self.token_name = token_name or None
        self.feature_kind = None if feature_kind in (None, store.stored_kind) else feature_kind
        self.num_slots = num_slots
        self.with_boxes = temporal.query_init == "bbox"
        if self.with_boxes and not store.has_masks:
            raise StoreError(f"store {store.path} has no instance masks: temporal.query_init bbox derives the boxes from them")
        self.clips = clip_table(store)
        self.clip_names = sorted(self.clips)
        if not self.clip_names:
            raise StoreError(f"store {store.path} has no written frames")
        shortest = min(len(frames) for frames in self.clips.values())
        self.window = min(temporal.window, shortest)
        if self.window < temporal.window:
            warnings.warn(f"store {store.path}: the shortest clip has {shortest} frames; training windows are {shortest} frames, not {temporal.window}", stacklevel=2)
        self.starts = {clip: window_starts(len(frames), self.window, temporal.window_sampling) for clip, frames in self.clips.items()}
        self.views = consistent_views(store)
        self.rng = np.random.default_rng(seed)
        self._order = np.empty(0, dtype=np.int64)
        self.wait_seconds = 0.0
        self.mode = self._choose_mode(mode)
        if self.mode == "memory":
            self._features = torch.from_numpy(store.features(slice(0, len(store)), view=self.views))  # (N, V', h, w, C) float16
            self._tokens = torch.from_numpy(store.tokens(self.token_name, slice(0, len(store)), view=self.views).astype(np.int64)) if self.token_name else None

    def _choose_mode(self, mode: str) -> str:
        if mode in ("memory", "stream", "online"):  # online: OnlineClipBatches computes the features per batch
            return mode
        if mode not in ("auto",):
            raise ConfigError(f"config key 'train.loader' {mode!r}: clip windows are read in memory or stream mode")
        import psutil

        layout = self.store.layout
        per_sample = len(self.views) * layout.grid[0] * layout.grid[1] * (layout.channels + (4 if self.token_name else 0)) * 2
        return "memory" if per_sample * layout.num_samples <= MEMORY_FRACTION * psutil.virtual_memory().available else "stream"

    def draw(self) -> tuple[np.ndarray, np.ndarray]:
        """The next (frame indices (B, T), view positions (B,)): epochs of shuffled clips, a random window and a
        random consistent view each."""
        if len(self._order) < self.batch_size:
            self._order = np.concatenate([self._order, self.rng.permutation(len(self.clip_names))])
        chosen, self._order = self._order[: self.batch_size], self._order[self.batch_size :]
        frames = np.empty((len(chosen), self.window), dtype=np.int64)
        for row, position in enumerate(chosen):
            clip = self.clip_names[int(position)]
            start = int(self.rng.choice(self.starts[clip]))
            frames[row] = self.clips[clip][start : start + self.window]
        views = self.rng.integers(0, len(self.views), size=len(chosen))
        return frames, views

    def _gather(self, frames: np.ndarray, views: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Features (B, T, h, w, C) float16 and tokens (B, T, h, w) of each window's view."""
        if self.mode == "memory":
            sample = torch.from_numpy(frames)  # (B, T)
            view = torch.from_numpy(views)[:, None].expand_as(sample)
            return self._features[sample, view], (self._tokens[sample, view] if self._tokens is not None else None)
        features = np.stack([self.store.features(row, view=self.views[int(v)]) for row, v in zip(frames, views)])
        tokens = None
        if self.token_name:
            tokens = torch.from_numpy(np.stack([self.store.tokens(self.token_name, row, view=self.views[int(v)]) for row, v in zip(frames, views)]).astype(np.int64))
        return torch.from_numpy(features), tokens

    def boxes(self, first_frames: np.ndarray, views: np.ndarray) -> torch.Tensor:
        """(B, S, 4) boxes of each window's first frame in its view."""
        masks = np.stack([self.store.masks([int(index)], view=self.views[int(v)])[0] for index, v in zip(first_frames, views)])
        return torch.from_numpy(boxes_from_masks(masks, self.num_slots)).to(self.device)

    def next(self) -> ClipBatch:
        started = time.perf_counter()
        frames, views = self.draw()
        features, tokens = self._gather(frames, views)
        features = features.to(self.device).float()
        if self.feature_kind is not None:
            features = self.store.derive(features, self.feature_kind)
        batch = ClipBatch(
            features=features,
            tokens=tokens.to(self.device) if tokens is not None else None,
            boxes=self.boxes(frames[:, 0], views) if self.with_boxes else None,
            sample_indices=frames,
            view_indices=np.array([self.views[int(v)] for v in views]),
        )
        self.wait_seconds += time.perf_counter() - started
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "mode": self.mode, "order": self._order.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self._order = np.asarray(state["order"], dtype=np.int64)

    def close(self) -> None:
        """Nothing to stop (no background thread)."""


def evaluation_clips(store: FeatureStore, limit: int | None = None) -> dict[str, np.ndarray]:
    """Whole clips to score, in clip order; ``limit``: at most this many frames (whole clips, at least one)."""
    table = clip_table(store)
    chosen: dict[str, np.ndarray] = {}
    frames = 0
    for clip in sorted(table):
        if limit is not None and chosen and frames + len(table[clip]) > limit:
            break
        chosen[clip] = table[clip]
        frames += len(table[clip])
    return chosen


def clip_predictor(model: Any, store: FeatureStore, view: str, generator: torch.Generator | None) -> Any:
    """``predict(features (1, T, ...), tokens, frame indices)`` for ``evaluate_clip_masks``: the model's masks of the
    whole clip, with the first frame's boxes from the store's masks of ``view`` when the model reads boxes."""

    def predict(features: torch.Tensor, tokens: torch.Tensor | None, indices: np.ndarray) -> torch.Tensor:
        boxes = None
        if model.needs_boxes:
            boxes = torch.from_numpy(boxes_from_masks(store.masks([int(indices[0])], view=view), model.num_slots)).to(features.device)
        return model.predict_masks(features, tokens, generator=generator, boxes=boxes)

    return predict
