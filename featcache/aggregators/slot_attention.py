"""Slot Attention (Locatello et al., 2020) with two query initialisations.

Slots compete for input positions (softmax over slots), then each slot takes the weighted mean of the
values it won and updates itself with a GRU and a residual MLP. The two variants differ only in the
initial slots: ``SlotAttention`` samples them around learned per-slot means (noise in training only);
``BOQSA`` (Jia et al., bi-level optimised query slot attention) starts from learned queries and lets the
gradient of the last iteration reach them straight through.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from featcache.aggregators.config import AggregatorConfig


@dataclass
class AggregatorOutput:
    """slots: (B, S, D); attention: (B, S, N) last iteration's softmax over slots (sums to 1 over S)."""

    slots: torch.Tensor
    attention: torch.Tensor


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

    def initial_slots(self, batch_size: int, reference: torch.Tensor) -> torch.Tensor:
        """(B, S, D) starting slots on ``reference``'s device."""
        raise NotImplementedError

    def attend(self, slots: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One refinement round: returns (new slots (B, S, D), attention (B, S, N) summing to 1 over slots)."""
        batch_size, num_slots, slot_dim = slots.shape
        queries = self.to_queries(self.slot_norm(slots))  # (B, S, D)
        logits = torch.einsum("bsd,bnd->bsn", queries, keys) * self.scale  # (B, S, N)
        attention = logits.softmax(dim=1)  # competition: each input is shared out among slots
        weights = attention + self.epsilon
        weights = weights / weights.sum(dim=-1, keepdim=True)  # weighted mean over inputs
        updates = torch.einsum("bsn,bnd->bsd", weights, values)  # (B, S, D)
        # GRUCell works on (rows, D): fold slots into the batch.
        slots = self.gru(updates.reshape(-1, slot_dim), slots.reshape(-1, slot_dim))
        slots = slots.reshape(batch_size, num_slots, slot_dim)
        slots = slots + self.mlp(slots)
        return slots, attention

    def forward(self, inputs: torch.Tensor) -> AggregatorOutput:
        """inputs (B, N, D_in) -> slots (B, S, D) and the last attention (B, S, N)."""
        inputs = self.input_norm(inputs)
        keys = self.to_keys(inputs)  # (B, N, D)
        values = self.to_values(inputs)  # (B, N, D)
        initial = self.initial_slots(inputs.shape[0], inputs)
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

    def initial_slots(self, batch_size: int, reference: torch.Tensor) -> torch.Tensor:
        mean = self.slot_mean.expand(batch_size, -1, -1)  # (B, S, D)
        if not self.training:
            return mean
        noise = torch.randn(mean.shape, device=reference.device, dtype=mean.dtype)
        return mean + self.slot_log_std.exp() * noise


class BOQSA(IterativeSlotAttention):
    """BO-QSA: learned queries as the initial slots (no noise), straight-through last iteration."""

    straight_through = True

    def __init__(self, config: AggregatorConfig, input_dim: int) -> None:
        super().__init__(config, input_dim)
        self.queries = nn.Parameter(torch.randn(1, config.num_slots, config.slot_dim) * self.scale)

    def initial_slots(self, batch_size: int, reference: torch.Tensor) -> torch.Tensor:
        return self.queries.expand(batch_size, -1, -1)
