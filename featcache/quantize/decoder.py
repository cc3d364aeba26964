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


class TinyResidualBlock(nn.Module):
    """ReLU(x + Conv3x3-ReLU-Conv3x3-ReLU-Conv3x3(x)) at constant width: the block of TAESD's decoder."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
        )
        self.fuse = nn.ReLU()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(hidden) + hidden)


class VVOPixelDecoder(nn.Module):
    """Code map (B, D, h, w) -> image (B, 3, 8h, 8w): the architecture of the official VVO pre-training decoder.

    Stem (1x1 convolutions): Conv D -> C; Conv C -> C, GroupNorm(1), SiLU; Conv C -> 4b and pixel shuffle x2
    (b channels), GroupNorm(1), SiLU; Conv b -> b, GroupNorm(1), SiLU. Body (TAESD's decoder without its first
    convolution and first upsampling): 3 blocks; Conv3x3; 3 blocks; nearest x2; Conv3x3; 3 blocks; nearest x2;
    Conv3x3; 1 block; Conv3x3 -> 3 (the body's inner Conv3x3s have no bias). Output ``2 * body - 1``.
    C = ``channels``, b = ``body_channels``.
    """

    def __init__(self, code_dim: int, channels: int = 256, body_channels: int = 64) -> None:
        super().__init__()
        body = body_channels
        self.stem = nn.Sequential(
            nn.Conv2d(code_dim, channels, kernel_size=1),
            nn.Conv2d(channels, channels, kernel_size=1),
            nn.GroupNorm(1, channels),
            nn.SiLU(),
            nn.Conv2d(channels, body * 4, kernel_size=1),
            nn.PixelShuffle(2),
            nn.GroupNorm(1, body),
            nn.SiLU(),
            nn.Conv2d(body, body, kernel_size=1),
            nn.GroupNorm(1, body),
            nn.SiLU(),
        )

        def blocks(count: int) -> list[nn.Module]:
            return [TinyResidualBlock(body) for _ in range(count)]

        def plain_conv() -> nn.Conv2d:
            return nn.Conv2d(body, body, kernel_size=3, padding=1, bias=False)

        self.body = nn.Sequential(
            *blocks(3),
            plain_conv(),
            *blocks(3),
            nn.Upsample(scale_factor=2, mode="nearest"),
            plain_conv(),
            *blocks(3),
            nn.Upsample(scale_factor=2, mode="nearest"),
            plain_conv(),
            *blocks(1),
            nn.Conv2d(body, 3, kernel_size=3, padding=1),
        )

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        hidden = self.stem(codes)  # (B, D, h, w) -> (B, b, 2h, 2w)
        return self.body(hidden) * 2.0 - 1.0  # (B, 3, 8h, 8w)


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
