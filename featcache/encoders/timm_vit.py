"""What the timm ViT encoders (DINOv2, DINOv3) share: the frozen wrapper's checks, the patch-grid output, the final
LayerNorm's parameters, and building with hub, file or (only when asked) random weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, TypeVar

import timm
import torch
from torch import nn

from featcache.encoders.base import EncoderSpec, FrozenEncoder, WeightInfo
from featcache.encoders.weights import checkpoint_path, from_hub, read_checkpoint, state_dict_sha256, weights_source
from featcache.errors import WeightsError
from featcache.provenance import file_sha256

#: Prefixes under which training checkpoints or featcache's own encoder state dict keep the ViT.
BACKBONE_PREFIXES = ("teacher.backbone.", "backbone.", "module.", "vit.")


class TimmViTEncoder(FrozenEncoder):
    """A timm ViT ``vit`` whose forward (in the subclass) returns the last block's patch tokens as (B, h, w, C)."""

    def __init__(self, spec: EncoderSpec, resolution: int, vit: nn.Module) -> None:
        super().__init__()
        if vit.embed_dim != spec.channels or vit.num_prefix_tokens != spec.prefix_tokens:
            raise ValueError(
                f"{spec.timm_name} has {vit.embed_dim} channels and {vit.num_prefix_tokens} prefix tokens; "
                f"spec {spec.name} expects {spec.channels} and {spec.prefix_tokens}"
            )
        self.spec = spec
        self.resolution = resolution
        self.vit = vit

    def patch_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, prefix + h * w, C) -> patch tokens (B, h, w, C) float32 (cls and register tokens dropped)."""
        patches = tokens[:, self.vit.num_prefix_tokens :]  # (B, h * w, C)
        height, width = self.grid
        return patches.reshape(patches.shape[0], height, width, patches.shape[-1]).float()

    def final_norm_parameters(self) -> dict[str, object]:
        """The final LayerNorm's weight, bias (lists of floats) and eps, to derive ``final_norm`` features."""
        norm = self.vit.norm
        return {"weight": norm.weight.detach().float().cpu().tolist(), "bias": norm.bias.detach().float().cpu().tolist(), "eps": float(norm.eps)}


Encoder = TypeVar("Encoder", bound=TimmViTEncoder)


def build_timm_vit(
    spec: EncoderSpec,
    resolution: int,
    weights: str,
    seed: int,
    encoder_class: Callable[[EncoderSpec, int, Any], Encoder],
    arguments: dict[str, Any],
    load_state_dict: Callable[[Encoder, dict[str, torch.Tensor], Path], None],
    meta_init: bool,
) -> Encoder:
    """``encoder_class`` around ``timm.create_model(spec.timm_name, **arguments)`` with hub, file or random weights.

    ``meta_init``: build the model for a checkpoint on the meta device without initialising it (every tensor comes
    from the file); off where the model computes buffers that the checkpoint does not hold (DINOv3's RoPE).
    """
    source = weights_source(weights)
    if source == "hub":
        hub_id = f"{spec.timm_name}.{spec.hub_tag}"
        vit = from_hub(hub_id, lambda: timm.create_model(hub_id, pretrained=True, **arguments))
        encoder = encoder_class(spec, resolution, vit)
        encoder.weights = WeightInfo("hub", hub_id, state_dict_sha256(encoder), notes={"timm_id": hub_id})
        return encoder
    if source == "random":
        with torch.random.fork_rng(devices=[]):  # seeded init without disturbing the caller's RNG stream
            torch.manual_seed(seed)
            encoder = encoder_class(spec, resolution, timm.create_model(spec.timm_name, pretrained=False, **arguments))
        encoder.weights = WeightInfo("random", f"seed={seed}", state_dict_sha256(encoder))
        return encoder
    path = checkpoint_path(weights)
    state_dict = read_checkpoint(path)  # read (and fail) before building the model
    if meta_init:
        with torch.device("meta"):
            vit = timm.create_model(spec.timm_name, pretrained=False, weight_init="skip", **arguments)
    else:
        vit = timm.create_model(spec.timm_name, pretrained=False, **arguments)
    encoder = encoder_class(spec, resolution, vit)
    load_state_dict(encoder, state_dict, path)
    encoder.weights = WeightInfo("file", str(path), state_dict_sha256(encoder), file_sha256=file_sha256(path))
    return encoder


def check_patch_size(state_dict: dict[str, torch.Tensor], spec: EncoderSpec, path: Path) -> None:
    """Refuse a checkpoint whose patch embedding has another patch size than ``spec``, in one line."""
    patch_weight = state_dict.get("patch_embed.proj.weight")
    if patch_weight is not None and patch_weight.ndim == 4 and tuple(patch_weight.shape[-2:]) != (spec.patch_size,) * 2:
        raise WeightsError(
            f"checkpoint {path} has patch size {tuple(patch_weight.shape[-2:])}; {spec.name} expects {spec.patch_size}x{spec.patch_size} patches"
        )
