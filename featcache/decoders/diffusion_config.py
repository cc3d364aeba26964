"""Settings of the diffusion decoder (Dfz), kept apart from its model so configs load without it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DiffusionDecoderConfig:
    """DDPM on the quantized code map, conditioned on slots by cross-attention.

    timesteps: diffusion steps; beta_start/beta_end: scaled-linear noise schedule ends;
    unet_channels: base width of the conditional UNet; unet_levels: its resolution levels;
    heads: attention heads of the slot cross-attention.
    """

    timesteps: int = 1000
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    unet_channels: int = 64
    unet_levels: int = 2
    heads: int = 4
