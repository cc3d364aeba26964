"""Registry of frozen vision foundation models (VFMs) and ``create_encoder`` to build one by name.

``weights`` is ``"hub"`` (pretrained from the model hub), ``"random"`` (explicitly random, seeded) or a
local checkpoint path; the returned encoder is frozen (eval mode, no gradients) and records where its
weights came from in ``encoder.weights``.
"""

from __future__ import annotations

from collections.abc import Callable

from featcache.encoders.base import EncoderSpec, FeatureKind, FrozenEncoder, WeightInfo
from featcache.encoders.dinov2 import DinoV2Encoder, apply_final_norm, build_dinov2_encoder
from featcache.encoders.dinov3 import DinoV3Encoder, build_dinov3_encoder
from featcache.encoders.sam2 import COARSEST_STRIDE, Sam2Encoder, build_sam2_encoder
from featcache.encoders.weights import state_dict_sha256
from featcache.errors import FeatcacheError
from featcache.registry import Registry

__all__ = [
    "ENCODERS",
    "DinoV2Encoder",
    "DinoV3Encoder",
    "EncoderSpec",
    "FeatureKind",
    "FrozenEncoder",
    "Sam2Encoder",
    "WeightInfo",
    "apply_final_norm",
    "create_encoder",
    "list_encoders",
    "resolution_multiple",
    "state_dict_sha256",
]

ENCODERS = Registry[EncoderSpec]("VFM")

ENCODERS.register(
    "dino2-s14",
    EncoderSpec(
        name="dino2-s14",
        family="dinov2",
        timm_name="vit_small_patch14_dinov2",
        hub_tag="lvd142m",
        patch_size=14,
        default_resolution=224,
        channels=384,
        prefix_tokens=1,
        stored_kind="last_block",
        derivable_kinds=("final_norm",),
        description="DINOv2 ViT-S/14 (LVD-142M); 16x16 patches at 224 px, cls token dropped",
    ),
)
ENCODERS.register(
    "dino2-b14",
    EncoderSpec(
        name="dino2-b14",
        family="dinov2",
        timm_name="vit_base_patch14_dinov2",
        hub_tag="lvd142m",
        patch_size=14,
        default_resolution=224,
        channels=768,
        prefix_tokens=1,
        stored_kind="last_block",
        derivable_kinds=("final_norm",),
        description="DINOv2 ViT-B/14 (LVD-142M); 16x16 patches at 224 px, cls token dropped",
    ),
)
ENCODERS.register(
    "dino2-s14-reg4",
    EncoderSpec(
        name="dino2-s14-reg4",
        family="dinov2",
        timm_name="vit_small_patch14_reg4_dinov2",
        hub_tag="lvd142m",
        patch_size=14,
        default_resolution=224,
        channels=384,
        prefix_tokens=5,
        stored_kind="last_block",
        derivable_kinds=("final_norm",),
        description="DINOv2 ViT-S/14 with 4 registers (LVD-142M); cls and register tokens dropped",
    ),
)
for _size, _timm_size, _channels in (("s", "small", 384), ("b", "base", 768)):
    ENCODERS.register(
        f"dino3-{_size}16",
        EncoderSpec(
            name=f"dino3-{_size}16",
            family="dinov3",
            # the variants with the official query/value biases (see featcache.encoders.dinov3)
            timm_name=f"vit_{_timm_size}_patch16_dinov3_qkvb",
            hub_tag="lvd1689m",
            patch_size=16,
            default_resolution=224,
            channels=_channels,
            prefix_tokens=5,
            stored_kind="last_block",
            derivable_kinds=("final_norm",),
            description=f"DINOv3 ViT-{_size.upper()}/16 (LVD-1689M), RoPE; 14x14 patches at 224 px, cls and 4 register tokens dropped",
        ),
    )
ENCODERS.register(
    "sam2-t16",
    EncoderSpec(
        name="sam2-t16",
        family="sam2",
        timm_name="sam2_hiera_tiny",
        hub_tag="fb_r896",
        patch_size=16,
        default_resolution=256,
        channels=256,
        prefix_tokens=0,
        stored_kind="fpn_neck",
        derivable_kinds=(),
        description="SAM2 Hiera-T trunk + FPN neck, stride-16 level (256 ch); hub weights: official sam2_hiera_tiny.pt",
    ),
)

_BUILDERS: dict[str, Callable[[EncoderSpec, int, str, int], FrozenEncoder]] = {
    "dinov2": build_dinov2_encoder,
    "dinov3": build_dinov3_encoder,
    "sam2": build_sam2_encoder,
}


def list_encoders() -> list[EncoderSpec]:
    """All registered encoder specs, sorted by name (for ``featcache info`` and help texts)."""
    return [ENCODERS.get(name) for name in ENCODERS.names()]


def resolution_multiple(spec: EncoderSpec) -> int:
    """What input resolutions must be a multiple of: the ViT patch size, or Hiera's coarsest stride (32)."""
    return COARSEST_STRIDE if spec.family == "sam2" else spec.patch_size


def create_encoder(name: str, weights: str = "hub", resolution: int | None = None, seed: int = 0) -> FrozenEncoder:
    """Build the registered encoder ``name`` at ``resolution`` (default: the spec's) and freeze it.

    ``weights``: ``"hub"``, ``"random"`` (``torch.manual_seed(seed)`` first, so equal seeds give
    bit-identical weights) or a checkpoint path (.safetensors, .pt, .pth).
    """
    spec = ENCODERS.get(name)
    resolution = spec.default_resolution if resolution is None else resolution
    multiple = resolution_multiple(spec)
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution <= 0 or resolution % multiple:
        raise FeatcacheError(
            f"resolution {resolution!r} for encoder {name} is not a positive multiple of its stride {multiple} "
            f"(default {spec.default_resolution})"
        )
    encoder = _BUILDERS[spec.family](spec, resolution, weights, seed)
    encoder.eval()
    encoder.requires_grad_(False)
    return encoder
