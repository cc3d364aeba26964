"""Video OCL from cached clips: the image model run over a clip's frames in order (VVO's ``VqVfmOclT``, VideoSAUR).

Per frame t, slot attention starts from the previous frame's slots passed through a transit module (a
transformer layer over the slots), the first frame from the aggregator's queries or from an MLP of the first
frame's object boxes; every frame is decoded by the image decoder on the (B T) flattened frames, as the official
VVOTfdT / VVOMlpT / VVODfzT do. ``transit: none`` runs the same modules frame by frame from fresh queries, so
it equals the image model on each frame (the ablation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from featcache.errors import ConfigError, FeatcacheError
from featcache.ocl.config import OCLModelConfig, TemporalConfig
from featcache.ocl.model import OCLModel

#: Instance id of pixels to ignore in stored masks (``featcache.store.schema``: 65535).
IGNORE_ID = 65535


@dataclass
class TemporalOutput:
    """loss: scalar (mean over the B x T frames); slots (B, T, S, D); attention_masks (B, T, S, h, w);
    decoder_masks (B, T, S, h, w) or None; masks: the ``mask_source`` one of the two."""

    loss: torch.Tensor
    slots: torch.Tensor
    attention_masks: torch.Tensor
    masks: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    decoder_masks: torch.Tensor | None = None
    reconstruction: torch.Tensor | None = None


def build_transit(config: TemporalConfig, slot_dim: int) -> nn.Module | None:
    """The slots -> next queries module; None for ``transit: none``."""
    if config.transit == "none":
        return None
    feedforward = config.transit_feedforward or 4 * slot_dim
    if slot_dim % config.transit_heads:
        raise ConfigError(f"config key 'temporal.transit_heads' ({config.transit_heads}) must divide aggregator.slot_dim ({slot_dim})")
    if config.transit == "transformer":  # VVO: post-norm, GELU, no biases (so VVO's zero-bias reset changes nothing)
        return nn.TransformerEncoderLayer(
            slot_dim, config.transit_heads, feedforward, config.transit_dropout, activation="gelu",
            batch_first=True, norm_first=False, bias=False,
        )
    return VideosaurPredictor(slot_dim, config.transit_heads, feedforward)


class VideosaurPredictor(nn.Module):
    """videosaur's predictor (modules/networks.py ``TransformerEncoder`` with n_blocks=1, configs/videosaur/*.yml): one
    pre-norm transformer block over the slots, ReLU, biases, no dropout.

    Its attention (``networks.Attention``) computes the logits as ``q / scale @ k^T`` with ``scale = head_dim^-0.5``,
    i.e. multiplied by sqrt(head_dim) where the usual attention divides by it; kept as videosaur has it. Parameter
    names follow PyTorch's ``nn.TransformerEncoderLayer`` (``self_attn.in_proj_weight`` = videosaur's ``qkv``).
    """

    def __init__(self, dim: int, heads: int, feedforward: int) -> None:
        super().__init__()
        self.heads = heads
        self.self_attn = nn.MultiheadAttention(dim, heads, bias=True, batch_first=True)  # holds in_proj_* and out_proj
        self.linear1 = nn.Linear(dim, feedforward)
        self.linear2 = nn.Linear(feedforward, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        with torch.no_grad():  # videosaur's Attention.init_parameters: Glorot per q/k/v part and out_proj, zero biases
            bound = math.sqrt(6.0 / (2 * dim))
            self.self_attn.in_proj_weight.uniform_(-bound, bound)
            self.self_attn.in_proj_bias.zero_()
            nn.init.xavier_uniform_(self.self_attn.out_proj.weight)
            self.self_attn.out_proj.bias.zero_()

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """Self-attention (B, S, D) -> (B, S, D) with videosaur's logit scale sqrt(head_dim)."""
        batch, slots, dim = x.shape
        head_dim = dim // self.heads
        q, k, v = F.linear(x, self.self_attn.in_proj_weight, self.self_attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(batch, slots, self.heads, head_dim).transpose(1, 2) for t in (q, k, v))  # (B, H, S, d)
        attention = (q * math.sqrt(head_dim) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, H, S, S)
        out = (attention @ v).transpose(1, 2).reshape(batch, slots, dim)
        return self.self_attn.out_proj(out)

    def forward(self, slots: torch.Tensor) -> torch.Tensor:
        x = slots + self.attend(self.norm1(slots))
        return x + self.linear2(F.relu(self.linear1(self.norm2(x))))


