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

The defaults are featcache's own decoder; the options of ``TransformerDecoderConfig`` reproduce the official
VVO one (``ARTransformerDecoder`` of Genera1Z/VQ-VFM-OCL: frozen code vectors as inputs, no biases, the first
norm applied to the input sequence, no final norm, its initialisations) and SPOT's list of orders.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from featcache.config import saved_before
from featcache.decoders.base import DecoderOutput, DecoderTargets, SlotDecoder
from featcache.decoders.mlp import flat_target
from featcache.errors import ConfigError, FeatcacheError

#: Number of distinct orders ``token_orders`` knows.
MAX_ORDERS = 9

#: Sets of nine orders: featcache's own and SPOT's (gkakogeorgiou/spot, ``SPOT.permutations``).
ORDER_SETS = ("featcache", "spot")


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


def token_orders(grid: tuple[int, int], count: int, order_set: str = "featcache") -> torch.Tensor:
    """(count, h*w) int64: the first ``count`` reading orders of the grid, each a permutation of raster indices.

    ``featcache``: raster (row-major from the top-left); column-major from the top-left; row- and column-major
    from the bottom-right, top-right and bottom-left corners; a clockwise spiral from the top-left, outside in.
    ``spot``: SPOT's list, the same eight corner orders in another sequence (top-left row, column; top-right
    column, row; bottom-right column, row; bottom-left column, row) and, ninth, a counter-clockwise spiral from
    the centre that ends at the top-right corner (the clockwise inward spiral from that corner, reversed).
    SPOT builds square grids only; ``spot`` extends the same rules to rectangles.
    """
    if order_set not in ORDER_SETS:
        raise ConfigError(f"config key 'decoder.tfd.order_set' must be one of {list(ORDER_SETS)}, got {order_set!r}")
    height, width = grid
    raster = torch.arange(height * width).reshape(height, width)  # (h, w) raster index of each cell
    if order_set == "featcache":
        orders = []
        for flip in ((), (0, 1), (1,), (0,)):  # start corner: top-left, bottom-right, top-right, bottom-left
            start = raster.flip(flip) if flip else raster
            orders += [start.reshape(-1), start.t().reshape(-1)]  # row-major, column-major from that corner
        orders.append(torch.tensor(_spiral(height, width)))
    else:
        orders = [raster.reshape(-1), raster.t().reshape(-1)]
        for flip in ((1,), (0, 1), (0,)):  # start corner: top-right, bottom-right, bottom-left
            start = raster.flip(flip)
            orders += [start.t().reshape(-1), start.reshape(-1)]  # column-major, then row-major from that corner
        turned = torch.rot90(raster, 1).reshape(-1)  # (w*h,) the grid turned a quarter anticlockwise: top-right first
        orders.append(turned[_spiral(width, height)].flip(0))  # clockwise inward from the top-right, reversed
    return torch.stack(orders[:count])


#: Valid values of the string options of ``TransformerDecoderConfig``.
CHOICES: dict[str, tuple[str, ...]] = {
    "order_set": ORDER_SETS,
    "order_draw": ("sample", "batch"),
    "input_embedding": ("learned", "codes"),
    "first_norm": ("layer", "input"),
    "bos_init": ("normal_0.02", "normal_inv_sqrt_dim"),
    "position_init": ("normal_0.02", "trunc_normal_1"),
    "layer_init": ("independent", "cloned"),
}


