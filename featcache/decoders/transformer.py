"""Auto-regressive Transformer decoder (SLATE/SPOT style; VVO-Tfd), trained with teacher forcing.

The decoder reads the target map in a fixed order: step t sees a learned BOS and the targets read before it
(causal self-attention) plus all slots (cross-attention), and predicts the target at the t-th position of
the order. VVO reads in raster order (``orders: 1``); SPOT's Tfd9 (``orders: 9``) draws one of nine
orders per training sample (row- and column-major from each corner, and a spiral), each with its own BOS,
so the decoder cannot lean on one fixed neighbourhood of already-read tokens. Evaluation reads raster.
Target ``tokens`` predicts VQ indices with cross-entropy (VVO-Tfd); ``features`` regresses the VFM
features with MSE. Its masks are the last layer's cross-attention from each position to the slots, averaged
over heads (SPOT's decoder masks): ``mask_source: decoder`` scores them, the paper's ``attention`` the
slot attention.
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


#: Number of distinct orders ``token_orders`` knows.
MAX_ORDERS = 9


def _spiral(height: int, width: int) -> list[int]:
    """Raster indices clockwise from the top-left corner, outside in."""
    top, bottom, left, right = 0, height - 1, 0, width - 1
    order: list[int] = []
    while top <= bottom and left <= right:
        order += [top * width + column for column in range(left, right + 1)]
        order += [row * width + right for row in range(top + 1, bottom + 1)]
        if top < bottom:
            order += [bottom * width + column for column in range(right - 1, left - 1, -1)]
        if left < right:
            order += [row * width + left for row in range(bottom - 1, top, -1)]
        top, bottom, left, right = top + 1, bottom - 1, left + 1, right - 1
    return order


def token_orders(grid: tuple[int, int], count: int) -> torch.Tensor:
    """(count, h*w) int64: the first ``count`` reading orders of the grid, each a permutation of raster indices.

    Order 0 is raster (row-major from the top-left); then column-major from the top-left, row- and
    column-major from the other three corners, and a clockwise spiral from the top-left.
    """
    height, width = grid
    raster = torch.arange(height * width).reshape(height, width)  # (h, w) raster index of each cell
    orders = []
    for flip in ((), (0, 1), (1,), (0,)):  # start corner: top-left, bottom-right, top-right, bottom-left
        start = raster.flip(flip) if flip else raster
        orders += [start.reshape(-1), start.t().reshape(-1)]  # row-major, column-major from that corner
    orders.append(torch.tensor(_spiral(height, width)))
    return torch.stack(orders[:count])


@dataclass(frozen=True)
class TransformerDecoderConfig:
    """Pre-norm Transformer decoder stack (VVO-Tfd: 4 layers, width 256, 4 heads, feed-forward 1024)."""

    layers: int = 4
    dim: int = 256
    heads: int = 4
    feedforward: int = 1024
    dropout: float = 0.0
    #: Token orders drawn from in training: 1 = raster only (VVO), up to 9 (SPOT's Tfd9; see ``token_orders``).
    orders: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.orders <= MAX_ORDERS:
            raise ConfigError(f"config key 'decoder.tfd.orders' must lie in 1..{MAX_ORDERS}, got {self.orders}")
        for name in ("layers", "dim", "heads", "feedforward"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config key 'decoder.tfd.{name}' must be at least 1, got {getattr(self, name)}")
        if self.dim % self.heads != 0:
            raise ConfigError(f"config key 'decoder.tfd.heads'={self.heads} must divide decoder.tfd.dim={self.dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"config key 'decoder.tfd.dropout' must lie in [0, 1), got {self.dropout}")


class DecoderLayer(nn.Module):
    """Pre-norm Transformer decoder layer (causal self-attention, cross-attention to the slots, GELU
    feed-forward) that can return its cross-attention weights.

    Submodule names follow ``nn.TransformerDecoderLayer``, so its weights load into either.
    """

    def __init__(self, dim: int, heads: int, feedforward: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.multihead_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(dim, feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(feedforward, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(
        self, hidden: torch.Tensor, memory: torch.Tensor, causal_mask: torch.Tensor, return_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden (B, N, d), memory (B, S, d) -> hidden (B, N, d) and, if asked, cross-attention (B, N, S)."""
        normed = self.norm1(hidden)
        attended = self.self_attn(normed, normed, normed, attn_mask=causal_mask, is_causal=True, need_weights=False)[0]
        hidden = hidden + self.dropout1(attended)
        attended, attention = self.multihead_attn(
            self.norm2(hidden), memory, memory, need_weights=return_attention, average_attn_weights=True
        )  # attention (B, N, S): softmax over the slots, averaged over heads
        hidden = hidden + self.dropout2(attended)
        hidden = hidden + self.dropout3(self.linear2(self.dropout(F.gelu(self.linear1(self.norm3(hidden))))))
        return hidden, attention


