"""DINOv2 ViTs (timm) as frozen encoders that store the last block's output before the final LayerNorm.

DINOSAUR-style models train on the pre-norm tokens, VVO on the normed ones; storing the pre-norm tokens
plus the final LayerNorm's parameters serves both (``apply_final_norm`` derives the normed tokens).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import numpy as np
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from featcache.encoders.base import EncoderSpec, FrozenEncoder, WeightInfo
from featcache.encoders.checks import check_images
from featcache.encoders.weights import (
    checkpoint_path,
    convert_checkpoint,
    from_hub,
    load_strict,
    read_checkpoint,
    state_dict_sha256,
    strip_prefix,
    weights_source,
)
from featcache.errors import FeatcacheError, WeightsError
from featcache.provenance import file_sha256

ArrayOrTensor = TypeVar("ArrayOrTensor", torch.Tensor, np.ndarray)

#: Prefixes under which training checkpoints or featcache's own encoder state dict keep the ViT.
_BACKBONE_PREFIXES = ("teacher.backbone.", "backbone.", "module.", "vit.")


class DinoV2Encoder(FrozenEncoder):
    """timm DINOv2 ViT returning the last block's patch tokens (no final norm) as (B, h, w, C)."""

    def __init__(self, spec: EncoderSpec, resolution: int, vit: VisionTransformer) -> None:
        super().__init__()
        if vit.embed_dim != spec.channels or vit.num_prefix_tokens != spec.prefix_tokens:
            raise ValueError(
                f"{spec.timm_name} has {vit.embed_dim} channels and {vit.num_prefix_tokens} prefix tokens; "
                f"spec {spec.name} expects {spec.channels} and {spec.prefix_tokens}"
            )
        self.spec = spec
        self.resolution = resolution
        self.vit = vit

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, R, R) -> last-block patch tokens (B, h, w, C), float32."""
        check_images(images, self.resolution, self.spec.name)
        tokens = self.vit.patch_embed(images)  # (B, h * w, C)
        tokens = self.vit._pos_embed(tokens)  # (B, prefix + h * w, C): cls (+ registers) prepended
        tokens = self.vit.patch_drop(tokens)
        tokens = self.vit.norm_pre(tokens)
        tokens = self.vit.blocks(tokens)
        patches = tokens[:, self.vit.num_prefix_tokens :]  # (B, h * w, C)
        height, width = self.grid
        return patches.reshape(patches.shape[0], height, width, patches.shape[-1]).float()  # (B, h, w, C)

    def final_norm_parameters(self) -> dict[str, object]:
        """The final LayerNorm's weight, bias (lists of floats) and eps, to derive ``final_norm`` features."""
        norm = self.vit.norm
        return {
            "weight": norm.weight.detach().float().cpu().tolist(),
            "bias": norm.bias.detach().float().cpu().tolist(),
            "eps": float(norm.eps),
        }


def apply_final_norm(features: ArrayOrTensor, parameters: Mapping[str, object]) -> ArrayOrTensor:
    """Apply the stored final LayerNorm to last-block features (..., C), as timm's ``forward_features`` does.

    Computes in float32 and returns float32: a tensor on the input's device, or a numpy array for numpy input.
    """
    is_numpy = not isinstance(features, torch.Tensor)
    # numpy input is copied: arrays read from a store may be read-only, which torch.from_numpy warns about
    tensor = torch.from_numpy(np.array(features, dtype=np.float32)) if is_numpy else features.float()
    weight = torch.as_tensor(parameters["weight"], dtype=torch.float32, device=tensor.device)
    bias = torch.as_tensor(parameters["bias"], dtype=torch.float32, device=tensor.device)
    if weight.ndim != 1 or tensor.shape[-1] != weight.shape[0] or bias.shape != weight.shape:
        raise FeatcacheError(
            f"final-norm parameters have {weight.shape[0]} weights and {bias.shape[0]} biases; "
            f"expected {tensor.shape[-1]} for features of shape {tuple(tensor.shape)}"
        )
    normed = F.layer_norm(tensor, (weight.shape[0],), weight, bias, float(parameters["eps"]))  # type: ignore[arg-type]
    return normed.numpy() if is_numpy else normed  # type: ignore[return-value]


def build_dinov2_encoder(spec: EncoderSpec, resolution: int, weights: str, seed: int) -> DinoV2Encoder:
    """Create the ViT at ``resolution`` (position embeddings interpolated) with hub, file or random weights."""
    model_args = {"img_size": resolution, "dynamic_img_size": False, "num_classes": 0}
    source = weights_source(weights)
    if source == "hub":
        hub_id = f"{spec.timm_name}.{spec.hub_tag}"
        vit = from_hub(hub_id, lambda: timm.create_model(hub_id, pretrained=True, **model_args))
        encoder = DinoV2Encoder(spec, resolution, vit)
        encoder.weights = WeightInfo("hub", hub_id, state_dict_sha256(encoder), notes={"timm_id": hub_id})
        return encoder
    if source == "random":
        with torch.random.fork_rng(devices=[]):  # seeded init without disturbing the caller's RNG stream
            torch.manual_seed(seed)
            encoder = DinoV2Encoder(spec, resolution, timm.create_model(spec.timm_name, pretrained=False, **model_args))
        encoder.weights = WeightInfo("random", f"seed={seed}", state_dict_sha256(encoder))
        return encoder
    path = checkpoint_path(weights)
    state_dict = read_checkpoint(path)  # read (and fail) before building the model
    with torch.device("meta"):  # no random init: every tensor comes from the checkpoint
        vit = timm.create_model(spec.timm_name, pretrained=False, weight_init="skip", **model_args)
    encoder = DinoV2Encoder(spec, resolution, vit)
    load_dinov2_state_dict(encoder, state_dict, path)
    encoder.weights = WeightInfo("file", str(path), state_dict_sha256(encoder), file_sha256=file_sha256(path))
    return encoder


def load_dinov2_state_dict(encoder: DinoV2Encoder, raw_state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Load an official DINOv2 checkpoint or a timm state dict (read from ``path``) into ``encoder`` (strict).

    timm's own filter converts the official format (``mask_token`` dropped, ``register_tokens`` ->
    ``reg_token``, cls position folded in for register models) and resamples the 518 px position
    embedding (37 x 37 + 1 tokens) to the encoder's grid.
    """
    spec = encoder.spec
    state_dict = strip_prefix(raw_state_dict, _BACKBONE_PREFIXES)
    patch_weight = state_dict.get("patch_embed.proj.weight")
    if patch_weight is not None and patch_weight.ndim == 4 and tuple(patch_weight.shape[-2:]) != (spec.patch_size,) * 2:
        raise WeightsError(
            f"checkpoint {path} has patch size {tuple(patch_weight.shape[-2:])}; "
            f"{spec.name} expects {spec.patch_size}x{spec.patch_size} patches"
        )
    converted = convert_checkpoint(lambda raw: checkpoint_filter_fn(raw, encoder.vit), state_dict, path, spec.name)
    load_strict(encoder.vit, converted, path, f"{spec.name} ({spec.timm_name})")
