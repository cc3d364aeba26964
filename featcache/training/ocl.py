"""OCL training from cached features and tokens (or online, as the baseline): the mechanics behind `featcache train-ocl`.

Only the projection, the aggregator (Slot Attention / BO-QSA) and the decoder train; VFM features and
VQ tokens come from the store (or, with online, are recomputed from the images every step as public
code does). One config object (OCLTrainConfig) is saved with every checkpoint and is what eval rebuilds the model from."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch

from featcache import records
from featcache.config import to_dict
from featcache.metrics.protocols import evaluate_clip_masks, evaluate_masks, get_protocol
from featcache.ocl import OCLModel, OCLOutput
from featcache.ocl.temporal import TemporalOCLModel, TemporalOutput
from featcache.runtime import noise_generator, resolve_device, seed_everything
from featcache.store import FeatureStore
from featcache.training.checkpoint import check_resume_inputs, prepare_run_folder, run_lock
from featcache.training.clips import ClipBatch, ClipBatches, clip_predictor, evaluation_clips
from featcache.training.config import OCLTrainConfig
from featcache.training.loader import Batch, CachedBatches
from featcache.training.loop import TrainResult, restore, train_loop
from featcache.training.online import OnlineBatches
from featcache.training.runs import build_ocl_model, evaluation_generator, resolve_feature_kind, store_summary_for_run


def open_training_store(store_path: str | Path, config: OCLTrainConfig) -> tuple[FeatureStore, str]:
    """The complete training store and the feature kind the run reads from it."""
    store = FeatureStore(store_path)
    store.require_complete()
    return store, resolve_feature_kind(store, config.feature_kind)


def build_seeded_model(config: OCLTrainConfig, store: FeatureStore, device: torch.device) -> OCLModel | TemporalOCLModel:
    """The run's freshly initialised model: torch's generators are seeded with ``config.train.seed`` first."""
    seed_everything(config.train.seed)
    return build_ocl_model(config, store).to(device)


def ocl_batches(store: FeatureStore, config: OCLTrainConfig, device: torch.device, feature_kind: str, online: bool) -> CachedBatches | ClipBatches:
    """The run's batch stream (cached, or recomputed from the images with ``online``), seeded with the data seed;
    clip windows for temporal models."""
    train = config.train
    loader_kwargs: dict[str, Any] = {"token_name": config.tokens or None, "seed": train.resolved_data_seed}
    if config.model.temporal.enabled:
        if online:
            from featcache.training.online import OnlineClipBatches

            return OnlineClipBatches(store, train.batch_size, device, config.model.temporal, config.model.aggregator.num_slots, feature_kind, **loader_kwargs)
        return ClipBatches(store, train.batch_size, device, config.model.temporal, config.model.aggregator.num_slots, feature_kind,
                           mode=train.loader, **loader_kwargs)
    if online:
        return OnlineBatches(store, train.batch_size, device, feature_kind, False, **loader_kwargs)
    return CachedBatches(store, train.batch_size, device, feature_kind, False, mode=train.loader, **loader_kwargs)


def ocl_loss_terms(output: OCLOutput | TemporalOutput) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss an OCL step minimises and the terms it logs (``loss_<name>`` columns of metrics.jsonl)."""
    return output.loss, {**output.losses, "total": output.loss}


def ocl_validator(
    model: OCLModel | TemporalOCLModel,
    validation: FeatureStore,
    config: OCLTrainConfig,
    feature_kind: str,
    device: torch.device,
) -> Callable[[], dict[str, Any]] | None:
    """VVO-protocol mask metrics of ``model`` on the first validation images' centre view; None without masks."""
    if not validation.has_masks:
        return None
    if isinstance(model, TemporalOCLModel):  # whole clips, recurrently (about validation_images frames)
        clips = evaluation_clips(validation, config.validation_images)

        def validate_clips() -> dict[str, Any]:
            predict = clip_predictor(model, validation, "center", evaluation_generator(device))
            metrics, _ = evaluate_clip_masks(predict, validation, clips, get_protocol("vvo"), feature_kind, config.tokens or None, device)
            return {k: v for k, v in metrics.summary().items() if k in ("ari", "fg_ari", "mbo", "miou", "clip_ari")}

        return validate_clips
    indices = validation.valid_indices()[: config.validation_images]

    def validate() -> dict[str, Any]:
        predict = partial(model.predict_masks, generator=evaluation_generator(device))  # the same noise at every step
        metrics, _ = evaluate_masks(predict, validation, indices, get_protocol("vvo"), feature_kind, config.tokens or None, device)
        return {k: v for k, v in metrics.summary().items() if k in ("ari", "fg_ari", "mbo", "miou")}

    return validate


