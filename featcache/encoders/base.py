"""What the extractor needs from a frozen vision foundation model (VFM).

Every encoder maps normalised images (B, 3, R, R) to a patch grid (B, h, w, C) of the *stored* output
kind and exposes what is needed to derive the other kind (the final LayerNorm's parameters for ViTs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: "last_block": ViT output of the last block before the final norm (DINOSAUR); "final_norm" (VVO) is derived
#: from it with the stored LayerNorm parameters. "fpn_neck": SAM2's FPN neck output (nothing to derive).
FeatureKind = Literal["last_block", "final_norm", "fpn_neck"]


@dataclass(frozen=True)
class EncoderSpec:
    """Registry entry: a named VFM with its default config (timm-style)."""

    name: str
    family: Literal["dinov2", "dinov3", "sam2"]
    timm_name: str
    #: timm pretrained tag used for ``--weights hub``.
    hub_tag: str
    #: Output stride in input pixels (patch size for ViTs).
    patch_size: int
    default_resolution: int
    channels: int
    #: Number of prefix tokens (class + register) the ViT emits before the patch tokens; dropped.
    prefix_tokens: int = 0
    stored_kind: FeatureKind = "last_block"
    derivable_kinds: tuple[FeatureKind, ...] = ()
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    description: str = ""


@dataclass(frozen=True)
class WeightInfo:
    """Where the weights came from; recorded in every store's provenance.

    source: "hub" | "file" | "random"; location: hub id, checkpoint path, or "seed=N" for random.
    sha256: checksum over the loaded state dict (same function for every source, so runs can be compared).
    """

    source: Literal["hub", "file", "random"]
    location: str
    sha256: str
    file_sha256: str | None = None
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def is_random(self) -> bool:
        return self.source == "random"


class FrozenEncoder(nn.Module):
    """A frozen VFM in eval mode. ``forward(images)`` returns (B, h, w, C) of ``spec.stored_kind``."""

    spec: EncoderSpec
    resolution: int
    weights: WeightInfo

    @property
    def grid(self) -> tuple[int, int]:
        side = self.resolution // self.spec.patch_size
        return side, side

    def final_norm_parameters(self) -> dict[str, object] | None:
        """``{"weight": list[float], "bias": list[float], "eps": float}`` of the final LayerNorm, or None."""
        return None

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
