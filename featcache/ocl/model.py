"""The trainable OCL model on cached features: projection -> slot aggregator -> decoder.

Input is a batch of cached VFM patch features (B, h, w, C) and, for decoders that reconstruct VQ
targets, the cached token indices (B, h, w); quantized codes are looked up in the frozen codebook.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from featcache.aggregators import AggregatorOutput, create_aggregator
from featcache.decoders import DecoderTargets, create_decoder
from featcache.errors import ConfigError, FeatcacheError
from featcache.ocl.config import OCLModelConfig
from featcache.quantize.lookup import CodeLookup


@dataclass
class OCLOutput:
    """loss: scalar to minimise; losses: its named parts (detached scalars, for logging);
    slots: (B, S, D); attention_masks: (B, S, h, w) slot attention (sums to 1 over slots);
    decoder_masks: (B, S, h, w) or None; masks: the ``mask_source`` one of the two;
    reconstruction: the decoder's prediction (shape depends on the decoder) or None;
    attention_logits: (B, S, N) the slot attention's pre-softmax scores (SPOT's self-training) or None."""

    loss: torch.Tensor
    slots: torch.Tensor
    attention_masks: torch.Tensor
    masks: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    decoder_masks: torch.Tensor | None = None
    reconstruction: torch.Tensor | None = None
    attention_logits: torch.Tensor | None = None


def build_projection(config: OCLModelConfig, feature_dim: int, slot_dim: int) -> nn.Sequential:
    """Map VFM channels C to the slot width (position comes from the features, or from ``input_position``)."""
    if config.projection == "layernorm_mlp":
        projection = nn.Sequential(
            nn.LayerNorm(feature_dim),
            nn.Linear(feature_dim, config.projection_hidden),
            nn.GELU() if config.projection_activation == "gelu" else nn.ReLU(),
            nn.Dropout(config.projection_dropout),
            nn.Linear(config.projection_hidden, slot_dim),
        )
    else:
        projection = nn.Sequential(
            nn.Linear(feature_dim, config.projection_hidden),
            nn.Dropout(config.projection_dropout),
            nn.Linear(config.projection_hidden, slot_dim),
        )
    if config.projection_bias_init == "zero":
        with torch.no_grad():
            for layer in projection:
                if isinstance(layer, nn.Linear):
                    layer.bias.zero_()
    return projection


class SoftPositionEmbedding(nn.Module):
    """Slot Attention's soft position embedding: adds Linear(4, D) of each patch's (y, x, 1 - y, 1 - x) in [0, 1].

    Used when the features themselves carry no position; the coordinates are a fixed buffer (not saved).
    """

    def __init__(self, grid: tuple[int, int], dim: int) -> None:
        super().__init__()
        height, width = grid
        rows, columns = torch.meshgrid(torch.linspace(0.0, 1.0, height), torch.linspace(0.0, 1.0, width), indexing="ij")
        coordinates = torch.stack([rows, columns, 1.0 - rows, 1.0 - columns], dim=-1)  # (h, w, 4)
        self.register_buffer("coordinates", coordinates.reshape(1, height * width, 4), persistent=False)  # (1, N, 4)
        self.linear = nn.Linear(4, dim)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """inputs (B, N, D) -> inputs plus the embedding of their positions (B, N, D)."""
        return inputs + self.linear(self.coordinates).to(inputs.dtype)


class OCLModel(nn.Module):
    """Object-centric model trained from the cache: only projection, aggregator and decoder have weights.

    ``codebook`` (K, D) is the frozen VQ codebook, kept as a buffer (saved with the weights); it is needed
    when the decoder reads tokens or codes and may be None when it reads features only. For an MSF token set
    it is a :class:`CodeLookup`: tokens (B, 2, h, w), codes = the fused shared + specified code vectors.
    """

    def __init__(
        self,
        config: OCLModelConfig,
        feature_dim: int,
        grid: tuple[int, int],
        codebook: torch.Tensor | CodeLookup | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.feature_dim = feature_dim
        self.grid = (int(grid[0]), int(grid[1]))
        self.num_slots = config.aggregator.num_slots
        slot_dim = config.aggregator.slot_dim
        decoder_config = config.decoder
        self.projection = build_projection(config, feature_dim, slot_dim)
        self.input_position = SoftPositionEmbedding(self.grid, slot_dim) if config.input_position == "soft" else None
        self.aggregator = create_aggregator(config.aggregator, input_dim=slot_dim)
        # MSF token sets: a CodeLookup (fused shared + specified codes; its buffers are saved as code_lookup.*).
        self.code_lookup = codebook if isinstance(codebook, CodeLookup) and codebook.multi_scale else None
        if isinstance(codebook, CodeLookup) and not codebook.multi_scale:
            codebook = codebook.codebook
        if self.code_lookup is not None:
            codebook = None
            sizes = self.code_lookup.group_sizes
            codebook_size: int | list[int] = sizes if len(sizes) > 1 else sizes[0]
            code_dim = self.code_lookup.code_dim
        else:
            if codebook is not None:
                if codebook.ndim != 2:  # type: ignore[union-attr]
                    raise FeatcacheError(f"codebook must be (K, D), got shape {tuple(codebook.shape)}")  # type: ignore[union-attr]
                codebook = codebook.detach().clone().float()  # type: ignore[union-attr]
            codebook_size, code_dim = (codebook.shape[0], codebook.shape[1]) if codebook is not None else (0, 0)  # type: ignore[union-attr]
        self.register_buffer("codebook", codebook)
        if codebook is None and self.code_lookup is None and decoder_config.target != "features":
            raise FeatcacheError(
                f"decoder {decoder_config.name} with target {decoder_config.target} needs the VQ codebook; "
                "pass the quantizer's codebook (K, D)"
            )
        self.decoder = create_decoder(decoder_config, slot_dim, self.grid, feature_dim, codebook_size, code_dim)
        self._check_mask_source(config.mask_source)
        self.needs_tokens = any(name in ("tokens", "codes") for name in self.decoder.needs)

    def _check_mask_source(self, mask_source: str) -> None:
        if mask_source == "decoder" and not getattr(self.decoder, "returns_masks", False):
            raise ConfigError(
                f"mask_source 'decoder' needs a decoder with masks; decoder {self.config.decoder.name} has none "
                "(use mask_source: attention)"
            )

    def use_mask_source(self, mask_source: str) -> None:
        """Score the other masks of the same trained model (``attention`` or ``decoder``); weights are unchanged."""
        if mask_source not in ("attention", "decoder"):
            raise ConfigError(f"mask source (eval --masks) must be 'attention' or 'decoder', got {mask_source!r}")
        self._check_mask_source(mask_source)
        self.config = replace(self.config, mask_source=mask_source)

    def draw_noise(
        self, batch_size: int, generator: torch.Generator | None, device: torch.device
    ) -> dict[str, dict[str, torch.Tensor]]:
        """Every random number one forward pass of ``batch_size`` uses in the current mode, drawn from ``generator``.

        Passing the result to ``forward(..., noise=...)`` makes a run's noise a function of its own generator
        (resumable from its state, and batchable across seeds under vmap); the order of draws is fixed.
        """
        return {
            "aggregator": self.aggregator.draw_noise(batch_size, generator, device),
            "decoder": self.decoder.draw_noise(batch_size, generator, device),
        }

    def aggregate(self, features: torch.Tensor, noise: dict[str, torch.Tensor] | None = None) -> AggregatorOutput:
        """features (B, h, w, C) -> slots (B, S, D) and attention (B, S, N); ``noise``: the aggregator's draws or None."""
        height, width = self.grid
        if features.ndim != 4 or tuple(features.shape[1:]) != (height, width, self.feature_dim):
            raise FeatcacheError(
                f"features must be (B, {height}, {width}, {self.feature_dim}), got {tuple(features.shape)}"
            )
        return self.aggregator(self.project(features), noise)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, h, w, C) -> the aggregator's inputs (B, N, D): projection (+ position embedding)."""
        flat = features.float().flatten(1, 2)  # (B, h, w, C) -> (B, N, C)
        inputs = self.projection(flat)  # (B, N, D)
        if self.input_position is not None:
            inputs = self.input_position(inputs)
        return inputs

    def decoder_targets(self, features: torch.Tensor, tokens: torch.Tensor | None) -> DecoderTargets:
        """What the decoder reads: the features, plus tokens and their codebook vectors when it needs them."""
        if not self.needs_tokens:
            return DecoderTargets(features=features.float())
        decoder_config = self.config.decoder
        if tokens is None:
            raise FeatcacheError(
                f"decoder {decoder_config.name} with target {decoder_config.target} needs a token set: "
                "pass tokens=NAME in the config"
            )
        if self.code_lookup is not None:  # MSF: (B, G, h, w), codes fused as the quantizer's level-0 output
            groups = len(self.code_lookup.group_sizes)
            if tuple(tokens.shape) != (features.shape[0], groups, *self.grid):
                raise FeatcacheError(f"MSF tokens must be (B, {groups}, {self.grid[0]}, {self.grid[1]}), got {tuple(tokens.shape)}")
            tokens = tokens.long() if groups > 1 else tokens[:, 0].long()
            codes = self.code_lookup(tokens if tokens.ndim == 4 else tokens[:, None]) if "codes" in self.decoder.needs else None
            return DecoderTargets(features=features.float(), tokens=tokens, codes=codes)
        if tuple(tokens.shape) != (features.shape[0], *self.grid):
            raise FeatcacheError(
                f"tokens must be (B, {self.grid[0]}, {self.grid[1]}) like the features, got {tuple(tokens.shape)}"
            )
        tokens = tokens.long()
        codes = self.codebook[tokens] if "codes" in self.decoder.needs else None  # (B, h, w, D)
        return DecoderTargets(features=features.float(), tokens=tokens, codes=codes)

    def forward(
        self, features: torch.Tensor, tokens: torch.Tensor | None = None, noise: dict[str, dict[str, torch.Tensor]] | None = None
    ) -> OCLOutput:
        """features (B, h, w, C), tokens (B, h, w) int or None -> loss, slots and masks.

        ``noise``: ``draw_noise``'s output for this batch; None draws any noise from torch's global generator.
        """
        noise = noise or {}
        targets = self.decoder_targets(features, tokens)
        aggregated = self.aggregate(features, noise.get("aggregator"))
        decoded = self.decoder(aggregated.slots, targets, noise.get("decoder"))
        attention_masks = self._grid_masks(aggregated.attention)
        if self.config.mask_source == "decoder":
            if decoded.masks is None:
                raise FeatcacheError(f"decoder {self.config.decoder.name} returned no masks for mask_source 'decoder'")
            masks = decoded.masks
        else:
            masks = attention_masks
        return OCLOutput(
            loss=decoded.loss,
            losses=dict(decoded.losses),
            slots=aggregated.slots,
            attention_masks=attention_masks,
            decoder_masks=decoded.masks,
            masks=masks,
            reconstruction=decoded.reconstruction,
            attention_logits=aggregated.logits,
        )

    @torch.no_grad()
    def predict_masks(
        self, features: torch.Tensor, tokens: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Evaluation masks (B, S, h, w) from ``mask_source``, computed in eval mode (no dropout; slot noise only
        where the queries are sampled in evaluation too, ``query_noise: always``, drawn from ``generator`` so that an
        evaluation is reproducible; None = torch's global generator).

        Attention masks need only the features; decoder masks run the decoder, which needs the same
        inputs as in training (``tokens`` when its target involves codes). The previous mode is restored.
        """
        was_training = self.training
        self.eval()
        try:
            noise = self.draw_noise(features.shape[0], generator, features.device)
            if self.config.mask_source == "attention":
                return self._grid_masks(self.aggregate(features, noise["aggregator"]).attention)
            return self.forward(features, tokens, noise).masks
        finally:
            self.train(was_training)

    def _grid_masks(self, attention: torch.Tensor) -> torch.Tensor:
        """(B, S, N) -> (B, S, h, w) float32 (autocast may have produced a lower precision)."""
        return attention.float().reshape(attention.shape[0], attention.shape[1], *self.grid)
