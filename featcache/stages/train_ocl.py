"""`featcache train-ocl` and `featcache eval`: object-centric training from cached features and tokens.

Only the projection, the aggregator (Slot Attention / BO-QSA) and the decoder train; VFM features and
VQ tokens come from the store (or, with ``--online``, are recomputed from the images every step as public
code does). One config object (``OCLTrainConfig``) is saved with every checkpoint and is what ``eval``
rebuilds the model from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch

from featcache.config import from_dict, to_dict
from featcache.console import error_console
from featcache.errors import ConfigError, FeatcacheError, StoreError
from featcache.extraction.run import library_versions
from featcache.ocl import OCLModel, OCLModelConfig, OCLOutput
from featcache.runtime import noise_generator, resolve_device, seed_everything
from featcache.stages.evaluate import (
    MaskMetrics,
    Protocol,
    evaluate_masks,
    get_protocol,
    print_metrics_table,
    score_masks,
    write_mask_grid,
)
from featcache.stages.train_vq import resolve_feature_kind, store_summary_for_run
from featcache.store import FeatureStore
from featcache.store.writer import utc_now
from featcache.training.checkpoint import load_weights, prepare_run_folder, read_run
from featcache.training.loader import Batch, CachedBatches
from featcache.training.loop import LoopSettings, TrainResult, restore, train_loop
from featcache.training.online import OnlineBatches


@dataclass(frozen=True)
class OCLTrainConfig:
    """Everything an OCL run depends on (saved as config.yaml; ``eval`` rebuilds the model from it)."""

    model: OCLModelConfig = field(default_factory=OCLModelConfig)
    #: Token set of the store (written by `featcache tokenize`) for token / code targets; "" = none.
    tokens: str = ""
    #: ``auto`` = final_norm when derivable (VVO's input), else the stored kind; ``last_block`` for DINOSAUR.
    feature_kind: str = "auto"
    steps: int = 50000
    batch_size: int = 32
    learning_rate: float = 2e-4
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
    #: Seed of the batch order and the view choice; None = ``seed``. Sweeps fix it so seeds vary only the
    #: model's initialisation and noise (and fused seeds can share one batch stream).
    data_seed: int | None = None
    amp: bool = True
    log_every: int = 50
    #: Steps between validations (loss-free mask metrics on the validation store or held-in samples).
    validate_every: int = 1000
    #: Images of the centre view scored at each validation.
    validation_images: int = 64
    checkpoint_every: int = 1000
    loader: Literal["auto", "memory", "stream"] = "auto"


#: Seed of the slot noise drawn at evaluation where the queries are sampled in evaluation too (OCLF, videosaur).
EVALUATION_NOISE_SEED = 0


def data_seed(config: OCLTrainConfig) -> int:
    """The seed of the run's batch order and view choice (``data_seed``, else ``seed``)."""
    return config.seed if config.data_seed is None else config.data_seed


def _codebook(store: FeatureStore, config: OCLTrainConfig) -> torch.Tensor | None:
    if not config.tokens:
        if config.model.decoder.target != "features":
            raise ConfigError(
                f"decoder {config.model.decoder.name} with target {config.model.decoder.target!r} needs a token set: "
                f"set tokens=NAME (token sets of {store.path}: {', '.join(store.token_names()) or 'none'})"
            )
        return None
    return torch.from_numpy(store.codebook(config.tokens))


def build_ocl_model(config: OCLTrainConfig, store: FeatureStore) -> OCLModel:
    return OCLModel(config.model, store.layout.channels, store.layout.grid, _codebook(store, config))


def open_training_store(store_path: str | Path, config: OCLTrainConfig) -> tuple[FeatureStore, str]:
    """The complete training store and the feature kind the run reads from it."""
    store = FeatureStore(store_path)
    store.require_complete()
    return store, resolve_feature_kind(store, config.feature_kind)


def build_seeded_model(config: OCLTrainConfig, store: FeatureStore, device: torch.device) -> OCLModel:
    """The run's freshly initialised model: torch's generators are seeded with ``config.seed`` first."""
    seed_everything(config.seed)
    return build_ocl_model(config, store).to(device)


