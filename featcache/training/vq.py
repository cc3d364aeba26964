"""Quantizer pre-training from cached features (or online, as the baseline): the mechanics behind `featcache train-vq`.

Adam with warm-up + cosine, gradient clipping, bf16 autocast on CUDA, seeds, periodic checkpoints and
exact resume (weights, optimizer, random generators and the batch sampler are all saved), a metrics
log with code usage, and a PNG of image reconstructions at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from featcache import records
from featcache.config import to_dict
from featcache.errors import ConfigError, StoreError
from featcache.quantize import MSFQuantizerConfig, VQModel, usage_statistics_from_counts
from featcache.runtime import resolve_device, seed_everything
from featcache.store import FeatureStore
from featcache.training.checkpoint import check_resume_inputs, prepare_run_folder, run_lock
from featcache.training.config import VQTrainConfig
from featcache.training.loader import Batch, CachedBatches
from featcache.training.loop import TrainResult, restore, train_loop
from featcache.training.online import OnlineBatches
from featcache.training.runs import build_vq_model, resolve_feature_kind, store_summary_for_run


def train_vq(
    store_path: str | Path,
    config: VQTrainConfig,
    out: str | Path,
    device: str = "auto",
    resume: bool = False,
    online: bool = False,
    show_progress: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Train the quantizer on ``store_path``'s features; ``stop_after`` ends early (tests, benchmarks)."""
    with run_lock(Path(out)):  # one writer per run folder
        run_dir = Path(out)
        prepare_run_folder(run_dir, config, resume)
        target_device = resolve_device(device)
        store = FeatureStore(store_path)
        store.require_complete()
        feature_kind = resolve_feature_kind(store, config.feature_kind)
        if config.decoder.architecture == "none":
            raise ConfigError("train-vq needs a decoder; decoder.architecture 'none' is for imported quantizers that only tokenize")
        with_images = config.decoder.target == "pixels"
        if with_images and not store.has_images:
            raise StoreError(f"store {store.path} has no cached images, needed for pixel reconstruction (decoder.target: pixels)")
        if with_images and store.layout.image_size != config.decoder.image_size:
            raise ConfigError(
                f"decoder.image_size {config.decoder.image_size} differs from the cached images' {store.layout.image_size} px in {store.path}"
            )
        train = config.train
        seed_everything(train.seed)
        model = build_vq_model(config, store.layout.channels, store.layout.grid).to(target_device)
        optimizer = torch.optim.Adam(model.parameters(), lr=train.learning_rate)
        loader_class = OnlineBatches if online else CachedBatches
        loader_kwargs: dict[str, Any] = {} if online else {"mode": train.loader}
        batches = loader_class(
            store, train.batch_size, target_device, feature_kind, with_images, seed=train.resolved_data_seed, **loader_kwargs
        )
        run_info = {
            "stage": "vq",
            "quantizer": config.quantizer.kind,  # vvo | msf (featcache.quantize.registry)
            **records.provenance(),
            "store": store_summary_for_run(store, feature_kind),
            "online": online,
            "device": str(target_device),
        }
        if resume:
            check_resume_inputs(run_dir, run_info)  # before any weights load: another store's grid would not even fit
        start_step = restore(run_dir, model, optimizer, batches) if resume else 0
        end_step = train.steps if stop_after is None else min(train.steps, start_step + stop_after)
        usage = torch.zeros(config.quantizer.codebook_size, dtype=torch.long, device=target_device)
        # MSF: ``usage`` counts the shared codebook at level 0, ``specified_usage`` level 0's specified codebook.
        specified_sizes = config.quantizer.specified_sizes() if isinstance(config.quantizer, MSFQuantizerConfig) and config.quantizer.specified_codebooks else []
        specified_usage = torch.zeros(specified_sizes[0] if specified_sizes else 0, dtype=torch.long, device=target_device)
        schedule: dict[str, float] = {}

        def step_loss(batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            targets = batch.images if with_images else batch.features
            output = model(batch.features, targets, progress=step / train.steps)
            indices = output.indices if output.indices.ndim == 3 else output.indices[:, 0]  # (B, h, w) shared / only
            usage.add_(torch.bincount(indices.flatten(), minlength=config.quantizer.codebook_size))
            if specified_sizes:
                specified_usage.add_(torch.bincount(output.indices[:, 1].flatten(), minlength=specified_sizes[0]))
            schedule.update(gumbel_scale=output.quantizer.gumbel_scale, alpha=output.quantizer.alpha)
            if output.reconstruction_per_scale is not None:  # logged per level, unweighted (their sum is in losses)
                levels = {f"reconstruction_scale{i}": value.detach() for i, value in enumerate(output.reconstruction_per_scale)}
                return output.losses["total"], {**output.losses, **levels}
            return output.losses["total"], output.losses

        def window_metrics() -> dict[str, Any]:
            """Code usage since the last log row (then reset) and the schedules' current values."""
            statistics = usage_statistics_from_counts(usage)
            usage.zero_()
            if specified_sizes:
                statistics.update({f"specified_{key}": value for key, value in usage_statistics_from_counts(specified_usage).items()})
                specified_usage.zero_()
            return {**statistics, **schedule}

        try:
            loop = train_loop(
                model=model,
                optimizer=optimizer,
                batches=batches,
                settings=train,
                device=target_device,
                run_dir=run_dir,
                config=to_dict(config),
                run_info=run_info,
                step_loss=step_loss,
                start_step=start_step,
                end_step=end_step,
                description="train-vq" + (" (online)" if online else ""),
                window_metrics=window_metrics,
                show_progress=show_progress,
            )
        finally:
            batches.close()
        if end_step == train.steps and with_images:
            write_reconstructions(model, store, feature_kind, run_dir / "reconstructions.png", target_device)
        return TrainResult.from_loop(run_dir, loop, train.batch_size)


@torch.no_grad()
def write_reconstructions(model: VQModel, store: FeatureStore, feature_kind: str, path: Path, device: torch.device, count: int = 8) -> Path:
    """A PNG grid: cached view images (top row), reconstructions through the codes alone (bottom row)."""
    model.eval()
    samples = store.valid_indices()[:count]
    features = torch.from_numpy(store.features(samples, view=0, kind=feature_kind).astype(np.float32)).to(device)
    indices, _ = model.tokenize(features)
    reconstruction = model.decode_indices(indices)  # (B, 3, S, S) in [-1, 1]
    pixels = ((reconstruction.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()  # (B, S, S, 3)
    originals = store.images(samples, view=0)
    grid = np.concatenate([np.concatenate(list(originals), axis=1), np.concatenate(list(pixels), axis=1)], axis=0)
    Image.fromarray(grid).save(path)
    model.train()
    return path