def ocl_run_info(store: FeatureStore, config: OCLTrainConfig, feature_kind: str, online: bool, device: torch.device) -> dict[str, Any]:
    """Provenance written to run.json: the store and token set trained on, the device and library versions."""
    return {
        "stage": "ocl",
        **records.provenance(),
        "store": store_summary_for_run(store, feature_kind),
        "tokens": store.token_attributes(config.tokens) if config.tokens else None,
        "online": online,
        "device": str(device),
    }


def train_ocl(
    store_path: str | Path,
    config: OCLTrainConfig,
    out: str | Path,
    device: str = "auto",
    resume: bool = False,
    online: bool = False,
    validation_store: str | Path | None = None,
    show_progress: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Train an OCL model on ``store_path``; ``stop_after`` ends early (tests, benchmarks).

    Model noise (slot noise, diffusion timesteps and noise) comes from the run's own generator
    (``featcache.runtime.noise_generator(seed)``), so a fused-seed run (featcache.training.fused) equals this one.
    """
    with run_lock(Path(out)):  # one writer per run folder
        run_dir = Path(out)
        prepare_run_folder(run_dir, config, resume)
        target_device = resolve_device(device)
        store, feature_kind = open_training_store(store_path, config)
        model = build_seeded_model(config, store, target_device)
        teacher = None
        if config.distill.enabled:  # SPOT self-training: the frozen teacher, loaded once (featcache.training.distill)
            from featcache.training.distill import init_student_from_teacher, load_teacher

            teacher = load_teacher(config, store, feature_kind, target_device)
            if config.distill.init_from_teacher and not resume:
                init_student_from_teacher(model, teacher)
        generator = noise_generator(config.train.seed, target_device)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.train.learning_rate)
        batches = ocl_batches(store, config, target_device, feature_kind, online)
        run_info = ocl_run_info(store, config, feature_kind, online, target_device)
        if teacher is not None:
            run_info["teacher"] = teacher.info
        if resume:
            check_resume_inputs(run_dir, run_info)  # before any weights load: another store's grid would not even fit
        start_step = restore(run_dir, model, optimizer, batches, generator) if resume else 0
        end_step = config.train.steps if stop_after is None else min(config.train.steps, start_step + stop_after)

        def step_loss(batch: Batch | ClipBatch, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            if isinstance(batch, ClipBatch):  # clip windows (B, T, ...) for the temporal model
                noise = model.draw_noise(batch.features.shape[0], batch.features.shape[1], generator, batch.features.device)
                return ocl_loss_terms(model(batch.features, batch.tokens, noise, batch.boxes))
            noise = model.draw_noise(batch.features.shape[0], generator, batch.features.device)
            output = model(batch.features, batch.tokens, noise)
            if teacher is not None:
                from featcache.training.distill import distilled_loss_terms

                return distilled_loss_terms(output, teacher, config.distill.weight, batch.features, batch.tokens, generator)
            return ocl_loss_terms(output)

        validation = FeatureStore(validation_store) if validation_store else store
        try:
            loop = train_loop(
                model=model,
                optimizer=optimizer,
                batches=batches,
                settings=config.train,
                device=target_device,
                run_dir=run_dir,
                config=to_dict(config),
                run_info=run_info,
                step_loss=step_loss,
                start_step=start_step,
                end_step=end_step,
                description="train-ocl" + (" (online)" if online else ""),
                validate=ocl_validator(model, validation, config, feature_kind, target_device),
                validate_every=config.validate_every,
                show_progress=show_progress,
                noise_generator=generator,
            )
        finally:
            batches.close()
        return TrainResult.from_loop(run_dir, loop, config.train.batch_size)
