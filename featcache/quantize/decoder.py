"""Decoders used only to pre-train the quantizer: reconstruct the view image (paper) or the VFM map."""

from __future__ import annotations

import torch
from torch import nn

from featcache.errors import ConfigError
from featcache.quantize.encoder import conv_norm_activation


def upsampling_stages(grid_side: int, image_size: int) -> int:
    """Number of x2 stages from a ``grid_side`` map to an ``image_size`` image (16 -> 128: 3)."""
    ratio, remainder = divmod(image_size, grid_side)
    if remainder or ratio < 1 or ratio & (ratio - 1):
        raise ConfigError(
            f"decoder.image_size {image_size} must be the grid side {grid_side} times a power of two"
        )
    return ratio.bit_length() - 1


def pixel_targets(images: torch.Tensor) -> torch.Tensor:
    """Cached uint8 view images (B, I, I, 3) -> float32 (B, 3, I, I) in [-1, 1]: what ``PixelDecoder`` predicts."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (B, I, I, 3), got {tuple(images.shape)}")
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, I, I, 3) -> (B, 3, I, I)


class PixelDecoder(nn.Module):
    """Code map (B, D, h, h) -> normalised image (B, 3, S, S), S = ``image_size``.

    Conv3x3 D -> channels, then log2(S / h) stages of [nearest x2, ``layers_per_stage`` x (Conv3x3, GroupNorm(1),
    SiLU)], then Conv3x3 -> 3. The output is linear (not squashed): it is fitted by MSE to targets in [-1, 1].
    """

    def __init__(
        self, code_dim: int, grid_side: int, channels: int = 128, image_size: int = 128, layers_per_stage: int = 1
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self.input_conv = nn.Conv2d(code_dim, channels, kernel_size=3, padding=1)
        stages = []
        for _ in range(upsampling_stages(grid_side, image_size)):
            blocks = [conv_norm_activation(channels, channels) for _ in range(layers_per_stage)]
            stages.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), *blocks))
        self.stages = nn.Sequential(*stages)
        self.output_conv = nn.Conv2d(channels, 3, kernel_size=3, padding=1)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        hidden = self.input_conv(codes)  # (B, channels, h, h)
        hidden = self.stages(hidden)  # (B, channels, S, S)
        return self.output_conv(hidden)  # (B, 3, S, S)


class FeatureDecoder(nn.Module):
    """Code map (B, D, h, w) -> VFM features (B, h, w, C) channels-last, at the grid resolution.

    ``hidden_layers`` x [Conv3x3, GroupNorm(1), SiLU] (the first from D to ``channels``), then Conv1x1 to C
    (linear, since VFM features are unbounded).
    """

    def __init__(self, code_dim: int, feature_channels: int, channels: int = 128, hidden_layers: int = 3) -> None:
        super().__init__()
        blocks = [
            conv_norm_activation(code_dim if index == 0 else channels, channels) for index in range(hidden_layers)
        ]
        self.blocks = nn.Sequential(*blocks)
        self.output_conv = nn.Conv2d(channels if hidden_layers > 0 else code_dim, feature_channels, kernel_size=1)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        hidden = self.blocks(codes)  # (B, channels, h, w)
        features = self.output_conv(hidden)  # (B, C, h, w)
        return features.permute(0, 2, 3, 1)  # (B, C, h, w) -> (B, h, w, C)
