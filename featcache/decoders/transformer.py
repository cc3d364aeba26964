"""Auto-regressive Transformer decoder (SLATE/SPOT style; VVO-Tfd), trained with teacher forcing.

The decoder reads the target map in raster order: position t sees a learned BOS and the targets at
positions < t (causal self-attention) plus all slots (cross-attention), and predicts the target at t.
Target ``tokens`` predicts VQ indices with cross-entropy (VVO-Tfd); ``features`` regresses the VFM
features with MSE. It has no masks of its own: object masks come from the slot attention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from featcache.decoders.base import DecoderOutput, DecoderTargets, SlotDecoder
from featcache.decoders.mlp import flat_target
from featcache.errors import ConfigError, FeatcacheError


@dataclass(frozen=True)
class TransformerDecoderConfig:
    """Pre-norm Transformer decoder stack (VVO-Tfd: 4 layers, width 256, 4 heads, feed-forward 1024)."""

    layers: int = 4
    dim: int = 256
    heads: int = 4
    feedforward: int = 1024
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("layers", "dim", "heads", "feedforward"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config key 'decoder.tfd.{name}' must be at least 1, got {getattr(self, name)}")
        if self.dim % self.heads != 0:
            raise ConfigError(f"config key 'decoder.tfd.heads'={self.heads} must divide decoder.tfd.dim={self.dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"config key 'decoder.tfd.dropout' must lie in [0, 1), got {self.dropout}")


class TransformerDecoder(SlotDecoder):
    """Teacher-forced causal decoder over the h*w raster sequence, slots as cross-attention memory."""

    returns_masks = False

    def __init__(
        self,
        config: TransformerDecoderConfig,
        slot_dim: int,
        grid: tuple[int, int],
        target: Literal["tokens", "features"],
        feature_dim: int,
        codebook_size: int = 0,
    ) -> None:
        super().__init__()
        if target not in ("tokens", "features"):
            raise ConfigError(f"decoder tfd does not support target {target!r}; use tokens or features")
        if target == "tokens" and codebook_size < 1:
            raise FeatcacheError("decoder tfd with target tokens needs a codebook (codebook_size is 0)")
        self.grid = grid
        self.target = target
        self.needs = ("tokens",) if target == "tokens" else ("features",)
        dim = config.dim
        positions = grid[0] * grid[1]
        if target == "tokens":
            self.input_embedding: nn.Module = nn.Embedding(codebook_size, dim)
            self.readout = nn.Linear(dim, codebook_size)
        else:
            self.input_embedding = nn.Linear(feature_dim, dim)
            self.readout = nn.Linear(dim, feature_dim)
        self.bos = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.position_embedding = nn.Parameter(torch.randn(1, positions, dim) * 0.02)
        self.memory_projection = nn.Linear(slot_dim, dim) if slot_dim != dim else nn.Identity()
        self.layers = nn.ModuleList(
            nn.TransformerDecoderLayer(
                dim,
                config.heads,
                config.feedforward,
                dropout=config.dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(config.layers)
        )
        self.final_norm = nn.LayerNorm(dim)  # pre-norm layers leave the residual stream unnormalised
        # True above the diagonal = position t may not attend to positions > t.
        causal = torch.ones(positions, positions, dtype=torch.bool).triu(diagonal=1)
        self.register_buffer("causal_mask", causal, persistent=False)

    def sequence(self, targets: DecoderTargets) -> torch.Tensor:
        """The target sequence: tokens (B, N) int64 or features (B, N, C)."""
        if self.target == "tokens":
            tokens = targets.tokens
            if tokens is None:
                raise FeatcacheError("decoder tfd with target tokens needs targets.tokens, got None")
            return tokens.flatten(1).long()  # (B, h, w) -> (B, N)
        return flat_target(targets, "features", "tfd")

    def predict(self, slots: torch.Tensor, targets: DecoderTargets) -> torch.Tensor:
        """Teacher-forced readout (B, N, K) logits or (B, N, C) features; position t sees targets < t only."""
        sequence = self.sequence(targets)
        if self.target == "features":
            sequence = sequence.to(self.bos.dtype)
        embedded = self.input_embedding(sequence[:, :-1])  # (B, N - 1, d): shifted right by one
        bos = self.bos.expand(embedded.shape[0], -1, -1)  # (B, 1, d)
        hidden = torch.cat([bos, embedded], dim=1) + self.position_embedding  # (B, N, d)
        memory = self.memory_projection(slots)  # (B, S, d)
        for layer in self.layers:
            hidden = layer(hidden, memory, tgt_mask=self.causal_mask, tgt_is_causal=True)
        return self.readout(self.final_norm(hidden))

    def forward(
        self, slots: torch.Tensor, targets: DecoderTargets, noise: dict[str, torch.Tensor] | None = None
    ) -> DecoderOutput:
        """Deterministic: ``noise`` is unused (see SlotDecoder)."""
        prediction = self.predict(slots, targets).float()
        sequence = self.sequence(targets)
        batch_size = prediction.shape[0]
        height, width = self.grid
        if self.target == "tokens":
            loss = F.cross_entropy(prediction.flatten(0, 1), sequence.flatten())  # (B*N, K) vs (B*N,)
            losses = {"cross_entropy": loss.detach()}
            reconstruction = prediction.argmax(dim=-1).reshape(batch_size, height, width)
        else:
            loss = F.mse_loss(prediction, sequence.float())
            losses = {"mse_features": loss.detach()}
            reconstruction = prediction.reshape(batch_size, height, width, -1)
        return DecoderOutput(loss=loss, losses=losses, masks=None, reconstruction=reconstruction)
