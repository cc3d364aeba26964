"""MSF: the multi-scale fused quantizer (Multi-Scale Fusion for Object Representation, ICLR 2025).

One encoder is applied to every level of a feature pyramid built from the cached patch-feature map (level
``i`` is ``2**-i`` the size of level 0). Every level is quantized twice:

* with the **shared** codebook, after *inter-scale fusion*: the encoder outputs of all levels are brought to
  level ``i``'s grid (finer levels by average pooling, coarser ones by nearest upsampling), each is matched
  against the shared codes, and at every position the level whose match is most confident (largest softmax
  probability of its best code) supplies the shared code and the encoder vector paired with it;
* with the level's own **specified** codebook (intra-scale detail), matched against level ``i`` only.

The two results are combined: ``average`` (official code, both codebooks of dimension D, code and encoder
vector are the means of the shared and specified parts) or ``halves`` (the paper's Algorithm 1: the shared
codebook quantizes the first D/2 channels, the specified one the last D/2, concatenated). Codebooks are SimVQ
codebooks like VVO's; the residual mix, straight-through estimator, Gumbel noise and losses are VVO's, applied
per level. Every trick has a switch in :class:`MSFQuantizerConfig`.

Pyramid op: ``bilinear`` (default) is the official op, ``F.interpolate(x, scale_factor=2**-i,
mode="bilinear")`` from the full-resolution input, here applied to the feature map instead of the image; at
x0.5 it equals 2x2 average pooling, at x0.25 it averages the central 2x2 of each 4x4 block. ``area`` averages
whole blocks (adaptive average pooling), the alias-free choice for feature maps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from featcache.errors import ConfigError
from featcache.quantize.codebook import SimVQCodebook, code_similarities
from featcache.quantize.config import QuantizerConfig, QuantizerKind
from featcache.quantize.encoder import FeatureEncoder
from featcache.quantize.schedules import gumbel_scale, residual_alpha

PyramidDownsample = Literal["bilinear", "area"]
CodeCombination = Literal["average", "halves"]


@dataclass(frozen=True)
class MSFQuantizerConfig(QuantizerConfig):
    """VVO's quantizer options (``codebook_size`` = the shared codebook's K) plus MSF's own switches."""

    kind: QuantizerKind = "msf"
    KIND: ClassVar[str] = "msf"
    #: Pyramid levels N (official 3).
    num_scales: int = 3
    #: Size of level 0's specified codebook; 0 = ``codebook_size``.
    specified_codebook_size: int = 0
    #: Level i's specified codebook has ``specified_codebook_size / 2**i`` codes (official: 256, 128, 64).
    specified_size_halving: bool = True
    #: One specified codebook per level; False = shared codebook only (one index per position).
    specified_codebooks: bool = True
    #: Inter-scale fusion of the shared match; False = each level matches the shared codebook on its own map.
    inter_scale_fusion: bool = True
    #: How shared and specified parts combine: ``average`` (official code) or ``halves`` (paper, Algorithm 1).
    combine: CodeCombination = "average"
    #: Pyramid op on the feature map (module docstring): ``bilinear`` (official) or ``area``.
    pyramid_downsample: PyramidDownsample = "bilinear"
    #: Temperature of Gumbel noise on the choice of level during training (official ``tau``; 0 = none).
    fusion_temperature: float = 0.0
    #: 0 = the encoder outputs ``code_dim`` channels (official msf configs, ``project=None``). Otherwise the
    #: encoder outputs ``encoder_dim`` channels E, lifted to the code space D by the least-squares
    #: pseudo-inverse of a learnable Linear(D -> E) before quantization and projected back by it after
    #: (official ``LinearPinv``); the decoder input then has E channels.
    encoder_dim: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_scales < 1:
            raise ConfigError(f"config key 'num_scales' must be at least 1, got {self.num_scales}")
        if self.specified_codebook_size < 0 or self.fusion_temperature < 0 or self.encoder_dim < 0:
            raise ConfigError("config keys 'specified_codebook_size', 'fusion_temperature' and 'encoder_dim' must not be negative")
        for name, kind in (("combine", CodeCombination), ("pyramid_downsample", PyramidDownsample)):
            if getattr(self, name) not in get_args(kind):
                raise ConfigError(f"config key {name!r} must be one of {', '.join(get_args(kind))}, got {getattr(self, name)!r}")
        if self.combine == "halves" and self.specified_codebooks and self.code_dim % 2:
            raise ConfigError(f"combine: halves needs an even code_dim, got {self.code_dim}")
        if self.specified_size_halving and self.specified_codebooks:
            smallest = self.specified_sizes()[-1]
            if smallest < 1:
                raise ConfigError(f"specified codebook of the last scale would have {smallest} codes")

    def specified_sizes(self) -> list[int]:
        """Codes in each level's specified codebook."""
        base = self.specified_codebook_size or self.codebook_size
        return [base // 2**i if self.specified_size_halving else base for i in range(self.num_scales)]

    def part_dim(self) -> int:
        """Dimension of each codebook's codes: D, or D/2 for ``halves`` with specified codebooks."""
        return self.code_dim // 2 if self.combine == "halves" and self.specified_codebooks else self.code_dim


@dataclass
class MSFQuantizerOutput:
    """One MSF pass; every list holds one entry per pyramid level (level 0 = full resolution)."""

    #: Encoder output of each level before fusion (B, E, h_i, w_i); E = D without the pseudo-inverse projection.
    raw_z: list[torch.Tensor]
    #: The encoder vector paired with each level's codes, which the losses and the STE use (B, D, h_i, w_i).
    z: list[torch.Tensor]
    #: Selected codes q (B, D, h_i, w_i), gradients to the codebooks only.
    quantized: list[torch.Tensor]
    #: Straight-through decoder input (B, E, h_i, w_i) float32 (projected back to E when ``encoder_dim`` is set).
    decoder_input: list[torch.Tensor]
    #: Indices (B, G, h_i, w_i) int64: channel 0 shared code, channel 1 the level's specified code (G = 2;
    #: G = 1 without specified codebooks).
    indices: list[torch.Tensor]
    #: Level that supplied the shared code at each position (B, h_i, w_i) int64.
    scale_choice: list[torch.Tensor]
    #: Unweighted ``alignment``, ``commitment``, ``normalisation``, summed over levels.
    losses: dict[str, torch.Tensor]
    #: The same per level.
    losses_per_scale: list[dict[str, torch.Tensor]] = field(default_factory=list)
    gumbel_scale: float = 0.0
    alpha: float = 0.0


def feature_pyramid(features: torch.Tensor, num_scales: int, mode: str = "bilinear") -> list[torch.Tensor]:
    """Levels (B, C, h_i, w_i) of a (B, C, h, w) map; level i from level 0 at scale ``2**-i`` (floor sizes)."""
    smallest = min(features.shape[-2:]) // 2 ** (num_scales - 1)
    if smallest < 1:
        raise ValueError(f"a {tuple(features.shape[-2:])} map is too small for {num_scales} pyramid levels")
    levels = [features]
    for i in range(1, num_scales):
        if mode == "bilinear":
            levels.append(F.interpolate(features, scale_factor=2.0**-i, mode="bilinear"))
        elif mode == "area":
            size = (features.shape[-2] // 2**i, features.shape[-1] // 2**i)
            levels.append(F.adaptive_avg_pool2d(features, size))
        else:
            raise ValueError(f"unknown pyramid op {mode!r}; expected bilinear or area")
    return levels


def align_to(level: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, D, h, w) -> (B, D, *size): average pooling when shrinking, nearest when growing (official ops).

    Size-based versions of ``avg_pool2d(2**k)`` and ``interpolate(scale_factor=2**k, mode="nearest")``; equal
    to them when the sizes are powers of two apart, and defined for other grids too.
    """
    if tuple(level.shape[-2:]) == tuple(size):
        return level
    if level.shape[-2] >= size[0] and level.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(level, size)
    return F.interpolate(level, size=size, mode="nearest")


def _match(
    vectors: torch.Tensor,
    codes: torch.Tensor,
    config: MSFQuantizerConfig,
    noise_scale: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(index (N,) int64, confidence (N,) float32) of the best code for vectors (N, d) among codes (K, d).

    confidence = the largest softmax probability over codes of the similarities (Gumbel-perturbed as in VVO
    when ``noise_scale`` > 0); the index is its argmax (the nearest code without noise).
    """
    with torch.no_grad():
        similarities = code_similarities(vectors.detach(), codes.detach(), config.code_similarity)  # (N, K)
        if noise_scale > 0:
            exponential = torch.empty_like(similarities).exponential_(generator=generator)
            gumbel = -exponential.clamp_min_(torch.finfo(torch.float32).tiny).log()
            if config.gumbel_scaling == "noise":
                similarities = similarities + noise_scale * gumbel
            else:
                similarities = noise_scale * similarities + gumbel
        confidence, index = similarities.softmax(dim=-1).max(dim=-1)  # (N,) (N,)
    return index, confidence


def fuse_shared(
    levels: list[torch.Tensor],
    target: int,
    codes: torch.Tensor,
    config: MSFQuantizerConfig,
    noise_scale: float = 0.0,
    fusion_noise: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inter-scale fusion for level ``target``: (shared index (B, h, w), paired z (B, d, h, w), level (B, h, w)).

    ``levels`` are the encoder outputs (B, d, h_j, w_j) of every level; ``codes`` (K, d) the shared codebook.
    """
    batch, dim, height, width = levels[target].shape
    if config.inter_scale_fusion:
        aligned = torch.stack([align_to(level, (height, width)) for level in levels])  # (S, B, d, h, w)
    else:
        aligned = levels[target][None]  # (1, B, d, h, w)
    count = aligned.shape[0]
    vectors = aligned.permute(0, 1, 3, 4, 2).reshape(-1, dim)  # (S*B*h*w, d)
    index, confidence = _match(vectors, codes, config, noise_scale, generator)
    index = index.reshape(count, batch, height, width)  # (S, B, h, w)
    confidence = confidence.reshape(count, batch, height, width)  # (S, B, h, w)
    if fusion_noise and config.fusion_temperature > 0:
        exponential = torch.empty_like(confidence).exponential_(generator=generator)
        confidence = confidence / config.fusion_temperature - exponential.clamp_min_(1e-38).log()
    choice = confidence.argmax(dim=0)  # (B, h, w), first level on ties
    shared_index = index.gather(0, choice[None])[0]  # (B, h, w)
    paired = aligned.gather(0, choice[None, :, None].expand(1, batch, dim, height, width))[0]  # (B, d, h, w)
    if not config.inter_scale_fusion:
        choice = torch.full_like(choice, target)
    return shared_index, paired, choice


class MSFQuantizer(nn.Module):
    """Encoder + shared and specified codebooks; cached features (B, h, w, C) -> codes at N pyramid levels."""

    def __init__(self, config: MSFQuantizerConfig, feature_channels: int) -> None:
        super().__init__()
        self.config = config
        self.encoder = FeatureEncoder(
            feature_channels,
            config.encoder_dim or config.code_dim,
            layers=config.encoder_layers,
            hidden_channels=config.encoder_channels,
            last_block=config.encoder_last_block,
        )
        part = config.part_dim()
        #: Linear(D -> E) whose pseudo-inverse lifts encoder outputs into the code space (bias starts at zero).
        self.projection: nn.Linear | None = None
        if config.encoder_dim:
            self.projection = nn.Linear(config.code_dim, config.encoder_dim)
            nn.init.zeros_(self.projection.bias)

        def codebook(size: int, offset: int) -> SimVQCodebook:
            return SimVQCodebook(
                size,
                part,
                config.template_dim,
                simvq=config.simvq,
                seed=config.seed + offset,
                bias=config.projection_bias,
            )

        self.shared = codebook(config.codebook_size, 0)
        self.specified = nn.ModuleList(
            [codebook(size, 1 + i) for i, size in enumerate(config.specified_sizes())] if config.specified_codebooks else []
        )

    def encode_pyramid(self, features: torch.Tensor) -> list[torch.Tensor]:
        """Encoder output (B, D, h_i, w_i) of every level of the pyramid of ``features`` (B, h, w, C)."""
        maps = features.to(self.encoder.output_projection.weight.dtype).permute(0, 3, 1, 2)  # (B, C, h, w)
        levels = feature_pyramid(maps, self.config.num_scales, self.config.pyramid_downsample)
        return [self.encoder(level.permute(0, 2, 3, 1)) for level in levels]  # (B, h_i, w_i, C) -> (B, D, h_i, w_i)

    def lift(self, z: torch.Tensor) -> torch.Tensor:
        """(B, E, h, w) -> (B, D, h, w): least-squares solution x of W x + b = z per position (identity if no projection)."""
        if self.projection is None:
            return z
        batch, _, height, width = z.shape
        weight, bias = self.projection.weight.float(), self.projection.bias.float()  # (E, D) (E,)
        rhs = (z.permute(0, 2, 3, 1) - bias).reshape(batch, height * width, -1).transpose(1, 2)  # (B, E, h*w)
        solution = torch.linalg.lstsq(weight[None], rhs).solution  # (B, D, h*w)
        return solution.reshape(batch, -1, height, width)

    def project_down(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) -> (B, E, h, w) through the projection (identity if none)."""
        if self.projection is None:
            return x
        weight, bias = self.projection.weight.float(), self.projection.bias.float()
        return F.linear(x.permute(0, 2, 3, 1), weight, bias).permute(0, 3, 1, 2)

    def _quantize_levels(
        self,
        raw: list[torch.Tensor],
        noise_scale: float,
        fusion_noise: bool,
        generator: torch.Generator | None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """(z, q, indices (B, G, h, w), level choice) per level from float32 encoder outputs (B, D, h_i, w_i)."""
        config = self.config
        halves = config.combine == "halves" and config.specified_codebooks
        part = config.part_dim()
        shared_inputs = [level[:, :part] for level in raw] if halves else raw
        shared_codes = self.shared.codes().float()  # (K, d)
        # All shared matches first, then the specified ones: the official order of random draws, so that a
        # seeded generator reproduces its noisy training pass.
        shared = [
            fuse_shared(shared_inputs, i, shared_codes, config, noise_scale, fusion_noise, generator) for i in range(len(raw))
        ]  # per level: (index (B, h, w), paired z (B, d, h, w), level choice (B, h, w))
        zs, qs, indices = [], [], []
        for i, (level, (shared_index, shared_z, _)) in enumerate(zip(raw, shared)):
            shared_q = shared_codes[shared_index].permute(0, 3, 1, 2)  # (B, h, w, d) -> (B, d, h, w)
            if not config.specified_codebooks:
                z, q, index = shared_z, shared_q, shared_index[:, None]
            else:
                codes = self.specified[i].codes().float()  # (K_i, d)
                own = level[:, part:] if halves else level  # (B, d, h, w)
                batch, _, height, width = own.shape
                own_index, _ = _match(own.permute(0, 2, 3, 1).reshape(-1, part), codes, config, noise_scale, generator)
                own_index = own_index.reshape(batch, height, width)
                own_q = codes[own_index].permute(0, 3, 1, 2)  # (B, d, h, w)
                if halves:
                    z, q = torch.cat([shared_z, own], 1), torch.cat([shared_q, own_q], 1)
                else:
                    z, q = (shared_z + own) / 2, (shared_q + own_q) / 2
                index = torch.stack([shared_index, own_index], 1)  # (B, 2, h, w)
            zs.append(z)
            qs.append(q)
            indices.append(index)
        choices = [choice for _, _, choice in shared]
        return zs, qs, indices, choices

    def forward(
        self,
        features: torch.Tensor,
        progress: float,
        training_noise: bool,
        generator: torch.Generator | None = None,
    ) -> MSFQuantizerOutput:
        """Quantize every level of ``features`` (B, h, w, C) at training ``progress`` in [0, 1]."""
        config = self.config
        raw = self.encode_pyramid(features)
        noise_scale = gumbel_scale(progress, config.gumbel_scale_start, config.gumbel_scale_end) if config.gumbel and training_noise else 0.0
        alpha = residual_alpha(progress, config.residual_anneal_fraction, config.residual_alpha_end) if config.residual else 0.0
        with torch.autocast(device_type=raw[0].device.type, enabled=False):
            raw32 = [self.lift(level.float()) for level in raw]  # (B, D, h_i, w_i)
            zs, qs, indices, choices = self._quantize_levels(raw32, noise_scale, training_noise, generator)
            decoder_inputs, per_scale = [], []
            for z, q in zip(zs, qs):
                mixed = (alpha * z + (1.0 - alpha) * q).detach() if alpha > 0 else q.detach()
                target = mixed if config.commitment_target == "residual" else q.detach()
                per_scale.append(
                    {
                        "alignment": F.mse_loss(q, z.detach()),
                        "commitment": F.mse_loss(z, target),
                        "normalisation": F.mse_loss(z, F.group_norm(z, 1).detach()),
                    }
                )
                decoder_inputs.append(self.project_down(z + (mixed - z).detach()))
        losses = {name: torch.stack([terms[name] for terms in per_scale]).sum() for name in per_scale[0]}
        return MSFQuantizerOutput(
            raw_z=raw,
            z=zs,
            quantized=qs,
            decoder_input=decoder_inputs,
            indices=indices,
            scale_choice=choices,
            losses=losses,
            losses_per_scale=per_scale,
            gumbel_scale=noise_scale,
            alpha=alpha,
        )

    @torch.no_grad()
    def tokenize(self, features: torch.Tensor, scale: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise-free tokens of level ``scale``: indices (B, G, h, w) int64 and squared |z - q|^2 (B, h, w) in code space."""
        raw = self.encode_pyramid(features)
        with torch.autocast(device_type=raw[0].device.type, enabled=False):
            raw = [self.lift(level.float()) for level in raw]
            zs, qs, indices, _ = self._quantize_levels(raw, 0.0, False, None)
            squared_error = (zs[scale] - qs[scale]).pow(2).sum(dim=1)  # (B, h, w)
        return indices[scale], squared_error

    def lookup(self, indices: torch.Tensor, scale: int = 0) -> torch.Tensor:
        """What the decoder sees for level ``scale``'s indices (B, G, h, w): codes (B, E, h, w) float32, projected."""
        with torch.autocast(device_type=indices.device.type, enabled=False):
            shared = self.shared.codes().float()[indices[:, 0]].permute(0, 3, 1, 2)  # (B, d, h, w)
            if not self.config.specified_codebooks:
                return self.project_down(shared)
            own = self.specified[scale].codes().float()[indices[:, 1]].permute(0, 3, 1, 2)  # (B, d, h, w)
            if self.config.combine == "halves":
                return self.project_down(torch.cat([shared, own], 1))
            return self.project_down((shared + own) / 2)
