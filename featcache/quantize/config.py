"""Quantizer pre-training configs (VVO, arXiv 2502.20263): the VQ model and the decoder it is trained with.

Both are merged from YAML by :mod:`featcache.config`, so fields hold plain types only. Every trick of the
method has a switch here because the paper's ablation (Table 7) turns each off on its own:
``simvq``, ``gumbel``, ``residual`` and a zero weight for the alignment, commitment and normalisation losses.
Fields marked "VVO code" reproduce the official implementation (Genera1Z/VQ-VFM-OCL) where it departs from
featcache's own design; their defaults keep featcache's behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

from featcache.config import saved_before
from featcache.errors import ConfigError

EncoderLastBlock = Literal["conv_norm_activation", "conv"]
CodeSimilarity = Literal["squared_distance", "standardised_distance"]
GumbelScaling = Literal["noise", "similarities"]
CommitmentTarget = Literal["quantized", "residual"]
DecoderArchitecture = Literal["featcache", "vvo", "none"]
#: Quantizers of the registry (featcache.quantize.registry): VVO's single codebook, MSF's multi-scale fusion.
QuantizerKind = Literal["vvo", "msf"]


@dataclass(frozen=True)
class QuantizerConfig:
    """Encoder, codebook and quantizer losses; defaults follow the paper's DINOv2 ViT-S/14 setting."""

    #: Which quantizer (``vvo``: this class; ``msf``: :class:`featcache.quantize.msf.MSFQuantizerConfig`, whose
    #: extra keys become valid once ``kind: msf`` is set). Selected by name in YAML: ``quantizer.kind``.
    kind: QuantizerKind = "vvo"
    #: Number of codes K.
    codebook_size: int = 4096
    #: Code dimension D (256 for the Tfd/Mlp decoders, 4 for the diffusion decoder Dfz).
    code_dim: int = 256
    #: Dimension c0 of SimVQ's frozen random templates (K x c0, N(0, 1)).
    template_dim: int = 1024
    #: Conv3x3-GroupNorm-SiLU blocks in the feature encoder.
    encoder_layers: int = 3
    #: Hidden channels of the encoder; 0 = the VFM's channels.
    encoder_channels: int = 0
    #: The encoder's last block: ``conv_norm_activation`` like the others, or ``conv``, a plain Conv3x3 that
    #: feeds the closing GroupNorm directly (VVO code).
    encoder_last_block: EncoderLastBlock = "conv"
    #: Codebook = frozen templates times a learnable projection (SimVQ); False = a plain learnable codebook.
    simvq: bool = True
    #: Bias in SimVQ's projection W (VVO code: True); a plain codebook (simvq: false) has no projection.
    projection_bias: bool = True
    #: Similarity the noisy code choice is made on: ``squared_distance`` = -|z - c|^2;
    #: ``standardised_distance`` = (mu - |z - c|) / sigma with the chi distribution's mean and std for
    #: ``code_dim`` degrees of freedom (VVO code). Without noise both pick the nearest code.
    code_similarity: CodeSimilarity = "standardised_distance"
    #: Gumbel noise on the code similarities during pre-training.
    gumbel: bool = True
    #: What the scheduled Gumbel scale multiplies: ``noise`` (similarity + scale * G, more noise as it grows) or
    #: ``similarities`` (scale * similarity + G, an inverse temperature: less noise as it grows; VVO code).
    gumbel_scaling: GumbelScaling = "similarities"
    #: Gumbel scale at the start of pre-training (log-cosine schedule).
    gumbel_scale_start: float = 1.0
    #: Gumbel scale at the end of pre-training.
    gumbel_scale_end: float = 2.35
    #: Decoder input ``alpha * z + (1 - alpha) * q`` with alpha annealed 1 -> ``residual_alpha_end``;
    #: False = q alone.
    residual: bool = True
    #: Fraction of pre-training over which alpha anneals (cosine), then holds ``residual_alpha_end``.
    residual_anneal_fraction: float = 0.5
    #: Value alpha anneals to (VVO code: 0 for COCO/VOC, 1 = never anneals for ClevrTex/MOVi-D).
    residual_alpha_end: float = 0.0
    #: Weight of MSE(q, sg(z)): what trains the codebook (0 switches it off).
    alignment_weight: float = 1.0
    #: Target of the commitment loss: ``quantized`` MSE(z, sg(q)), or ``residual``
    #: MSE(z, sg(alpha * z + (1 - alpha) * q)), the decoder input's value (VVO code).
    commitment_target: CommitmentTarget = "residual"
    #: Weight of the commitment loss (0 switches it off).
    commitment_weight: float = 0.25
    #: Weight of MSE(z, sg(groupnorm(z))) (0 switches it off).
    normalisation_weight: float = 0.1
    #: Seed of the frozen SimVQ templates (same seed -> same templates on every machine).
    seed: int = 0

    #: The ``kind`` this class configures.
    KIND: ClassVar[str] = "vvo"

    def __post_init__(self) -> None:
        if self.kind != self.KIND:
            raise ConfigError(f"config key 'kind' {self.kind!r} needs the {self.kind} quantizer config, not {type(self).__name__}")
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
        for name in ("residual_anneal_fraction", "residual_alpha_end"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"config key {name!r} must lie in [0, 1], got {getattr(self, name)}")
        for name, kind in (
            ("encoder_last_block", EncoderLastBlock),
            ("code_similarity", CodeSimilarity),
            ("gumbel_scaling", GumbelScaling),
            ("commitment_target", CommitmentTarget),
        ):
            if getattr(self, name) not in get_args(kind):
                raise ConfigError(
                    f"config key {name!r} must be one of {', '.join(get_args(kind))}, got {getattr(self, name)!r}"
                )
        for name in ("alignment_weight", "commitment_weight", "normalisation_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config key {name!r} must not be negative, got {getattr(self, name)}")


