"""What every OCL decoder takes and returns: slots in, a reconstruction loss (and maybe masks) out.

Decoders reconstruct a target read from the store (VFM features, VQ token indices, quantized codes);
only the aggregator and the decoder train, the VFM and the quantizer are frozen upstream.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class DecoderTargets:
    """Reconstruction targets of one batch (whichever the decoder needs; others may be None).

    features: (B, h, w, C) float32 VFM features (the kind the run uses).
    tokens: (B, h, w) int64 VQ token indices.
    codes: (B, h, w, D) float32 quantized codes (codebook vectors of ``tokens``).
    """

    features: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    codes: torch.Tensor | None = None


@dataclass
class DecoderOutput:
    """loss: the scalar to minimise; losses: its named parts (floats for logging);
    masks: (B, S, h, w) per-slot decoder masks summing to 1 over slots, or None if the decoder has none;
    reconstruction: the decoder's prediction, for visualisation (shape depends on the decoder)."""

    loss: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    masks: torch.Tensor | None = None
    reconstruction: torch.Tensor | None = None


class SlotDecoder(nn.Module):
    """Base class: ``forward(slots (B, S, D), targets, noise=None) -> DecoderOutput``.

    A decoder whose loss is random (diffusion) lists the random numbers of one batch in ``draw_noise``;
    ``forward`` uses them when given, else draws them from torch's global generator.
    """

    #: Which DecoderTargets fields the decoder reads ("features", "tokens", "codes").
    needs: tuple[str, ...] = ()

    def draw_noise(self, batch_size: int, generator: torch.Generator | None, device: torch.device) -> dict[str, torch.Tensor]:
        """The random numbers one training forward pass of ``batch_size`` uses (none: deterministic decoders)."""
        return {}

    def forward(
        self, slots: torch.Tensor, targets: DecoderTargets, noise: dict[str, torch.Tensor] | None = None
    ) -> DecoderOutput:  # pragma: no cover - abstract
        raise NotImplementedError
