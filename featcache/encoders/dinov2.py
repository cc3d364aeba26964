"""DINOv2 ViTs (timm) as frozen encoders that store the last block's output before the final LayerNorm.

DINOSAUR-style models train on the pre-norm tokens, VVO on the normed ones; storing the pre-norm tokens
plus the final LayerNorm's parameters serves both (``apply_final_norm`` derives the normed tokens).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import checkpoint_filter_fn

from featcache.encoders.base import EncoderSpec
from featcache.encoders.checks import check_images
from featcache.encoders.timm_vit import BACKBONE_PREFIXES, TimmViTEncoder, build_timm_vit, check_patch_size
from featcache.encoders.weights import convert_checkpoint, load_strict, strip_prefix
from featcache.errors import FeatcacheError

ArrayOrTensor = TypeVar("ArrayOrTensor", torch.Tensor, np.ndarray)

class DinoV2Encoder(TimmViTEncoder):
    """timm DINOv2 ViT returning the last block's patch tokens (no final norm) as (B, h, w, C)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, R, R) -> last-block patch tokens (B, h, w, C), float32."""
        check_images(images, self.resolution, self.spec.name)
        tokens = self.vit.patch_embed(images)  # (B, h * w, C)
        tokens = self.vit._pos_embed(tokens)  # (B, prefix + h * w, C): cls (+ registers) prepended
        tokens = self.vit.patch_drop(tokens)
        tokens = self.vit.norm_pre(tokens)
        tokens = self.vit.blocks(tokens)
        return self.patch_grid(tokens)  # (B, h, w, C)


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
    arguments = {"img_size": resolution, "dynamic_img_size": False, "num_classes": 0}
    return build_timm_vit(spec, resolution, weights, seed, DinoV2Encoder, arguments, load_dinov2_state_dict, meta_init=True)


def load_dinov2_state_dict(encoder: DinoV2Encoder, raw_state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Load an official DINOv2 checkpoint or a timm state dict (read from ``path``) into ``encoder`` (strict).

    timm's own filter converts the official format (``mask_token`` dropped, ``register_tokens`` ->
    ``reg_token``, cls position folded in for register models) and resamples the 518 px position
    embedding (37 x 37 + 1 tokens) to the encoder's grid.
    """
    spec = encoder.spec
    state_dict = strip_prefix(raw_state_dict, BACKBONE_PREFIXES)
    check_patch_size(state_dict, spec, path)
    converted = convert_checkpoint(lambda raw: checkpoint_filter_fn(raw, encoder.vit), state_dict, path, spec.name)
    load_strict(encoder.vit, converted, path, f"{spec.name} ({spec.timm_name})")