def ocl_batches(store: FeatureStore, config: OCLTrainConfig, device: torch.device, feature_kind: str, online: bool) -> CachedBatches:
    """The run's batch stream (cached, or recomputed from the images with ``online``), seeded with the data seed."""
    loader_kwargs: dict[str, Any] = {"token_name": config.tokens or None, "seed": data_seed(config)}
    if online:
        return OnlineBatches(store, config.batch_size, device, feature_kind, False, **loader_kwargs)
    return CachedBatches(store, config.batch_size, device, feature_kind, False, mode=config.loader, **loader_kwargs)


def ocl_loss_terms(output: OCLOutput) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss an OCL step minimises and the terms it logs (``loss_<name>`` columns of metrics.jsonl)."""
    return output.loss, {**output.losses, "total": output.loss}


def ocl_validator(
    model: OCLModel,
    validation: FeatureStore,
    config: OCLTrainConfig,
    feature_kind: str,
    device: torch.device,
) -> Callable[[], dict[str, Any]] | None:
    """VVO-protocol mask metrics of ``model`` on the first validation images' centre view; None without masks."""
    if not validation.has_masks:
        return None
    indices = validation.valid_indices()[: config.validation_images]

    def validate() -> dict[str, Any]:
        predict = partial(model.predict_masks, generator=evaluation_generator(device))  # the same noise at every step
        metrics, _ = evaluate_masks(predict, validation, indices, get_protocol("vvo"), feature_kind, config.tokens or None, device)
        return {k: v for k, v in metrics.summary().items() if k in ("ari", "fg_ari", "mbo", "miou")}

    return validate


def evaluation_generator(device: torch.device) -> torch.Generator:
    """The generator of evaluation-time slot noise (``query_noise: always``): seeded alike for every evaluation,
    so scores are reproducible and comparable across runs and steps."""
    return torch.Generator(device=device).manual_seed(EVALUATION_NOISE_SEED)