@dataclass(frozen=True)
class TransformerDecoderConfig:
    """Pre-norm Transformer decoder stack (VVO-Tfd: 4 layers, width 256, 4 heads, feed-forward 1024).

    The defaults after ``orders`` are featcache's own decoder; the official VVO decoder is ``input_embedding:
    codes, bias: false, first_norm: input, final_norm: false, readout_bias: false, bos_init:
    normal_inv_sqrt_dim, position_init: trunc_normal_1, layer_init: cloned``.
    """

    layers: int = 4
    dim: int = 256
    heads: int = 4
    feedforward: int = 1024
    dropout: float = 0.0
    #: Token orders drawn from in training: 1 = raster only (VVO), up to 9 (SPOT's Tfd9; see ``token_orders``).
    orders: int = 1
    #: Which list of nine orders ``orders`` takes its first entries from: ``featcache`` or ``spot`` (SPOT's).
    order_set: Literal["featcache", "spot"] = "featcache"
    #: Training draws an order per ``sample``, or one per ``batch`` (SPOT: one ``random.choice`` per step).
    order_draw: Literal["sample", "batch"] = "sample"
    #: What the decoder reads at each step (target ``tokens``): a ``learned`` embedding of the previous token,
    #: or its frozen VQ ``codes`` vector (VVO: the quantizer's output), projected when the code width != dim.
    input_embedding: Literal["learned", "codes"] = "codes"
    #: Biases in the attention, feed-forward and LayerNorms of every layer (VVO: none).
    bias: bool = False
    #: First LayerNorm: inside the ``layer`` (each layer's self-attention input) or on the ``input`` sequence
    #: before the stack, so the residual stream starts normalised (VVO: its first layer's norm moved out).
    first_norm: Literal["layer", "input"] = "input"
    #: LayerNorm after the last layer, before the readout (VVO: none).
    final_norm: bool = False
    #: Bias of the readout Linear (VVO: none).
    readout_bias: bool = False
    #: BOS initialisation: N(0, 0.02^2), or N(0, 1/dim) (VVO).
    bos_init: Literal["normal_0.02", "normal_inv_sqrt_dim"] = "normal_inv_sqrt_dim"
    #: Position embedding initialisation: N(0, 0.02^2), or N(0, 1) truncated to [-2, 2] (VVO).
    position_init: Literal["normal_0.02", "trunc_normal_1"] = "trunc_normal_1"
    #: Layers initialised ``independent``ly or as copies of one ``cloned`` layer (nn.TransformerDecoder's
    #: deep copies, which VVO uses).
    layer_init: Literal["independent", "cloned"] = "cloned"

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
        for name, valid in CHOICES.items():
            if getattr(self, name) not in valid:
                value = getattr(self, name)
                raise ConfigError(f"config key 'decoder.tfd.{name}' must be one of {list(valid)}, got {value!r}")


