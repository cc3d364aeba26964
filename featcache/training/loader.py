"""Mini-batches straight from a store: the whole split in RAM/GPU memory when it fits, else streamed chunks.

Each sample contributes one random cached view per draw (augmentation from the cache). Random
per-sample reads from zarr are slow (milliseconds per chunk call, see benchmarks/RESULTS.md), so the
loader never reads single samples from disk: it either holds every array in memory (GPU memory on CUDA
when it fits, pinned host memory otherwise) or streams whole write units in shuffled order through a
buffer that a background thread refills.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import psutil
import torch

from featcache.errors import StoreError
from featcache.quantize.decoder import pixel_targets
from featcache.store import FeatureStore

#: Fraction of free memory (host RAM, or GPU memory on CUDA) the in-memory mode may take.
MEMORY_FRACTION = 0.5


@dataclass
class Batch:
    """One training batch on the target device."""

    features: torch.Tensor  # (B, h, w, C) float32, the requested feature kind
    images: torch.Tensor | None  # (B, 3, I, I) float32 in [-1, 1]
    tokens: torch.Tensor | None  # (B, h, w) int64 token indices of the requested token set
    sample_indices: np.ndarray  # (B,) store sample indices
    view_indices: np.ndarray  # (B,) view of each sample


class CachedBatches:
    """Endless random batches of (features, images) from a complete store.

    mode ``auto`` holds the arrays in memory when they take at most MEMORY_FRACTION of the free memory of
    the device they would live on, else streams ``buffer_units`` write units at a time. Memory mode
    repeats exactly for a seed (and resumes exactly from ``state_dict``); stream mode depends on
    when the background thread delivers units, so its batch order is not repeatable.
    """

    def __init__(
        self,
        store: FeatureStore,
        batch_size: int,
        device: torch.device,
        feature_kind: str | None = None,
        with_images: bool = False,
        seed: int = 0,
        mode: Literal["auto", "memory", "stream", "online"] = "auto",
        buffer_units: int = 8,
        token_name: str | None = None,
    ) -> None:
        store.require_complete()
        if token_name:
            store.require_token_set(token_name)
        self.token_name = token_name or None
        if with_images and not store.has_images:
            raise StoreError(f"store {store.path} has no cached images, needed for pixel reconstruction (target: pixels)")
        self.store = store
        self.batch_size = batch_size
        self.device = device
        self.feature_kind = None if feature_kind in (None, store.stored_kind) else feature_kind
        if self.feature_kind is not None and self.feature_kind not in store.feature_kinds:
            raise StoreError(
                f"store {store.path} cannot give feature kind {feature_kind!r}; available: {', '.join(store.feature_kinds)}"
            )
        self.with_images = with_images
        self.rng = np.random.default_rng(seed)
        # The streaming thread draws unit order from its own generator, never from the batch sampler's.
        self._unit_rng = np.random.default_rng([seed, 1])
        self.valid = store.valid_indices()
        if len(self.valid) == 0:
            raise StoreError(f"store {store.path} has no written samples")
        self.num_views = store.layout.num_views
        self._order = np.empty(0, dtype=np.int64)
        self.mode = self._choose_mode(mode)
        self.wait_seconds = 0.0
        if self.mode == "memory":
            self._load_into_memory()
        elif self.mode == "stream":
            self._start_streaming(buffer_units)

    # --------------------------------------------------------------- mode choice
    def bytes_needed(self) -> int:
        layout = self.store.layout
        height, width = layout.grid
        per_sample = layout.num_views * height * width * layout.channels * 2
        if self.with_images:
            per_sample += layout.num_views * layout.image_size**2 * 3
        if self.token_name:
            per_sample += layout.num_views * height * width * 2
        return per_sample * layout.num_samples

    def _choose_mode(self, mode: str) -> str:
        """``online`` (set by OnlineBatches) loads nothing: features are computed per batch."""
        if mode != "auto":
            return mode
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
        else:
            free = psutil.virtual_memory().available
        return "memory" if self.bytes_needed() <= MEMORY_FRACTION * free else "stream"

    # --------------------------------------------------------------- memory mode
    def _load_into_memory(self) -> None:
        features = torch.from_numpy(self.store.load_features())  # (N, V, h, w, C) float16
        images = torch.from_numpy(self.store.images(slice(0, len(self.store)), view=None)) if self.with_images else None
        tokens = torch.from_numpy(self.store.tokens(self.token_name, slice(0, len(self.store)), view=None).astype("int64")) if self.token_name else None
        if self.device.type == "cuda":
            features = features.to(self.device)
            images = images.to(self.device) if images is not None else None
            tokens = tokens.to(self.device) if tokens is not None else None
        self._features = features
        self._images = images
        self._tokens = tokens

    def draw(self) -> tuple[np.ndarray, np.ndarray]:
        """The next (sample indices, view indices): epochs of shuffled valid samples, a random view each."""
        if len(self._order) < self.batch_size:  # new epoch: a fresh permutation of the valid samples
            self._order = np.concatenate([self._order, self.rng.permutation(self.valid)])
        samples, self._order = self._order[: self.batch_size], self._order[self.batch_size :]
        views = self.rng.integers(0, self.num_views, size=len(samples))
        return samples, views

    def _next_memory(self) -> Batch:
        samples, views = self.draw()
        sample_index = torch.from_numpy(samples).to(self._features.device)
        view_index = torch.from_numpy(views).to(self._features.device)
        features = self._features[sample_index, view_index]  # (B, h, w, C) float16
        images = self._images[sample_index, view_index] if self._images is not None else None
        tokens = self._tokens[sample_index, view_index] if self._tokens is not None else None
        return self.finish(features, images, samples, views, tokens)

    # --------------------------------------------------------------- stream mode
    def _start_streaming(self, buffer_units: int) -> None:
        self._buffer: deque[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]] = deque()
        self._buffer_units = max(1, buffer_units)
        self._lock = threading.Condition()
        self._draws_since_refill = 0
        self._stop = False
        self._error: BaseException | None = None
        self._unit_order: deque[int] = deque()
        self._thread = threading.Thread(target=self._prefetch, name="stream-loader", daemon=True)
        self._thread.start()

    def _read_unit(self, unit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        start, stop = self.store.layout.unit_range(unit)
        valid = self.valid[(self.valid >= start) & (self.valid < stop)]
        features = self.store.features(slice(start, stop), view=None)[valid - start]  # (n, V, h, w, C)
        images = self.store.images(slice(start, stop), view=None)[valid - start] if self.with_images else None
        tokens = self.store.tokens(self.token_name, slice(start, stop), view=None)[valid - start] if self.token_name else None
        return valid, features, images, tokens

    def _prefetch(self) -> None:
        """Keep the buffer full; a read error (a damaged chunk) is handed to the consumer instead of hanging it."""
        try:
            self._fill()
        except BaseException as error:
            with self._lock:
                self._error = error
                self._lock.notify_all()

    def _fill(self) -> None:
        """Keep the buffer full with whole units drawn in shuffled order."""
        while not self._stop:
            with self._lock:
                while len(self._buffer) >= self._buffer_units and not self._stop:
                    self._lock.wait()
                if self._stop:
                    return
                if not self._unit_order:
                    self._unit_order.extend(int(u) for u in self._unit_rng.permutation(self.store.layout.num_units))
                unit = self._unit_order.popleft()
            block = self._read_unit(unit)
            with self._lock:
                if len(block[0]):
                    self._buffer.append(block)
                self._lock.notify_all()

    def _next_stream(self) -> Batch:
        with self._lock:
            while not self._buffer and self._error is None:
                self._lock.wait()
            if self._error is not None:
                raise self._error
            blocks = list(self._buffer)
            # Retire the oldest unit once the buffer has given out about as many draws as it holds samples.
            held = sum(len(block[0]) for block in blocks)
            self._draws_since_refill += self.batch_size
            if self._draws_since_refill >= held / len(blocks):
                self._buffer.popleft()
                self._draws_since_refill = 0
                self._lock.notify_all()
        sizes = np.array([len(block[0]) for block in blocks])
        choice = self.rng.integers(0, sizes.sum(), size=self.batch_size)  # positions in the concatenated buffer
        block_of = np.searchsorted(np.cumsum(sizes), choice, side="right")
        row_of = choice - np.concatenate([[0], np.cumsum(sizes)[:-1]])[block_of]
        views = self.rng.integers(0, self.num_views, size=self.batch_size)
        features = np.stack([blocks[b][1][r, v] for b, r, v in zip(block_of, row_of, views)])
        images = np.stack([blocks[b][2][r, v] for b, r, v in zip(block_of, row_of, views)]) if self.with_images else None  # type: ignore[index]
        tokens = np.stack([blocks[b][3][r, v] for b, r, v in zip(block_of, row_of, views)]).astype(np.int64) if self.token_name else None  # type: ignore[index]
        samples = np.array([blocks[b][0][r] for b, r in zip(block_of, row_of)])
        return self.finish(
            self._to_device(features),
            self._to_device(images) if images is not None else None,
            samples,
            views,
            self._to_device(tokens) if tokens is not None else None,
        )

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":
            tensor = tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    # --------------------------------------------------------------- shared
    def finish(
        self, features: torch.Tensor, images: torch.Tensor | None, samples: np.ndarray, views: np.ndarray, tokens: torch.Tensor | None = None
    ) -> Batch:
        features = features.to(self.device, non_blocking=True).float()
        if self.feature_kind is not None:
            features = self.store.derive(features, self.feature_kind)
        pixels = pixel_targets(images.to(self.device, non_blocking=True)) if images is not None else None
        tokens = tokens.to(self.device, non_blocking=True).long() if tokens is not None else None
        return Batch(features=features, images=pixels, tokens=tokens, sample_indices=samples, view_indices=views)

    def _next(self) -> Batch:
        return self._next_memory() if self.mode == "memory" else self._next_stream()

    def next(self) -> Batch:
        """The next batch; time spent waiting for data accumulates in ``wait_seconds``."""
        started = time.perf_counter()
        batch = self._next()
        self.wait_seconds += time.perf_counter() - started
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Sampler state for exact resumption (memory mode)."""
        return {"rng": self.rng.bit_generator.state, "mode": self.mode, "order": self._order.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self._order = np.asarray(state["order"], dtype=np.int64)

    def close(self) -> None:
        if self.mode == "stream":
            with self._lock:
                self._stop = True
                self._lock.notify_all()
            self._thread.join(timeout=5)
