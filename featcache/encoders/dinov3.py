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

import timm
import torch
from timm.models.eva import Eva, checkpoint_filter_fn

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
from featcache.errors import WeightsError
from featcache.provenance import file_sha256

#: Prefixes under which training checkpoints or featcache's own encoder state dict keep the ViT.
_BACKBONE_PREFIXES = ("teacher.backbone.", "backbone.", "module.", "vit.")


class DinoV3Encoder(FrozenEncoder):
    """timm DINOv3 ViT returning the last block's patch tokens (no final norm; cls and 4 registers dropped) as (B, h, w, C)."""

    def __init__(self, spec: EncoderSpec, resolution: int, vit: Eva) -> None:
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
        tokens, rope = self.vit._pos_embed(tokens)  # (B, prefix + h * w, C), RoPE sin/cos of the h x w grid
        tokens = self.vit.norm_pre(tokens)
        for block in self.vit.blocks:
            tokens = block(tokens, rope=rope)
        patches = tokens[:, self.vit.num_prefix_tokens :]  # (B, h * w, C)
        height, width = self.grid
        return patches.reshape(patches.shape[0], height, width, patches.shape[-1]).float()  # (B, h, w, C)

    def final_norm_parameters(self) -> dict[str, object]:
        """The final LayerNorm's weight, bias (lists of floats) and eps, to derive ``final_norm`` features."""
        norm = self.vit.norm
        return {"weight": norm.weight.detach().float().cpu().tolist(), "bias": norm.bias.detach().float().cpu().tolist(), "eps": float(norm.eps)}


def model_arguments(resolution: int, **overrides: Any) -> dict[str, Any]:
    """timm arguments of the encoder's ViT: fixed input size (RoPE grid of ``resolution``), no head."""
    return {"img_size": resolution, "dynamic_img_size": False, "num_classes": 0, **overrides}


def build_dinov3_encoder(spec: EncoderSpec, resolution: int, weights: str, seed: int) -> DinoV3Encoder:
    """Create the ViT at ``resolution`` with hub, file or (only when asked) random weights."""
    arguments = model_arguments(resolution)
    source = weights_source(weights)
    if source == "hub":
        hub_id = f"{spec.timm_name}.{spec.hub_tag}"
        vit = from_hub(hub_id, lambda: timm.create_model(hub_id, pretrained=True, **arguments))
        encoder = DinoV3Encoder(spec, resolution, vit)
        encoder.weights = WeightInfo("hub", hub_id, state_dict_sha256(encoder), notes={"timm_id": hub_id})
        return encoder
    if source == "random":
        with torch.random.fork_rng(devices=[]):  # seeded init without disturbing the caller's RNG stream
            torch.manual_seed(seed)
            encoder = DinoV3Encoder(spec, resolution, timm.create_model(spec.timm_name, pretrained=False, **arguments))
        encoder.weights = WeightInfo("random", f"seed={seed}", state_dict_sha256(encoder))
        return encoder
    path = checkpoint_path(weights)
    state_dict = read_checkpoint(path)  # read (and fail) before building the model
    vit = timm.create_model(spec.timm_name, pretrained=False, **arguments)  # RoPE buffers are computed, not loaded
    encoder = DinoV3Encoder(spec, resolution, vit)
    load_dinov3_state_dict(encoder, state_dict, path)
    encoder.weights = WeightInfo("file", str(path), state_dict_sha256(encoder), file_sha256=file_sha256(path))
    return encoder


def load_dinov3_state_dict(encoder: DinoV3Encoder, raw_state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Load an official DINOv3 checkpoint or a timm state dict (read from ``path``) into ``encoder`` (strict).

    timm's filter renames the official keys (``storage_tokens`` -> ``reg_token``, ``ls1/ls2.gamma`` -> ``gamma_1/2``),
    splits ``qkv.bias`` into the query and value biases (the key bias is masked to zero in the official model) and
    drops what evaluation does not use (``mask_token``, ``bias_mask``, RoPE ``periods``).
    """
    spec = encoder.spec
    state_dict = strip_prefix(raw_state_dict, _BACKBONE_PREFIXES)
    patch_weight = state_dict.get("patch_embed.proj.weight")
    if patch_weight is not None and patch_weight.ndim == 4 and tuple(patch_weight.shape[-2:]) != (spec.patch_size,) * 2:
        raise WeightsError(
            f"checkpoint {path} has patch size {tuple(patch_weight.shape[-2:])}; {spec.name} expects {spec.patch_size}x{spec.patch_size} patches"
        )
    bias = next((value for key, value in state_dict.items() if key.endswith("qkv.bias")), None)
    if bias is not None and not hasattr(encoder.vit.blocks[0].attn, "q_bias"):
        raise WeightsError(f"checkpoint {path} has query/key/value biases but {spec.timm_name} has none; expected a *_dinov3_qkvb model")
    converted = convert_checkpoint(lambda raw: checkpoint_filter_fn(raw, encoder.vit), state_dict, path, spec.name)
    load_strict(encoder.vit, converted, path, f"{spec.name} ({spec.timm_name})")
