"""Slot Attention (Locatello et al., 2020) with two query initialisations.

Slots compete for input positions (softmax over slots), then each slot takes the weighted mean of the
values it won and updates itself with a GRU and a residual MLP. The two variants differ only in the
initial slots: ``SlotAttention`` samples them around learned per-slot means (noise in training only);
``BOQSA`` (Jia et al., bi-level optimised query slot attention) starts from learned queries and lets the
gradient of the last iteration reach them straight through.

Training noise can be passed in explicitly (``draw_noise`` lists and draws it from a generator), so a run's
noise comes from its own seeded generator and several seeds can train side by side under ``torch.func.vmap``;
without it, the noise comes from torch's global generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from featcache.aggregators.config import AggregatorConfig
from featcache.errors import FeatcacheError


@dataclass
class AggregatorOutput:
    """slots: (B, S, D); attention: (B, S, N) last iteration's softmax over slots (sums to 1 over S)."""

    slots: torch.Tensor
    attention: torch.Tensor


def gru_update(cell: nn.GRUCell, inputs: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """``cell(inputs, hidden)`` on (..., D) tensors, written out gate by gate (PyTorch's GRUCell equations).

    Same weights and math as the fused ``aten::gru_cell``, which has no ``torch.func.vmap`` batching rule
    (vmap would loop over the seeds of fused-seed training one at a time).
    """
    input_gates = F.linear(inputs, cell.weight_ih, cell.bias_ih).chunk(3, dim=-1)  # reset, update, new: (..., D) each
    hidden_gates = F.linear(hidden, cell.weight_hh, cell.bias_hh).chunk(3, dim=-1)
    reset = torch.sigmoid(input_gates[0] + hidden_gates[0])
    update = torch.sigmoid(input_gates[1] + hidden_gates[1])
    candidate = torch.tanh(input_gates[2] + reset * hidden_gates[2])
    return (1.0 - update) * candidate + update * hidden


class IterativeSlotAttention(nn.Module):
    """The shared attention-GRU-MLP iterations; subclasses supply the initial slots."""

    #: Re-attach the last iteration's input to the initial slots (BO-QSA's bi-level gradient).
    straight_through: bool = False

    def __init__(self, config: AggregatorConfig, input_dim: int) -> None:
        super().__init__()
        slot_dim = config.slot_dim
        self.num_slots = config.num_slots
        self.slot_dim = slot_dim
        self.iterations = config.iterations
        self.epsilon = config.epsilon
        self.scale = 1.0 / math.sqrt(slot_dim)
        self.input_norm = nn.LayerNorm(input_dim)
        self.to_keys = nn.Linear(input_dim, slot_dim, bias=False)
        self.to_values = nn.Linear(input_dim, slot_dim, bias=False)
        self.slot_norm = nn.LayerNorm(slot_dim)
        self.to_queries = nn.Linear(slot_dim, slot_dim, bias=False)
        self.gru = nn.GRUCell(slot_dim, slot_dim)
        self.mlp = nn.Sequential(
            nn.LayerNorm(slot_dim),
            nn.Linear(slot_dim, config.mlp_hidden),
            nn.ReLU(),
            nn.Linear(config.mlp_hidden, slot_dim),
        )

    def initial_slots(self, batch_size: int, reference: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """(B, S, D) starting slots on ``reference``'s device; ``noise`` as drawn by ``draw_noise`` (or None)."""
        raise NotImplementedError

    def draw_noise(self, batch_size: int, generator: torch.Generator | None, device: torch.device) -> dict[str, torch.Tensor]:
        """The random numbers one forward pass of ``batch_size`` uses in the current mode (none by default)."""
        return {}

    def attend(self, slots: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One refinement round: returns (new slots (B, S, D), attention (B, S, N) summing to 1 over slots)."""
        queries = self.to_queries(self.slot_norm(slots))  # (B, S, D)
        logits = torch.einsum("bsd,bnd->bsn", queries, keys) * self.scale  # (B, S, N)
        attention = logits.softmax(dim=1)  # competition: each input is shared out among slots
        weights = attention + self.epsilon
        weights = weights / weights.sum(dim=-1, keepdim=True)  # weighted mean over inputs
        updates = torch.einsum("bsn,bnd->bsd", weights, values)  # (B, S, D)
        slots = gru_update(self.gru, updates, slots)  # (B, S, D)
        slots = slots + self.mlp(slots)
        return slots, attention

    def forward(self, inputs: torch.Tensor, noise: dict[str, torch.Tensor] | None = None) -> AggregatorOutput:
        """inputs (B, N, D_in) -> slots (B, S, D) and the last attention (B, S, N).

        ``noise``: ``draw_noise``'s output for this batch; None draws any noise from torch's global generator.
        """
        inputs = self.input_norm(inputs)
        keys = self.to_keys(inputs)  # (B, N, D)
        values = self.to_values(inputs)  # (B, N, D)
        initial = self.initial_slots(inputs.shape[0], inputs, (noise or {}).get("slots"))
        slots = initial
        for _ in range(self.iterations - 1):
            slots, _ = self.attend(slots, keys, values)
        if self.straight_through:
            # Same value as ``slots``; the gradient skips the earlier rounds and lands on the queries.
            slots = slots.detach() + initial - initial.detach()
        slots, attention = self.attend(slots, keys, values)
        return AggregatorOutput(slots=slots, attention=attention)


class SlotAttention(IterativeSlotAttention):
    """Slot Attention with learned per-slot means and a shared learned log-std; noise only in training."""

    def __init__(self, config: AggregatorConfig, input_dim: int) -> None:
        super().__init__(config, input_dim)
        self.slot_mean = nn.Parameter(torch.randn(1, config.num_slots, config.slot_dim) * self.scale)
        self.slot_log_std = nn.Parameter(torch.zeros(1, 1, config.slot_dim))

    def draw_noise(self, batch_size: int, generator: torch.Generator | None, device: torch.device) -> dict[str, torch.Tensor]:
        """Standard normal slot noise (B, S, D) in training; nothing in eval mode (slots start at the means)."""
        if not self.training:
            return {}
        return {"slots": torch.randn((batch_size, self.num_slots, self.slot_dim), generator=generator, device=device)}

    def initial_slots(self, batch_size: int, reference: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        mean = self.slot_mean.expand(batch_size, -1, -1)  # (B, S, D)
        if not self.training:
            return mean
        if noise is None:
            noise = self.draw_noise(batch_size, None, reference.device)["slots"]
        elif tuple(noise.shape) != tuple(mean.shape):
            raise FeatcacheError(f"slot noise must be (B, S, D) = {tuple(mean.shape)}, got {tuple(noise.shape)}")
        return mean + self.slot_log_std.exp() * noise.to(mean.dtype)


class BOQSA(IterativeSlotAttention):
    """BO-QSA: learned queries as the initial slots (no noise), straight-through last iteration."""

    straight_through = True

    def __init__(self, config: AggregatorConfig, input_dim: int) -> None:
        super().__init__(config, input_dim)
        self.queries = nn.Parameter(torch.randn(1, config.num_slots, config.slot_dim) * self.scale)

    def initial_slots(self, batch_size: int, reference: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.queries.expand(batch_size, -1, -1)
