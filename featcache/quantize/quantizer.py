"""The VVO vector quantizer: encoder + codebook, Gumbel-perturbed nearest-code search, STE and residual input."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from featcache.quantize.codebook import SimVQCodebook, nearest_codes
from featcache.quantize.config import QuantizerConfig
from featcache.quantize.encoder import FeatureEncoder
from featcache.quantize.schedules import gumbel_scale, residual_alpha


@dataclass
class QuantizerOutput:
    """One quantizer pass. Maps are (B, D, h, w); ``losses`` are unweighted (VQModel applies the weights)."""

    #: Encoder output.
    z: torch.Tensor
    #: Selected codes q (carry gradients to the codebook only).
    quantized: torch.Tensor
    #: What the decoder sees: straight-through q, mixed with z while the residual anneals (float32).
    decoder_input: torch.Tensor
    #: Selected code per position (B, h, w) int64.
    indices: torch.Tensor
    #: ``alignment`` MSE(q, sg(z)), ``commitment`` MSE(z, sg(q)), ``normalisation`` MSE(z, sg(groupnorm(z))).
    losses: dict[str, torch.Tensor]
    #: Gumbel noise scale used (0.0 when no noise was added).
    gumbel_scale: float
    #: Residual weight of z in the decoder input (0.0 when the residual is off).
    alpha: float


class VectorQuantizer(nn.Module):
    """Encoder + codebook; maps cached VFM features (B, h, w, C) to codes (B, D, h, w) and token indices (B, h, w)."""

    def __init__(self, config: QuantizerConfig, feature_channels: int) -> None:
        super().__init__()
        self.config = config
        self.encoder = FeatureEncoder(
            feature_channels,
            config.code_dim,
            layers=config.encoder_layers,
            hidden_channels=config.encoder_channels,
            last_block=config.encoder_last_block,
        )
        self.codebook = SimVQCodebook(
            config.codebook_size,
            config.code_dim,
            config.template_dim,
            simvq=config.simvq,
            seed=config.seed,
            bias=config.projection_bias,
        )

    def forward(
        self,
        features: torch.Tensor,
        progress: float,
        training_noise: bool,
        gumbel_noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> QuantizerOutput:
        """Quantize ``features`` at training ``progress`` in [0, 1]; Gumbel noise if ``training_noise`` and enabled.

        ``gumbel_noise`` (B, h, w, K) gives the Gumbel(0, 1) samples explicitly (to reproduce another
        implementation's noisy pass); otherwise they are drawn from ``generator`` (default: torch's global RNG).
        """
        config = self.config
        z = self.encoder(features)  # (B, D, h, w)
        batch, code_dim, height, width = z.shape
        noise_scale = (
            gumbel_scale(progress, config.gumbel_scale_start, config.gumbel_scale_end)
            if config.gumbel and training_noise
            else 0.0
        )
        # The search, the lookup and the losses run in float32 even under autocast: distances of
        # nearby codes differ by less than bfloat16 resolves.
        with torch.autocast(device_type=z.device.type, enabled=False):
            codes = self.codebook.codes().float()  # (K, D)
            z_full = z.float()
            z_vectors = z_full.permute(0, 2, 3, 1).reshape(-1, code_dim)  # (B, D, h, w) -> (B*h*w, D)
            flat_noise = None if gumbel_noise is None else gumbel_noise.reshape(-1, codes.shape[0])  # (B*h*w, K)
            flat_indices = nearest_codes(
                z_vectors,
                codes,
                gumbel_noise_scale=noise_scale,
                similarity=config.code_similarity,
                gumbel_scaling=config.gumbel_scaling,
                gumbel_noise=flat_noise,
                generator=generator,
            )  # (B*h*w,)
            quantized = codes[flat_indices].reshape(batch, height, width, code_dim).permute(0, 3, 1, 2)  # (B, D, h, w)
            alpha = (
                residual_alpha(progress, config.residual_anneal_fraction, config.residual_alpha_end)
                if config.residual
                else 0.0
            )
            # The decoder input's value, without gradient: z and q mixed by alpha (q alone once alpha reaches 0).
            mixed = (alpha * z_full + (1.0 - alpha) * quantized).detach() if alpha > 0 else quantized.detach()
            commitment_target = mixed if config.commitment_target == "residual" else quantized.detach()
            losses = {
                "alignment": F.mse_loss(quantized, z_full.detach()),
                "commitment": F.mse_loss(z_full, commitment_target),
                "normalisation": F.mse_loss(z_full, F.group_norm(z_full, 1).detach()),
            }
            # Straight-through: the value of the mix, the gradient of z (unscaled).
            decoder_input = z_full + (mixed - z_full).detach()
        return QuantizerOutput(
            z=z,
            quantized=quantized,
            decoder_input=decoder_input,
            indices=flat_indices.reshape(batch, height, width),
            losses=losses,
            gumbel_scale=noise_scale,
            alpha=alpha,
        )

    @torch.no_grad()
    def tokenize(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise-free tokens: indices (B, h, w) int64 and the squared L2 error to the chosen code (B, h, w) float32."""
        z = self.encoder(features)  # (B, D, h, w)
        batch, code_dim, height, width = z.shape
        with torch.autocast(device_type=z.device.type, enabled=False):
            codes = self.codebook.codes().float()  # (K, D)
            z_vectors = z.float().permute(0, 2, 3, 1).reshape(-1, code_dim)  # (B, D, h, w) -> (B*h*w, D)
            flat_indices = nearest_codes(z_vectors, codes)  # (B*h*w,)
            # Computed directly rather than from the expanded distance, which can cancel to below zero.
            squared_error = (z_vectors - codes[flat_indices]).pow(2).sum(dim=1)  # (B*h*w,)
        return flat_indices.reshape(batch, height, width), squared_error.reshape(batch, height, width)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Code map (B, D, h, w) float32 for token indices (B, h, w)."""
        with torch.autocast(device_type=indices.device.type, enabled=False):
            codes = self.codebook.codes().float()  # (K, D)
            return codes[indices].permute(0, 3, 1, 2)  # (B, h, w, D) -> (B, D, h, w)