class TransformerDecoder(SlotDecoder):
    """Teacher-forced causal decoder over the h*w target sequence in one of its reading orders, slots as
    cross-attention memory; predictions and masks come back in raster order."""

    returns_masks = True

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
        self.bos = nn.Parameter(torch.randn(config.orders, 1, dim) * 0.02)  # one BOS per order
        self.position_embedding = nn.Parameter(torch.randn(1, positions, dim) * 0.02)
        self.memory_projection = nn.Linear(slot_dim, dim) if slot_dim != dim else nn.Identity()
        self.layers = nn.ModuleList(
            DecoderLayer(dim, config.heads, config.feedforward, config.dropout) for _ in range(config.layers)
        )
        self.final_norm = nn.LayerNorm(dim)  # pre-norm layers leave the residual stream unnormalised
        # True above the diagonal = position t may not attend to positions > t.
        causal = torch.ones(positions, positions, dtype=torch.bool).triu(diagonal=1)
        self.register_buffer("causal_mask", causal, persistent=False)
        self.register_buffer("orders", token_orders(grid, config.orders), persistent=False)  # (orders, N)

    def draw_noise(self, batch_size: int, generator: torch.Generator | None, device: torch.device) -> dict[str, torch.Tensor]:
        """Training with several orders: one order index per sample (B,); none in eval mode or with one order."""
        if not self.training or self.orders.shape[0] == 1:
            return {}
        return {"order": torch.randint(0, self.orders.shape[0], (batch_size,), generator=generator, device=device)}

    def sequence(self, targets: DecoderTargets) -> torch.Tensor:
        """The target sequence: tokens (B, N) int64 or features (B, N, C)."""
        if self.target == "tokens":
            tokens = targets.tokens
            if tokens is None:
                raise FeatcacheError("decoder tfd with target tokens needs targets.tokens, got None")
            return tokens.flatten(1).long()  # (B, h, w) -> (B, N)
        return flat_target(targets, "features", "tfd")

    def predict(
        self, slots: torch.Tensor, targets: DecoderTargets, order: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced readout (B, N, K) logits or (B, N, C) features and the last layer's cross-attention
        (B, N, S), both in raster order; each position sees only the targets before it in its sample's
        reading order (``order``: (B,) indices into ``orders``; None = raster)."""
        sequence = self.sequence(targets)
        if self.target == "features":
            sequence = sequence.to(self.bos.dtype)
        if order is None:  # raster: no permutation (the hot path of VVO-Tfd, whose readout is B x N x 4096)
            reading = None
            ordered = sequence
            bos = self.bos[:1].expand(sequence.shape[0], -1, -1)  # (B, 1, d)
            positions = self.position_embedding  # (1, N, d)
        else:
            reading = self.orders[order]  # (B, N): raster index of the position read at each step
            if sequence.ndim == 2:
                ordered = sequence.gather(1, reading)  # (B, N) tokens in reading order
            else:
                ordered = sequence.gather(1, reading[..., None].expand_as(sequence))  # (B, N, C)
            bos = self.bos[order]  # (B, 1, d)
            positions = self.position_embedding[0][reading]  # (B, N, d): where each step's prediction goes
        embedded = self.input_embedding(ordered[:, :-1])  # (B, N - 1, d): shifted right by one
        hidden = torch.cat([bos, embedded], dim=1) + positions  # (B, N, d)
        memory = self.memory_projection(slots)  # (B, S, d)
        last = len(self.layers) - 1
        attention: torch.Tensor | None = None
        for index, layer in enumerate(self.layers):
            hidden, attention = layer(hidden, memory, self.causal_mask, return_attention=index == last)
        assert attention is not None
        prediction = self.readout(self.final_norm(hidden))  # (B, N, K or C) in reading order
        if reading is not None:
            raster = reading.argsort(dim=1)[..., None]  # (B, N, 1): step at which each raster position was read
            prediction = prediction.gather(1, raster.expand(-1, -1, prediction.shape[-1]))
            attention = attention.gather(1, raster.expand(-1, -1, attention.shape[-1]))
        return prediction, attention

    def forward(
        self, slots: torch.Tensor, targets: DecoderTargets, noise: dict[str, torch.Tensor] | None = None
    ) -> DecoderOutput:
        """``noise``: ``draw_noise``'s order per sample; without it, training draws orders from torch's generator."""
        order = (noise or {}).get("order")
        if order is None and self.training and self.orders.shape[0] > 1:
            order = self.draw_noise(slots.shape[0], None, slots.device)["order"]
        prediction, attention = self.predict(slots, targets, order)
        prediction = prediction.float()
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
        masks = attention.float().transpose(1, 2).reshape(batch_size, -1, height, width)  # (B, N, S) -> (B, S, h, w)
        return DecoderOutput(loss=loss, losses=losses, masks=masks, reconstruction=reconstruction)
