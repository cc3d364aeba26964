"""DINOv3 ViTs (timm's ``Eva`` with DINOv3 RoPE) as frozen encoders storing the last block's output before the final
LayerNorm, exactly as the DINOv2 encoders do (``final_norm`` is derived on read from the stored LayerNorm).

The timm models are the ``*_dinov3_qkvb`` variants: the official ViTs have a query and value bias (the key bias is
masked to zero), which these keep; the variants without it drop the biases when loading. Official checkpoints
(``storage_tokens``, ``ls1.gamma``, ``qkv.bias`` + ``bias_mask``, RoPE ``periods``) are converted by timm's own
filter; tests/test_dinov3_parity.py checks the converted model against the official code on a fixture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from timm.models.eva import checkpoint_filter_fn

from featcache.encoders.base import EncoderSpec
from featcache.encoders.checks import check_images
from featcache.encoders.timm_vit import BACKBONE_PREFIXES, TimmViTEncoder, build_timm_vit, check_patch_size
from featcache.encoders.weights import convert_checkpoint, load_strict, strip_prefix
from featcache.errors import WeightsError


class DinoV3Encoder(TimmViTEncoder):
    """timm DINOv3 ViT returning the last block's patch tokens (no final norm; cls and 4 registers dropped) as (B, h, w, C)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, R, R) -> last-block patch tokens (B, h, w, C), float32."""
        check_images(images, self.resolution, self.spec.name)
        tokens = self.vit.patch_embed(images)  # (B, h * w, C)
        tokens, rope = self.vit._pos_embed(tokens)  # (B, prefix + h * w, C), RoPE sin/cos of the h x w grid
        tokens = self.vit.norm_pre(tokens)
        for block in self.vit.blocks:
            tokens = block(tokens, rope=rope)
        return self.patch_grid(tokens)  # (B, h, w, C)


def model_arguments(resolution: int, **overrides: Any) -> dict[str, Any]:
    """timm arguments of the encoder's ViT: fixed input size (RoPE grid of ``resolution``), no head."""
    return {"img_size": resolution, "dynamic_img_size": False, "num_classes": 0, **overrides}


def build_dinov3_encoder(spec: EncoderSpec, resolution: int, weights: str, seed: int) -> DinoV3Encoder:
    """Create the ViT at ``resolution`` with hub, file or (only when asked) random weights (RoPE buffers are computed)."""
    return build_timm_vit(spec, resolution, weights, seed, DinoV3Encoder, model_arguments(resolution), load_dinov3_state_dict, meta_init=False)


def load_dinov3_state_dict(encoder: DinoV3Encoder, raw_state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Load an official DINOv3 checkpoint or a timm state dict (read from ``path``) into ``encoder`` (strict).

    timm's filter renames the official keys (``storage_tokens`` -> ``reg_token``, ``ls1/ls2.gamma`` -> ``gamma_1/2``),
    splits ``qkv.bias`` into the query and value biases (the key bias is masked to zero in the official model) and
    drops what evaluation does not use (``mask_token``, ``bias_mask``, RoPE ``periods``).
    """
    spec = encoder.spec
    state_dict = strip_prefix(raw_state_dict, BACKBONE_PREFIXES)
    check_patch_size(state_dict, spec, path)
    bias = next((value for key, value in state_dict.items() if key.endswith("qkv.bias")), None)
    if bias is not None and not hasattr(encoder.vit.blocks[0].attn, "q_bias"):
        raise WeightsError(f"checkpoint {path} has query/key/value biases but {spec.timm_name} has none; expected a *_dinov3_qkvb model")
    converted = convert_checkpoint(lambda raw: checkpoint_filter_fn(raw, encoder.vit), state_dict, path, spec.name)
    load_strict(encoder.vit, converted, path, f"{spec.name} ({spec.timm_name})")
