"""The quantizer's encoder: a small CNN from the cached VFM map to the code space."""

from __future__ import annotations

import torch
from torch import nn


def conv_norm_activation(in_channels: int, out_channels: int) -> nn.Sequential:
    """Conv3x3 (same padding) -> GroupNorm with one group -> SiLU: the block every VVO conv stack is made of."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.GroupNorm(1, out_channels),
        nn.SiLU(),
    )


class FeatureEncoder(nn.Module):
    """VFM patch map (B, h, w, C) channels-last, as stored -> z (B, D, h, w).

    ``layers`` x [Conv3x3, GroupNorm(1), SiLU] -> GroupNorm(1) -> Conv1x1 to ``code_dim``.
    The closing GroupNorm keeps z at a fixed scale, which the normalisation loss relies on.
    ``last_block="conv"`` makes the last block a plain Conv3x3 that feeds the closing GroupNorm directly
    (the official VVO encoder); its weights keep the key ``blocks.{layers-1}.0``.
    """

    def __init__(
        self,
        feature_channels: int,
        code_dim: int,
        layers: int = 3,
        hidden_channels: int = 0,
        last_block: str = "conv_norm_activation",
    ) -> None:
        super().__init__()
        hidden = hidden_channels or feature_channels
        self.feature_channels = feature_channels
        blocks = [conv_norm_activation(feature_channels if index == 0 else hidden, hidden) for index in range(layers)]
        if layers > 0 and last_block == "conv":
            blocks[-1] = nn.Sequential(blocks[-1][0])  # keep only the Conv3x3
        self.blocks = nn.Sequential(*blocks)
        self.output_norm = nn.GroupNorm(1, hidden if layers > 0 else feature_channels)
        self.output_projection = nn.Conv2d(hidden if layers > 0 else feature_channels, code_dim, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 4 or features.shape[-1] != self.feature_channels:
            raise ValueError(
                f"expected VFM features (B, h, w, {self.feature_channels}) channels-last, got {tuple(features.shape)}"
            )
        # Cached features are float16; compute in the parameters' dtype (autocast still applies inside).
        features = features.to(self.output_projection.weight.dtype)
        hidden = features.permute(0, 3, 1, 2)  # (B, h, w, C) -> (B, C, h, w)
        hidden = self.blocks(hidden)  # (B, hidden, h, w)
        return self.output_projection(self.output_norm(hidden))  # (B, D, h, w)
