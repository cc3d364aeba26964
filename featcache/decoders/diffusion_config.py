"""Settings of the diffusion decoder (Dfz), kept apart from its model so configs load without it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from featcache.config import saved_before
from featcache.errors import ConfigError

UNETS = ("featcache", "sd")


@dataclass(frozen=True)
class DiffusionDecoderConfig:
    """DDPM on the quantized code map, conditioned on slots by cross-attention.

    timesteps: diffusion steps; beta_start/beta_end: scaled-linear noise schedule ends;
    unet: ``featcache`` (one ResBlock + slot cross-attention per level, widths ``unet_channels * 2**level``)
    or ``sd`` (Stable Diffusion's conditional UNet, the backbone of the official VVO-Dfz: per level
    ``sd_layers`` ResBlocks, each followed by a spatial transformer with self-attention, cross-attention to
    the slots and a GEGLU feed-forward where ``sd_cross_attention`` says so; a ResBlock-transformer-ResBlock
    middle; the up path mirrors the down path with one more ResBlock per level);
    unet_channels/unet_levels: width and depth of the ``featcache`` UNet;
    heads: attention heads of every slot (and, for ``sd``, self-) attention;
    sd_channels: widths of the ``sd`` levels; sd_cross_attention: which ``sd`` down levels carry transformers
    (the up path mirrors them); sd_layers: ResBlocks per ``sd`` down level; sd_transformer_layers: layers per
    spatial transformer; sd_norm_groups: GroupNorm groups of the ``sd`` UNet;
    dropout: dropout inside every ResBlock (between its two convolutions).
    """

    timesteps: int = 1000
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    unet: Literal["featcache", "sd"] = "sd"
    unet_channels: int = 64
    unet_levels: int = 2
    heads: int = 8
    sd_channels: tuple[int, ...] = (128, 256, 384, 512)
    sd_cross_attention: tuple[bool, ...] = (False, True, True, True)
    sd_layers: int = 2
    sd_transformer_layers: int = 1
    sd_norm_groups: int = 32
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.unet not in UNETS:
            raise ConfigError(f"config key 'decoder.dfz.unet' must be one of {', '.join(UNETS)}, got {self.unet!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"config key 'decoder.dfz.dropout' must be in [0, 1), got {self.dropout}")
        if self.unet == "sd":
            self._check_sd()

    def _check_sd(self) -> None:
        """The ``sd`` UNet's widths must suit its GroupNorms, heads and sinusoidal time embedding."""
        for name in ("heads", "sd_layers", "sd_transformer_layers", "sd_norm_groups"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config key 'decoder.dfz.{name}' must be at least 1, got {getattr(self, name)}")
        if not self.sd_channels or len(self.sd_cross_attention) != len(self.sd_channels):
            raise ConfigError(
                f"config keys 'decoder.dfz.sd_channels' and 'decoder.dfz.sd_cross_attention' need one entry per "
                f"level, got {len(self.sd_channels)} and {len(self.sd_cross_attention)}"
            )
        if self.sd_channels[0] % 2:
            raise ConfigError(
                f"config key 'decoder.dfz.sd_channels' must start with an even width, got {self.sd_channels[0]}"
            )
        last = len(self.sd_channels) - 1
        for level, channels in enumerate(self.sd_channels):
            attends = self.sd_cross_attention[level] or level == last  # the middle block attends too
            if channels < 1 or channels % self.sd_norm_groups or (attends and channels % self.heads):
                raise ConfigError(
                    f"config key 'decoder.dfz.sd_channels' holds {channels}: every width must be divisible by "
                    f"sd_norm_groups={self.sd_norm_groups}, and by heads={self.heads} where the level attends"
                )


#: Before issue 12: featcache's own UNet, no dropout (heads were saved).
saved_before(DiffusionDecoderConfig, {"unet": "featcache", "dropout": 0.0})