@dataclass(frozen=True)
class VQDecoderConfig:
    """The decoder used only during quantizer pre-training (its reconstruction loss shapes the codes)."""

    #: ``pixels``: reconstruct the cached view image (the paper's choice); ``features``: the VFM map.
    target: Literal["pixels", "features"] = "pixels"
    #: Hidden channels of every decoder layer.
    channels: int = 128
    #: Side of the reconstructed image for ``target: pixels`` (the cached images' side).
    image_size: int = 128
    #: Conv3x3-GroupNorm-SiLU blocks per x2 upsampling stage of the pixel decoder.
    layers_per_stage: int = 1
    #: Pixel decoder network: ``featcache`` (Conv3x3 stages with nearest x2 upsampling) or ``vvo``, the official
    #: VVO decoder's architecture (1x1 stem with pixel shuffle, then TAESD's decoder body; x8 only, ``channels``
    #: is the stem width, official 256; ``layers_per_stage`` does not apply). Randomly initialised here, where
    #: the official code starts its TAESD part from the pretrained TAESD weights. ``none``: no decoder, for a
    #: quantizer imported from an official OCL checkpoint (which holds no decoder): it can tokenize, not train.
    architecture: DecoderArchitecture = "featcache"
    #: Width of the TAESD body of the ``vvo`` decoder (official 64).
    body_channels: int = 64

    def __post_init__(self) -> None:
        for name in ("channels", "image_size", "layers_per_stage", "body_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config key {name!r} must be at least 1, got {getattr(self, name)}")
        if self.architecture not in get_args(DecoderArchitecture):
            raise ConfigError(
                f"config key 'architecture' must be one of {', '.join(get_args(DecoderArchitecture))}, "
                f"got {self.architecture!r}"
            )
        if self.architecture == "vvo" and self.target != "pixels":
            raise ConfigError("config key 'architecture' vvo needs target: pixels (it is an image decoder)")


#: Before issue 12: every encoder block with GroupNorm and SiLU, a bias-free SimVQ projection, squared distances
#: with Gumbel noise scaled by the schedule, commitment to q.
saved_before(
    QuantizerConfig,
    {
        "encoder_last_block": "conv_norm_activation",
        "projection_bias": False,
        "code_similarity": "squared_distance",
        "gumbel_scaling": "noise",
        "residual_alpha_end": 0.0,
        "commitment_target": "quantized",
    },
)
saved_before(VQDecoderConfig, {"architecture": "featcache", "body_channels": 64})
