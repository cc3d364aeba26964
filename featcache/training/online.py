"""The online baseline: batches computed the way public OCL code does it, running the frozen VFM every step.

It draws exactly the same (sample, view) sequence as :class:`CachedBatches` in memory mode for the same
seed, then decodes those images from the original dataset, cuts the view, and runs the VFM. It is the
reference for the cache's speed-up and correctness: for the same seed the first steps' losses of an online
and a cached run match within float16 storage tolerance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from featcache.datasets import open_dataset
from featcache.encoders import create_encoder
from featcache.errors import StoreError
from featcache.extraction.config import ExtractConfig
from featcache.extraction.units import FeatureComputer, prepare_sample
from featcache.ocl.config import TemporalConfig
from featcache.quantize.decoder import pixel_targets
from featcache.store import FeatureStore
from featcache.training.clips import ClipBatches
from featcache.training.loader import Batch, CachedBatches
from featcache.views import default_views


def encoder_for_store(store: FeatureStore, device: torch.device) -> FeatureComputer:
    """Rebuild the store's frozen VFM from its provenance; refuse weights that differ from the store's."""
    config = ExtractConfig(**store.attributes["config"])
    encoder = create_encoder(config.vfm, weights=config.weights, resolution=config.resolution or None, seed=config.weight_seed)
    if encoder.weights.sha256 != store.attributes["weights"]["sha256"]:
        raise StoreError(
            f"the {config.vfm} weights loaded now (sha256 {encoder.weights.sha256[:12]}) are not those of store {store.path} "
            f"({store.attributes['weights']['sha256'][:12]})"
        )
    return FeatureComputer(encoder, device, config.batch_size)


class OnlineBatches(CachedBatches):
    """Same sampling as CachedBatches (memory mode), but features computed from the images at every step."""

    def __init__(self, store: FeatureStore, batch_size: int, device: torch.device, feature_kind: str | None = None,
                 with_images: bool = False, seed: int = 0, token_name: str | None = None) -> None:
        super().__init__(store, batch_size, device, feature_kind, with_images, seed, mode="online", token_name=token_name)
        self.quantizer = self._token_model(device) if token_name else None
        attributes = store.attributes
        self.dataset = open_dataset(attributes["dataset"]["source"], attributes["dataset"]["split"])
        self.extract_config = ExtractConfig(**attributes["config"])
        self.views = default_views(self.extract_config.crops)
        self.computer = encoder_for_store(store, device)
        self.sample_ids = self.dataset.sample_ids
        token_kind = store.token_attributes(token_name)["feature_kind"] if token_name else None
        #: Feature kind the quantizer was trained on (None = the stored kind).
        self.token_feature_kind = None if token_kind in (None, store.stored_kind) else token_kind

    def _token_model(self, device: torch.device) -> torch.nn.Module:
        """The frozen VQ model that made the store's token set, re-run online like public code does."""
        from featcache.training.runs import load_vq_run

        attributes = self.store.token_attributes(self.token_name)  # type: ignore[arg-type]
        model, _, _, sha256 = load_vq_run(Path(attributes["vq"]["run"]), device)
        if sha256 != attributes["vq"]["weights_sha256"]:
            raise StoreError(f"VQ run {attributes['vq']['run']} changed since token set {self.token_name!r} was written")
        return model

    def _next(self) -> Batch:
        samples, views = self.draw()
        prepared = [
            prepare_sample(
                self.dataset, int(index), self.sample_ids[int(index)], self.views, self.extract_config,
                self.computer.encoder.resolution, skip_bad=False, only_view=int(view),
            )
            for index, view in zip(samples, views)
        ]
        model_inputs = np.concatenate([p.model_inputs for p in prepared])  # type: ignore[misc]  (B, R, R, 3)
        # (B, h, w, C) float32, the stored kind; cloned out of inference mode so autograd may save it.
        stored = self.computer.compute(model_inputs).clone()
        features = stored if self.feature_kind is None else self.store.derive(stored, self.feature_kind)
        images = None
        if self.with_images:
            images = pixel_targets(torch.from_numpy(np.concatenate([p.images for p in prepared])).to(self.device))  # type: ignore[misc]
        tokens = None
        if self.quantizer is not None:
            token_features = features if self.token_feature_kind is None else self.store.derive(stored, self.token_feature_kind)
            tokens, _ = self.quantizer.tokenize(token_features)
        return Batch(features=features, images=images, tokens=tokens, sample_indices=samples, view_indices=views)


class OnlineClipBatches(ClipBatches):
    """The online baseline for temporal models: the same clip windows as ClipBatches for the seed, each frame's
    features computed by the VFM from the dataset's images at every step (tokens by the frozen VQ); the first
    frame's boxes come from the store's masks, which are the dataset's masks cut to the view."""

    def __init__(self, store: FeatureStore, batch_size: int, device: torch.device, temporal: TemporalConfig, num_slots: int,
                 feature_kind: str | None = None, seed: int = 0, token_name: str | None = None) -> None:
        super().__init__(store, batch_size, device, temporal, num_slots, feature_kind, seed, token_name, mode="online")
        self.online = OnlineBatches(store, batch_size, device, feature_kind, False, seed, token_name)  # the VFM, dataset, VQ

    def _gather(self, frames: np.ndarray, views: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Features (B, T, h, w, C) float32 of the stored kind and tokens (B, T, h, w), computed now."""
        online = self.online
        samples = frames.reshape(-1)
        frame_views = np.repeat([self.views[int(v)] for v in views], frames.shape[1])
        prepared = [
            prepare_sample(online.dataset, int(index), online.sample_ids[int(index)], online.views, online.extract_config,
                           online.computer.encoder.resolution, skip_bad=False, only_view=int(view))
            for index, view in zip(samples, frame_views)
        ]
        model_inputs = np.concatenate([p.model_inputs for p in prepared])  # type: ignore[misc]  (B T, R, R, 3)
        stored = online.computer.compute(model_inputs).clone()  # (B T, h, w, C)
        tokens = None
        if online.quantizer is not None:
            token_features = stored if online.token_feature_kind is None else self.store.derive(stored, online.token_feature_kind)
            tokens, _ = online.quantizer.tokenize(token_features)
            tokens = tokens.reshape(*frames.shape, *tokens.shape[1:])
        return stored.reshape(*frames.shape, *stored.shape[1:]), tokens