def ocl_run_info(store: FeatureStore, config: OCLTrainConfig, feature_kind: str, online: bool, device: torch.device) -> dict[str, Any]:
    """Provenance written to run.json: the store and token set trained on, the device and library versions."""
    return {
        "stage": "ocl",
        "created": utc_now(),
        "store": store_summary_for_run(store, feature_kind),
        "tokens": store.token_attributes(config.tokens) if config.tokens else None,
        "online": online,
        "device": str(device),
        "versions": library_versions(),
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
    run_dir = Path(out)
    prepare_run_folder(run_dir, to_dict(config), resume)
    target_device = resolve_device(device)
    store, feature_kind = open_training_store(store_path, config)
    model = build_seeded_model(config, store, target_device)
    generator = noise_generator(config.seed, target_device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    batches = ocl_batches(store, config, target_device, feature_kind, online)
    start_step = restore(run_dir, model, optimizer, batches, generator) if resume else 0
    end_step = config.steps if stop_after is None else min(config.steps, start_step + stop_after)

    def step_loss(batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        noise = model.draw_noise(batch.features.shape[0], generator, batch.features.device)
        return ocl_loss_terms(model(batch.features, batch.tokens, noise))

    validation = FeatureStore(validation_store) if validation_store else store
    try:
        loop = train_loop(
            model=model,
            optimizer=optimizer,
            batches=batches,
            settings=LoopSettings.from_config(config),
            device=target_device,
            run_dir=run_dir,
            config=to_dict(config),
            run_info=ocl_run_info(store, config, feature_kind, online, target_device),
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
    return TrainResult.from_loop(run_dir, loop, config.batch_size)


def load_ocl_run(run_dir: Path, store: FeatureStore, device: torch.device) -> tuple[OCLModel, OCLTrainConfig, dict[str, Any]]:
    """The frozen model of an OCL run, checked against ``store`` (same VFM, grid, and token codebook)."""
    raw_config, info = read_run(run_dir)
    if info.get("stage") != "ocl":
        raise FeatcacheError(f"{run_dir} is not an OCL run (stage {info.get('stage')!r}); expected a folder written by train-ocl")
    config = from_dict(OCLTrainConfig, raw_config)
    trained = info["store"]
    if trained["encoder"] != store.attributes["encoder"]["name"] or trained["channels"] != store.layout.channels or list(trained["grid"]) != list(store.layout.grid):
        raise StoreError(
            f"run {run_dir} was trained on {trained['encoder']} features ({trained['channels']} ch, grid {trained['grid']}); "
            f"store {store.path} holds {store.attributes['encoder']['name']} ({store.layout.channels} ch, grid {list(store.layout.grid)})"
        )
    if config.tokens:
        trained_vq = info["tokens"]["vq"]["weights_sha256"]
        if config.tokens not in store.token_names() or store.token_attributes(config.tokens)["vq"]["weights_sha256"] != trained_vq:
            raise StoreError(f"store {store.path} has no token set {config.tokens!r} made by the VQ checkpoint the run was trained with")
    model = build_ocl_model(config, store)
    load_weights(run_dir, model)
    return model.to(device).eval().requires_grad_(False), config, info


def evaluate_run(
    run_dir: str | Path,
    store_path: str | Path | None = None,
    protocol_name: str = "vvo",
    view: str = "center",
    batch_size: int = 64,
    device: str = "auto",
    limit: int | None = None,
    baseline: bool = False,
    out: str | Path | None = None,
    show_progress: bool = True,
    mask_source: str | None = None,
) -> dict[str, Any]:
    """Score a run's masks on a store (default: the store it was trained on); writes eval JSON and a PNG grid.

    ``mask_source`` (``attention`` | ``decoder``) scores other masks than the run's config names; the default
    output folder then says so, so both evaluations of one run are kept.
    """
    run_dir = Path(run_dir)
    _, info = read_run(run_dir)
    if store_path is None and info["store"]["path"] is None:
        raise FeatcacheError(f"run {run_dir} was imported ({info['imported_from']['path']}) and trained on no featcache store: pass --store")
    store = FeatureStore(store_path or info["store"]["path"])
    target_device = resolve_device(device)
    model, config, info = load_ocl_run(run_dir, store, target_device)
    overridden = mask_source is not None and mask_source != config.model.mask_source
    if overridden:
        model.use_mask_source(mask_source)  # type: ignore[arg-type]
    protocol = get_protocol(protocol_name)
    feature_kind = info["store"]["feature_kind"]
    indices = store.valid_indices()[:limit] if limit else store.valid_indices()
    metrics, examples = evaluate_masks(
        partial(model.predict_masks, generator=evaluation_generator(target_device)),
        store,
        indices,
        protocol,
        feature_kind,
        config.tokens or None,
        target_device,
        view,
        batch_size,
        show_progress,
    )
    result: dict[str, Any] = {
        "run": str(run_dir),
        "store": str(store.path),
        "random_weights": store.weights_are_random,
        "view": view,
        "protocol": {
            **protocol.describe(),
            "mask_source": model.config.mask_source,
            "resolution": store.layout.mask_size,
            "overlaps": "pixels of overlapping instances are ignore pixels (set by the dataset adapter)",
        },
        "metrics": metrics.summary(),
        "evaluated": utc_now(),
    }
    if baseline:
        result["kmeans_baseline"] = kmeans_baseline_metrics(store, indices, feature_kind, view, protocol)
    out_dir = Path(out) if out else run_dir / (f"eval-{store.path.stem}-{protocol.name}" + (f"-{mask_source}-masks" if overridden else ""))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(result, indent=2, default=float))
    if store.has_images:
        write_mask_grid(store.images(indices[: len(examples)], view=view), examples, out_dir / "masks.png")
    result["output"] = str(out_dir)
    return result


def kmeans_baseline_metrics(store: FeatureStore, indices: np.ndarray, feature_kind: str, view: str, protocol: Protocol) -> dict[str, float]:
    """Per-image kMeans (k = objects + background) on the same features, scored with the same protocol."""
    from featcache.analysis.separability import kmeans_baseline, objects_per_image

    features = store.features(indices, view=view, kind=feature_kind).astype(np.float32)  # (N, h, w, C)
    true = store.masks(indices, view=view).astype(np.int64)  # (N, M, M)
    size = true.shape[-1]
    clusters = kmeans_baseline(features, objects_per_image(true) + 1, output_size=(size, size), seed=0)
    return MaskMetrics(**score_masks(true, clusters, protocol), clip_ari={}, protocol=protocol).summary()


def print_evaluation(result: dict[str, Any]) -> None:
    rows = [{"method": "model", **result["metrics"]}]
    if "kmeans_baseline" in result:
        rows.append({"method": "per-image kMeans", **result["kmeans_baseline"]})
    protocol = result["protocol"]
    print_metrics_table(
        f"{result['run']} on {result['store']} ({protocol['name']} protocol, {protocol['mask_source']} masks at {protocol['resolution']} px"
        + (", RANDOM VFM weights" if result["random_weights"] else "") + ")",
        rows,
    )
    error_console.print(f"wrote {result['output']}")
