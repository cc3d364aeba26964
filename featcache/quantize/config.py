"""Quantizer pre-training configs (VVO, arXiv 2502.20263): the VQ model and the decoder it is trained with.

Both are merged from YAML by :mod:`featcache.config`, so fields hold plain types only. Every trick of the
method has a switch here because the paper's ablation (Table 7) turns each off on its own:
``simvq``, ``gumbel``, ``residual`` and a zero weight for the alignment, commitment and normalisation losses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from featcache.errors import ConfigError


@dataclass(frozen=True)
class QuantizerConfig:
    """Encoder, codebook and quantizer losses; defaults follow the paper's DINOv2 ViT-S/14 setting."""

    #: Number of codes K.
    codebook_size: int = 4096
    #: Code dimension D (256 for the Tfd/Mlp decoders, 4 for the diffusion decoder Dfz).
    code_dim: int = 256
    #: Dimension c0 of SimVQ's frozen random templates (K x c0, N(0, 1)).
    template_dim: int = 256
    #: Conv3x3-GroupNorm-SiLU blocks in the feature encoder.
    encoder_layers: int = 3
    #: Hidden channels of the encoder; 0 = the VFM's channels.
    encoder_channels: int = 0
    #: Codebook = frozen templates times a learnable projection (SimVQ); False = a plain learnable codebook.
    simvq: bool = True
    #: Gumbel noise on the code similarities during pre-training.
    gumbel: bool = True
    #: Gumbel noise scale at the start of pre-training (log-cosine schedule).
    gumbel_scale_start: float = 1.0
    #: Gumbel noise scale at the end of pre-training.
    gumbel_scale_end: float = 2.35
    #: Decoder input ``alpha * z + (1 - alpha) * q`` with alpha annealed 1 -> 0; False = q alone.
    residual: bool = True
    #: Fraction of pre-training over which alpha anneals to 0.
    residual_anneal_fraction: float = 0.5
    #: Weight of MSE(q, sg(z)): what trains the codebook (0 switches it off).
    alignment_weight: float = 1.0
    #: Weight of MSE(z, sg(q)) (0 switches it off).
    commitment_weight: float = 0.25
    #: Weight of MSE(z, sg(groupnorm(z))) (0 switches it off).
    normalisation_weight: float = 0.1
    #: Seed of the frozen SimVQ templates (same seed -> same templates on every machine).
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("codebook_size", "code_dim", "template_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config key {name!r} must be at least 1, got {getattr(self, name)}")
        for name in ("encoder_layers", "encoder_channels"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config key {name!r} must not be negative, got {getattr(self, name)}")
        for name in ("gumbel_scale_start", "gumbel_scale_end"):
            if getattr(self, name) <= 0:
                raise ConfigError(
                    f"config key {name!r} must be positive (log-space schedule), got {getattr(self, name)}"
                )
        if not 0.0 <= self.residual_anneal_fraction <= 1.0:
            raise ConfigError(
                f"config key 'residual_anneal_fraction' must lie in [0, 1], got {self.residual_anneal_fraction}"
            )
        for name in ("alignment_weight", "commitment_weight", "normalisation_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config key {name!r} must not be negative, got {getattr(self, name)}")


@dataclass(frozen=True)
class DecoderConfig:
    """The decoder used only during quantizer pre-training (its reconstruction loss shapes the codes)."""

    #: ``pixels``: reconstruct the cached view image (the paper's choice); ``features``: the VFM map.
    target: Literal["pixels", "features"] = "pixels"
    #: Hidden channels of every decoder layer.
    channels: int = 128
    #: Side of the reconstructed image for ``target: pixels`` (the cached images' side).
    image_size: int = 128
    #: Conv3x3-GroupNorm-SiLU blocks per x2 upsampling stage of the pixel decoder.
    layers_per_stage: int = 1

    def __post_init__(self) -> None:
        for name in ("channels", "image_size", "layers_per_stage"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config key {name!r} must be at least 1, got {getattr(self, name)}")