class DecoderLayer(nn.Module):
    """Pre-norm Transformer decoder layer (causal self-attention, cross-attention to the slots, GELU
    feed-forward) that can return its cross-attention weights.

    Submodule names follow ``nn.TransformerDecoderLayer``, so its weights load into either. ``bias=False``
    drops every bias (attention, feed-forward, LayerNorms), as that class does; ``first_norm=False`` leaves
    the self-attention input unnormalised (``norm1`` is an identity: the decoder normalises its input instead).
    """

    def __init__(
        self, dim: int, heads: int, feedforward: int, dropout: float, bias: bool = True, first_norm: bool = True
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, bias=bias, batch_first=True)
        self.multihead_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, bias=bias, batch_first=True)
        self.linear1 = nn.Linear(dim, feedforward, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(feedforward, dim, bias=bias)
        self.norm1: nn.Module = nn.LayerNorm(dim, bias=bias) if first_norm else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, bias=bias)
        self.norm3 = nn.LayerNorm(dim, bias=bias)
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
        codebook_size: int | Sequence[int] = 0,
        code_dim: int = 0,
    ) -> None:
        """``code_dim``: width of the codebook vectors read with ``input_embedding: codes`` (0: equal to dim).

        ``codebook_size`` as a sequence [K_0, K_1, ...]: tokens carry one index per codebook (MSF token sets:
        (B, G, h, w), [shared, specified]); the readout has sum(K_g) logits and the loss is the sum of the
        per-codebook cross-entropies, as the official MultiScaleFusion SLATE (``CrossEntropyLossGrouped``).
        The steps then read the fused code vectors (``input_embedding: codes``).
        """
        super().__init__()
        if target not in ("tokens", "features"):
            raise ConfigError(f"decoder tfd does not support target {target!r}; use tokens or features")
        self.groups = [int(size) for size in codebook_size] if isinstance(codebook_size, Sequence) else []
        codebook_size = sum(self.groups) if self.groups else int(codebook_size)  # type: ignore[arg-type]
        if target == "tokens" and codebook_size < 1:
            raise FeatcacheError("decoder tfd with target tokens needs a codebook (codebook_size is 0)")
        if self.groups and config.input_embedding != "codes":
            raise ConfigError("decoder tfd reads multi-codebook (MSF) tokens through their fused codes: set decoder.tfd.input_embedding=codes")
        self.input_codes = config.input_embedding == "codes"
        if self.input_codes and target != "tokens":
            raise ConfigError(
                f"config key 'decoder.tfd.input_embedding' codes needs decoder.target tokens, got {target!r}"
            )
        self.grid = grid
        self.target = target
        self.needs = ("tokens", "codes") if self.input_codes else ("tokens",) if target == "tokens" else ("features",)
        self.order_draw = config.order_draw
        dim = config.dim
        self.code_dim = code_dim or dim
        positions = grid[0] * grid[1]
        if target == "tokens":
            if self.input_codes:  # frozen codebook vectors, projected only when their width differs
                self.input_embedding: nn.Module = (
                    nn.Linear(self.code_dim, dim, bias=config.bias) if self.code_dim != dim else nn.Identity()
                )
            else:
                self.input_embedding = nn.Embedding(codebook_size, dim)
            self.readout = nn.Linear(dim, codebook_size, bias=config.readout_bias)
        else:
            self.input_embedding = nn.Linear(feature_dim, dim)
            self.readout = nn.Linear(dim, feature_dim, bias=config.readout_bias)
        bos_std = 0.02 if config.bos_init == "normal_0.02" else dim**-0.5
        self.bos = nn.Parameter(torch.randn(config.orders, 1, dim) * bos_std)  # one BOS per order
        if config.position_init == "normal_0.02":
            position_embedding = torch.randn(1, positions, dim) * 0.02
        else:
            position_embedding = nn.init.trunc_normal_(torch.empty(1, positions, dim), std=1.0, a=-2.0, b=2.0)
        self.position_embedding = nn.Parameter(position_embedding)  # (1, N, d)
        self.memory_projection = nn.Linear(slot_dim, dim) if slot_dim != dim else nn.Identity()
        # first_norm "input": the first layer's self-attention norm moves onto the input sequence (input_norm).
        self.input_norm: nn.Module = (
            nn.LayerNorm(dim, bias=config.bias) if config.first_norm == "input" else nn.Identity()
        )
        self.layers = nn.ModuleList(
            DecoderLayer(
                dim, config.heads, config.feedforward, config.dropout, config.bias,
                first_norm=index > 0 or config.first_norm == "layer",
            )
            for index in range(config.layers)
        )
        if config.layer_init == "cloned":  # every layer starts as a copy of the last one (which has all norms)
            template = dict(self.layers[-1].named_parameters())
            with torch.no_grad():
                for layer in self.layers[:-1]:
                    for name, parameter in layer.named_parameters():
                        parameter.copy_(template[name])
        # Pre-norm layers leave the residual stream unnormalised; VVO reads it out as it is.
        self.final_norm: nn.Module = nn.LayerNorm(dim, bias=config.bias) if config.final_norm else nn.Identity()
        # True above the diagonal = position t may not attend to positions > t.
        causal = torch.ones(positions, positions, dtype=torch.bool).triu(diagonal=1)
        self.register_buffer("causal_mask", causal, persistent=False)
        orders = token_orders(grid, config.orders, config.order_set)  # (orders, N)
        self.register_buffer("orders", orders, persistent=False)

    def draw_noise(self, batch_size: int, generator: torch.Generator | None, device: torch.device) -> dict[str, torch.Tensor]:
        """Training with several orders: an order index per sample (B,), one shared by the batch with
        ``order_draw: batch``; none in eval mode or with one order."""
        if not self.training or self.orders.shape[0] == 1:
            return {}
        draws = 1 if self.order_draw == "batch" else batch_size
        order = torch.randint(0, self.orders.shape[0], (draws,), generator=generator, device=device)
        return {"order": order.expand(batch_size).contiguous()}

    def sequence(self, targets: DecoderTargets) -> torch.Tensor:
        """The target sequence: tokens (B, N) int64 or features (B, N, C)."""
        if self.target == "tokens":
            tokens = targets.tokens
            if tokens is None:
                raise FeatcacheError("decoder tfd with target tokens needs targets.tokens, got None")
            if self.groups:
                if tokens.ndim != 4 or tokens.shape[1] != len(self.groups):
                    raise FeatcacheError(f"decoder tfd predicts {len(self.groups)} indices per position; tokens must be (B, {len(self.groups)}, h, w), got {tuple(tokens.shape)}")
                return tokens.flatten(2).transpose(1, 2).long()  # (B, G, h, w) -> (B, N, G)
            return tokens.flatten(1).long()  # (B, h, w) -> (B, N)
        return flat_target(targets, "features", "tfd")

    def inputs(self, targets: DecoderTargets) -> torch.Tensor:
        """What the steps read, in raster order: tokens (B, N) int64, or code vectors / features (B, N, C)."""
        if not self.input_codes:
            sequence = self.sequence(targets)
            return sequence if self.target == "tokens" else sequence.to(self.bos.dtype)
        codes = targets.codes
        if codes is None:
            raise FeatcacheError("decoder tfd with input_embedding codes needs targets.codes, got None")
        if codes.shape[-1] != self.code_dim:
            raise FeatcacheError(f"decoder tfd reads code vectors of width {self.code_dim}, got {codes.shape[-1]}")
        return codes.flatten(1, -2).to(self.bos.dtype)  # (B, h, w, D) -> (B, N, D)

    def predict(
        self, slots: torch.Tensor, targets: DecoderTargets, order: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced readout (B, N, K) logits or (B, N, C) features and the last layer's cross-attention
        (B, N, S), both in raster order; each position sees only the targets before it in its sample's
        reading order (``order``: (B,) indices into ``orders``; None = raster)."""
        read = self.inputs(targets)  # (B, N) tokens or (B, N, C) vectors, raster order
        if order is None:  # raster: no permutation (the hot path of VVO-Tfd, whose readout is B x N x 4096)
            reading = None
            ordered = read
            bos = self.bos[:1].expand(read.shape[0], -1, -1)  # (B, 1, d)
            positions = self.position_embedding  # (1, N, d)
        else:
            reading = self.orders[order]  # (B, N): raster index of the position read at each step
            if read.ndim == 2:
                ordered = read.gather(1, reading)  # (B, N) tokens in reading order
            else:
                ordered = read.gather(1, reading[..., None].expand_as(read))  # (B, N, C)
            bos = self.bos[order]  # (B, 1, d)
            positions = self.position_embedding[0][reading]  # (B, N, d): where each step's prediction goes
        embedded = self.input_embedding(ordered[:, :-1])  # (B, N - 1, d): shifted right by one
        hidden = self.input_norm(torch.cat([bos, embedded], dim=1) + positions)  # (B, N, d)
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
        if self.target == "tokens" and self.groups:  # one readout slice and cross-entropy per codebook, summed
            slices = prediction.split(self.groups, dim=-1)  # G x (B, N, K_g)
            terms = [F.cross_entropy(logits.flatten(0, 1), sequence[..., g].flatten()) for g, logits in enumerate(slices)]
            loss = torch.stack(terms).sum()
            losses = {"cross_entropy": loss.detach(), **{f"cross_entropy_{g}": term.detach() for g, term in enumerate(terms)}}
            reconstruction = torch.stack([logits.argmax(dim=-1) for logits in slices], 1).reshape(batch_size, len(self.groups), height, width)
        elif self.target == "tokens":
            loss = F.cross_entropy(prediction.flatten(0, 1), sequence.flatten())  # (B*N, K) vs (B*N,)
            losses = {"cross_entropy": loss.detach()}
            reconstruction = prediction.argmax(dim=-1).reshape(batch_size, height, width)
        else:
            loss = F.mse_loss(prediction, sequence.float())
            losses = {"mse_features": loss.detach()}
            reconstruction = prediction.reshape(batch_size, height, width, -1)
        masks = attention.float().transpose(1, 2).reshape(batch_size, -1, height, width)  # (B, N, S) -> (B, S, h, w)
        return DecoderOutput(loss=loss, losses=losses, masks=masks, reconstruction=reconstruction)


#: Before issue 12: a learned token embedding, biases, pre-norm in every layer plus a final norm, BOS and position
#: embedding of std 0.02, independently initialised layers, featcache's nine orders drawn per sample.
saved_before(
    TransformerDecoderConfig,
    {
        "order_set": "featcache",
        "order_draw": "sample",
        "input_embedding": "learned",
        "bias": True,
        "first_norm": "layer",
        "final_norm": True,
        "readout_bias": True,
        "bos_init": "normal_0.02",
        "position_init": "normal_0.02",
        "layer_init": "independent",
    },
)