def build_box_queries(slot_dim: int) -> nn.Sequential:
    """VVO's ``MLP(in_dim=4, dims=[D, D])``: Linear(4, D) - GELU - Linear(D, D), PyTorch's default initialisation."""
    return nn.Sequential(nn.Linear(4, slot_dim), nn.GELU(), nn.Linear(slot_dim, slot_dim))


def boxes_from_masks(masks: np.ndarray, num_slots: int) -> np.ndarray:
    """Instance masks (..., M, M) uint16 -> boxes (..., S, 4) float32: row k is instance k+1's (left, top, right,
    bottom) / M, both sides normalised like VVO's MOVi boxes; zeros where instance k+1 is absent (VVO's PadTo1
    value 0). Background (0) and ignore pixels (65535) are no instance; ids above ``num_slots`` are dropped."""
    size_y, size_x = masks.shape[-2:]
    flat = masks.reshape(-1, size_y, size_x)
    boxes = np.zeros((flat.shape[0], num_slots, 4), dtype=np.float32)
    for item, mask in enumerate(flat):
        for instance in range(1, num_slots + 1):
            rows, cols = np.nonzero(mask == instance)
            if rows.size:
                boxes[item, instance - 1] = (cols.min() / size_x, rows.min() / size_y, (cols.max() + 1) / size_x, (rows.max() + 1) / size_y)
    return boxes.reshape(*masks.shape[:-2], num_slots, 4)


