"""Run folders as inputs: the store a run reads, and the frozen models of finished VQ and OCL runs (tokenize, eval, online targets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from featcache.config import from_dict
from featcache.errors import ConfigError, FeatcacheError, StoreError
from featcache.ocl import OCLModel
from featcache.ocl.temporal import TemporalOCLModel
from featcache.quantize import CodeLookup, VQModel
from featcache.store import FeatureStore
from featcache.store.tokens import token_set_quantizer
from featcache.training.checkpoint import load_weights, read_run
from featcache.training.config import OCLTrainConfig, VQTrainConfig


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


#: Seed of the slot noise drawn at evaluation where the queries are sampled in evaluation too (OCLF, videosaur).
EVALUATION_NOISE_SEED = 0


def _codebook(store: FeatureStore, config: OCLTrainConfig) -> torch.Tensor | CodeLookup | None:
    if not config.tokens:
        if config.model.decoder.target != "features":
            raise ConfigError(
                f"decoder {config.model.decoder.name} with target {config.model.decoder.target!r} needs a token set: "
                f"set tokens=NAME (token sets of {store.path}: {', '.join(store.token_names()) or 'none'})"
            )
        return None
    if token_set_quantizer(store.token_attributes(config.tokens)) == "msf":  # both indices, fused codes (scale 1)
        return CodeLookup.from_token_set(store, config.tokens)
    return torch.from_numpy(store.codebook(config.tokens))


def build_ocl_model(config: OCLTrainConfig, store: FeatureStore) -> OCLModel | TemporalOCLModel:
    """The run's model: the image model, or the temporal one (``model.temporal.enabled``, video stores only)."""
    if config.model.temporal.enabled:
        if not store.layout.is_video:
            raise StoreError(f"store {store.path} holds images; the config's model.temporal.enabled needs a video store (clips)")
        return TemporalOCLModel(config.model, store.layout.channels, store.layout.grid, _codebook(store, config))
    return OCLModel(config.model, store.layout.channels, store.layout.grid, _codebook(store, config))


def evaluation_generator(device: torch.device) -> torch.Generator:
    """The generator of evaluation-time slot noise (``query_noise: always``): seeded alike for every evaluation,
    so scores are reproducible and comparable across runs and steps."""
    return torch.Generator(device=device).manual_seed(EVALUATION_NOISE_SEED)


def load_ocl_run(run_dir: Path, store: FeatureStore, device: torch.device) -> tuple[OCLModel | TemporalOCLModel, OCLTrainConfig, dict[str, Any]]:
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
