"""`featcache train-vq`: pre-train the VVO quantizer from cached features (or online, as the baseline).

Adam with warm-up + cosine, gradient clipping, bf16 autocast on CUDA, seeds, periodic checkpoints and
exact ``--resume`` (weights, optimizer, random generators and the batch sampler are all saved), a metrics
log with code usage, and a PNG of image reconstructions at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from featcache.config import from_dict, to_dict
from featcache.errors import ConfigError, FeatcacheError, StoreError
from featcache.extraction.run import library_versions
from featcache.quantize import DecoderConfig, QuantizerConfig, VQModel, usage_statistics_from_counts
from featcache.runtime import resolve_device, seed_everything
from featcache.store import FeatureStore
from featcache.store.writer import utc_now
from featcache.training.checkpoint import load_weights, prepare_run_folder, read_run
from featcache.training.loader import Batch, CachedBatches
from featcache.training.loop import LoopSettings, TrainResult, restore, train_loop
from featcache.training.online import OnlineBatches


@dataclass(frozen=True)
class VQTrainConfig:
    """Everything a quantizer pre-training run depends on (saved as config.yaml in the run folder)."""

    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    #: Feature kind read from the store: ``auto`` = final_norm when derivable (VVO), else the stored kind.
    feature_kind: str = "auto"
    steps: int = 30000
    batch_size: int = 64
    learning_rate: float = 2e-3
    warmup_fraction: float = 0.05
    final_lr_ratio: float = 1e-3
    #: Learning-rate schedule: ``cosine`` (linear warm-up from lr/warmup at the first step, cosine to
    #: final_lr_ratio at the last), ``vvo-cosine`` (VVO's CbLinearCosine: warm-up from 0, cosine one step later),
    #: ``constant`` (warm-up from 0, then constant), ``exponential`` (OCLF's DINOSAUR: warm-up from 0, then the
    #: lr halves every lr_half_life steps). See featcache.quantize.schedules.
    lr_schedule: Literal["cosine", "vvo-cosine", "constant", "exponential"] = "cosine"
    #: Warm-up length in steps (OCLF's DINOSAUR: 10000); null = warmup_fraction of the steps.
    warmup_steps: int | None = None
    #: Steps per halving of the lr in the ``exponential`` schedule (OCLF's DINOSAUR: 100000).
    lr_half_life: int = 100000
    grad_clip: float = 1.0
    seed: int = 0
    #: bf16 autocast on CUDA (ignored on CPU).
    amp: bool = True
    log_every: int = 50
    checkpoint_every: int = 1000
    #: ``auto``: arrays in RAM/GPU memory when they fit, else streamed chunks.
    loader: Literal["auto", "memory", "stream"] = "auto"


def resolve_feature_kind(store: FeatureStore, requested: str) -> str:
    if requested == "auto":
        return "final_norm" if "final_norm" in store.feature_kinds else store.stored_kind
    if requested not in store.feature_kinds:
        raise ConfigError(f"feature_kind {requested!r} is not available from store {store.path}; available: auto, {', '.join(store.feature_kinds)}")
    return requested


def store_summary_for_run(store: FeatureStore, feature_kind: str) -> dict[str, Any]:
    """What a later stage needs to check a run against a store."""
    attributes = store.attributes
    return {
        "path": str(store.path),
        "identity": attributes["identity"],
        "encoder": attributes["encoder"]["name"],
        "channels": store.layout.channels,
        "grid": list(store.layout.grid),
        "feature_kind": feature_kind,
        "weights": attributes["weights"],
        "dataset": attributes["dataset"],
    }


def build_vq_model(config: VQTrainConfig, channels: int, grid: tuple[int, int]) -> VQModel:
    return VQModel(config.quantizer, config.decoder, channels, grid)


def load_vq_run(run_dir: Path, device: torch.device) -> tuple[VQModel, VQTrainConfig, dict[str, Any], str]:
    """(frozen model, config, run info, weights sha256) of a finished or checkpointed VQ run."""
    raw_config, info = read_run(run_dir)
    if info.get("stage") != "vq":
        raise FeatcacheError(f"{run_dir} is not a VQ run (stage {info.get('stage')!r}); expected a folder written by train-vq")
    config = from_dict(VQTrainConfig, raw_config)
    model = build_vq_model(config, info["store"]["channels"], tuple(info["store"]["grid"]))  # type: ignore[arg-type]
    sha256 = load_weights(run_dir, model)
    return model.to(device).eval().requires_grad_(False), config, info, sha256


def read_run_config(run_dir: Path, config_class: type, overrides: list[str]) -> Any:
    """The config saved in a run folder (for ``--resume`` without ``--config``), with overrides applied."""
    from featcache.config import merge, parse_overrides

    raw_config, _ = read_run(run_dir)
    config = from_dict(config_class, raw_config)
    return merge(config, parse_overrides(overrides)) if overrides else config


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
    run_dir = Path(out)
    prepare_run_folder(run_dir, to_dict(config), resume)
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
    seed_everything(config.seed)
    model = build_vq_model(config, store.layout.channels, store.layout.grid).to(target_device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    loader_class = OnlineBatches if online else CachedBatches
    loader_kwargs: dict[str, Any] = {} if online else {"mode": config.loader}
    batches = loader_class(store, config.batch_size, target_device, feature_kind, with_images, seed=config.seed, **loader_kwargs)
    start_step = restore(run_dir, model, optimizer, batches) if resume else 0
    end_step = config.steps if stop_after is None else min(config.steps, start_step + stop_after)
    usage = torch.zeros(config.quantizer.codebook_size, dtype=torch.long, device=target_device)
    schedule: dict[str, float] = {}

    def step_loss(batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        targets = batch.images if with_images else batch.features
        output = model(batch.features, targets, progress=step / config.steps)
        usage.add_(torch.bincount(output.indices.flatten(), minlength=config.quantizer.codebook_size))
        schedule.update(gumbel_scale=output.quantizer.gumbel_scale, alpha=output.quantizer.alpha)
        return output.losses["total"], output.losses

    def window_metrics() -> dict[str, Any]:
        """Code usage since the last log row (then reset) and the schedules' current values."""
        statistics = usage_statistics_from_counts(usage)
        usage.zero_()
        return {**statistics, **schedule}

    run_info = {
        "stage": "vq",
        "created": utc_now(),
        "store": store_summary_for_run(store, feature_kind),
        "online": online,
        "device": str(target_device),
        "versions": library_versions(),
    }
    try:
        loop = train_loop(
            model=model,
            optimizer=optimizer,
            batches=batches,
            settings=LoopSettings.from_config(config),
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
    if end_step == config.steps and with_images:
        write_reconstructions(model, store, feature_kind, run_dir / "reconstructions.png", target_device)
    return TrainResult.from_loop(run_dir, loop, config.batch_size)


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


__all__ = ["VQTrainConfig", "build_vq_model", "load_vq_run", "train_vq", "write_reconstructions"]