class TemporalOCLModel(nn.Module):
    """A video OCL model: ``frame`` (the image model: projection, aggregator, decoder), ``transit`` and, with
    ``query_init: bbox``, ``box_queries``. Inputs are clips: features (B, T, h, w, C), tokens (B, T, h, w)."""

    def __init__(self, config: OCLModelConfig, feature_dim: int, grid: tuple[int, int], codebook: torch.Tensor | None = None) -> None:
        super().__init__()
        if not config.temporal.enabled:
            raise ConfigError("TemporalOCLModel needs model.temporal.enabled: true")
        self.frame = OCLModel(config, feature_dim, grid, codebook)
        self.temporal = config.temporal
        slot_dim = config.aggregator.slot_dim
        self.transit = build_transit(config.temporal, slot_dim)
        self.box_queries = build_box_queries(slot_dim) if config.temporal.query_init == "bbox" else None

    # The image model's description, so stages treat both alike.
    @property
    def config(self) -> OCLModelConfig:
        return self.frame.config

    @property
    def grid(self) -> tuple[int, int]:
        return self.frame.grid

    @property
    def num_slots(self) -> int:
        return self.frame.num_slots

    @property
    def needs_tokens(self) -> bool:
        return self.frame.needs_tokens

    @property
    def needs_boxes(self) -> bool:
        return self.box_queries is not None

    def use_mask_source(self, mask_source: str) -> None:
        self.frame.use_mask_source(mask_source)

    def _fresh_frames(self) -> bool:
        """Every frame starts from fresh learned queries (``transit: none`` without boxes)."""
        return self.transit is None and self.box_queries is None

    def draw_noise(
        self, batch_size: int, frames: int, generator: torch.Generator | None, device: torch.device
    ) -> dict[str, dict[str, torch.Tensor]]:
        """Every random number one forward pass of ``batch_size`` clips of ``frames`` frames uses, from ``generator``:
        query noise for the first frame (for every frame with ``transit: none``; none with boxes), decoder noise
        for all B x T frames."""
        if self.box_queries is not None:
            aggregator: dict[str, torch.Tensor] = {}
        else:
            aggregator = self.frame.aggregator.draw_noise(batch_size * (frames if self._fresh_frames() else 1), generator, device)
        return {"aggregator": aggregator, "decoder": self.frame.decoder.draw_noise(batch_size * frames, generator, device)}

    def _check(self, features: torch.Tensor, tokens: torch.Tensor | None, boxes: torch.Tensor | None) -> None:
        height, width = self.grid
        if features.ndim != 5 or tuple(features.shape[2:]) != (height, width, self.frame.feature_dim):
            raise FeatcacheError(f"clip features must be (B, T, {height}, {width}, {self.frame.feature_dim}), got {tuple(features.shape)}")
        if tokens is not None and tuple(tokens.shape[:2]) != tuple(features.shape[:2]):  # the frame model checks the rest
            raise FeatcacheError(f"clip tokens must be (B, T, ...) like the features (B, T) = {tuple(features.shape[:2])}, got {tuple(tokens.shape)}")
        if self.box_queries is not None and (boxes is None or tuple(boxes.shape) != (features.shape[0], self.num_slots, 4)):
            got = None if boxes is None else tuple(boxes.shape)
            raise FeatcacheError(f"query_init bbox needs the first frame's boxes (B, {self.num_slots}, 4), got {got}")

    def aggregate(
        self, features: torch.Tensor, noise: dict[str, torch.Tensor] | None = None, boxes: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, T, h, w, C), boxes (B, S, 4) or None -> slots (B, T, S, D), attention (B, T, S, N)."""
        batch, frames = features.shape[:2]
        inputs = self.frame.project(features.flatten(0, 1)).unflatten(0, (batch, frames))  # (B, T, N, D)
        aggregator = self.frame.aggregator
        first_iterations = self.temporal.first_frame_iterations or None
        if self._fresh_frames():  # every frame alone, as the image model
            out = aggregator(inputs.flatten(0, 1), noise)
            return out.slots.unflatten(0, (batch, frames)), out.attention.unflatten(0, (batch, frames))
        query = self.box_queries(boxes.float()) if self.box_queries is not None else None  # (B, S, D)
        slots, attention = [], []
        for t in range(frames):
            out = aggregator(inputs[:, t], noise, initial=query, iterations=first_iterations if t == 0 else None)
            slots.append(out.slots)  # (B, S, D)
            attention.append(out.attention)  # (B, S, N)
            if self.transit is not None:
                query = self.transit(out.slots)
            # transit none with boxes: every frame from the first frame's box queries
        return torch.stack(slots, 1), torch.stack(attention, 1)

    def forward(
        self,
        features: torch.Tensor,
        tokens: torch.Tensor | None = None,
        noise: dict[str, dict[str, torch.Tensor]] | None = None,
        boxes: torch.Tensor | None = None,
    ) -> TemporalOutput:
        """features (B, T, h, w, C), tokens (B, T, h, w) (MSF: (B, T, 2, h, w)) or None, boxes (B, S, 4) or None -> loss, slots, masks."""
        self._check(features, tokens, boxes)
        noise = noise or {}
        batch, frames = features.shape[:2]
        flat_tokens = tokens.flatten(0, 1) if tokens is not None else None
        targets = self.frame.decoder_targets(features.flatten(0, 1), flat_tokens)
        slots, attention = self.aggregate(features, noise.get("aggregator"), boxes)
        decoded = self.frame.decoder(slots.flatten(0, 1), targets, noise.get("decoder"))  # (B T) frames, as VVO*T
        attention_masks = self._grid_masks(attention)
        decoder_masks = decoded.masks.unflatten(0, (batch, frames)) if decoded.masks is not None else None
        if self.config.mask_source == "decoder":
            if decoder_masks is None:
                raise FeatcacheError(f"decoder {self.config.decoder.name} returned no masks for mask_source 'decoder'")
            masks = decoder_masks
        else:
            masks = attention_masks
        return TemporalOutput(
            loss=decoded.loss,
            losses=dict(decoded.losses),
            slots=slots,
            attention_masks=attention_masks,
            decoder_masks=decoder_masks,
            masks=masks,
            reconstruction=decoded.reconstruction,
        )

    @torch.no_grad()
    def predict_masks(
        self,
        features: torch.Tensor,
        tokens: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        boxes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Evaluation masks (B, T, S, h, w) of whole clips, in eval mode (see ``OCLModel.predict_masks``)."""
        was_training = self.training
        self.eval()
        try:
            self._check(features, tokens, boxes)
            noise = self.draw_noise(features.shape[0], features.shape[1], generator, features.device)
            if self.config.mask_source == "attention":
                return self._grid_masks(self.aggregate(features, noise["aggregator"], boxes)[1])
            return self.forward(features, tokens, noise, boxes).masks
        finally:
            self.train(was_training)

    def _grid_masks(self, attention: torch.Tensor) -> torch.Tensor:
        """(B, T, S, N) -> (B, T, S, h, w) float32."""
        return attention.float().reshape(*attention.shape[:3], *self.grid)


def frame_config(config: OCLModelConfig) -> OCLModelConfig:
    """The image model's config of a temporal one (``temporal`` off): what ``TemporalOCLModel.frame`` computes."""
    return replace(config, temporal=replace(config.temporal, enabled=False))
