"""Slot Attention (Locatello et al., 2020) and its BO-QSA variant, with the anchors' choices as options.

Slots compete for input positions (softmax over slots), then each slot takes the weighted mean of the
values it won and updates itself with a GRU and a residual MLP. The names differ only in their defaults
for the initial slots and the last iteration: ``SlotAttention`` samples the slots around learned per-slot
means (noise in training only); ``BOQSA`` (Jia et al., bi-level optimised query slot attention) starts from
learned queries and lets the gradient of the last iteration reach them straight through. ``AggregatorConfig``
sets either choice on its own (VVO's "BO-QSA" is Gaussian queries plus the straight-through step) and the
details in which VVO, OCLF and videosaur differ (renormalisation, MLP activation, GRU state, initialisation).

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
    """slots: (B, S, D); attention: (B, S, N) last iteration's softmax over slots (sums to 1 over S);
    logits: (B, S, N) the pre-softmax scores of that iteration (SPOT's self-training reads them), or None."""

    slots: torch.Tensor
    attention: torch.Tensor
    logits: torch.Tensor | None = None


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
    """The attention-GRU-MLP iterations and the initial slots, both as ``AggregatorConfig`` sets them.

    Parameters of the initial slots: ``queries`` (1, S, D) for learned queries; otherwise ``slot_mean``
    ((1, S, D) per slot, (1, 1, D) shared) and ``slot_log_std`` ((1, S, D) per slot, (1, 1, D) shared).
    """

    def __init__(self, config: AggregatorConfig, input_dim: int) -> None:
        super().__init__()
        slot_dim = config.slot_dim
        self.num_slots = config.num_slots
        self.slot_dim = slot_dim
        self.iterations = config.iterations
        self.epsilon = config.epsilon
        self.epsilon_in_denominator = config.renormalisation == "epsilon_in_denominator"
        self.gru_on_normed_slots = config.gru_hidden == "normed_slots"
        #: Re-attach the last iteration's input to the initial slots (BO-QSA's bi-level gradient).
        self.straight_through = config.resolved_straight_through
        self.query_kind = config.queries
        self.noise_in_eval = config.query_noise == "always"
        self.scale = 1.0 / math.sqrt(slot_dim)
        self.input_norm = nn.LayerNorm(input_dim)
        self.to_keys = nn.Linear(input_dim, slot_dim, bias=False)
        self.to_values = nn.Linear(input_dim, slot_dim, bias=False)
        self.slot_norm = nn.LayerNorm(slot_dim)
        self.to_queries = nn.Linear(slot_dim, slot_dim, bias=False)
        self.gru = nn.GRUCell(slot_dim, slot_dim)
        activation: nn.Module = nn.GELU() if config.mlp_activation == "gelu" else nn.ReLU()
        if config.mlp_dropout > 0:
            activation = nn.Sequential(activation, nn.Dropout(config.mlp_dropout))  # no weights: keys stay mlp.1/mlp.3
        self.mlp = nn.Sequential(
            nn.LayerNorm(slot_dim),
            nn.Linear(slot_dim, config.mlp_hidden),
            activation,
            nn.Linear(config.mlp_hidden, slot_dim),
        )
        self._init_query_parameters(config)
        self._init_weights(config)

    def _init_query_parameters(self, config: AggregatorConfig) -> None:
        """Create the initial-slot parameters (after every other weight, so default runs draw as before)."""
        slots, dim = config.num_slots, config.slot_dim
        shared = self.query_kind == "shared_gaussian"
        mean_slots = 1 if shared else slots
        mean = torch.zeros(1, mean_slots, dim)
        if config.query_mean_init == "normal":
            mean = torch.randn(1, mean_slots, dim) * self.scale
        elif config.query_mean_init == "xavier_uniform":
            nn.init.xavier_uniform_(mean if shared else mean[0])  # Glorot over (1, 1, D) shared, or over (S, D)
        if self.query_kind == "learned":
            self.queries = nn.Parameter(mean)
            return
        self.slot_mean = nn.Parameter(mean)
        per_slot_std = self.query_kind == "per_slot_gaussian"
        log_std = torch.zeros(1, slots if per_slot_std else 1, dim)  # std 1
        if config.query_std_init == "inverse_sqrt_dim":
            log_std.fill_(math.log(self.scale))
        elif config.query_std_init == "xavier_uniform":
            nn.init.xavier_uniform_(log_std[0] if per_slot_std else log_std)
        self.slot_log_std = nn.Parameter(log_std)

    @torch.no_grad()
    def _init_weights(self, config: AggregatorConfig) -> None:
        """Glorot query/key/value weights and zero biases where the config asks for them."""
        if config.qkv_init == "xavier_uniform":
            for linear in (self.to_queries, self.to_keys, self.to_values):
                nn.init.xavier_uniform_(linear.weight)
        if config.bias_init in ("zero_mlp", "zero"):
            for index in (1, 3):
                self.mlp[index].bias.zero_()
        if config.bias_init == "zero":
            self.gru.bias_ih.zero_()
            self.gru.bias_hh.zero_()

    def _samples_noise(self) -> bool:
        return self.query_kind != "learned" and (self.training or self.noise_in_eval)

    def draw_noise(self, batch_size: int, generator: torch.Generator | None, device: torch.device) -> dict[str, torch.Tensor]:
        """Standard normal slot noise (B, S, D) when the Gaussian queries are sampled in this mode; else nothing."""
        if not self._samples_noise():
            return {}
        return {"slots": torch.randn((batch_size, self.num_slots, self.slot_dim), generator=generator, device=device)}

    def initial_slots(self, batch_size: int, reference: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """(B, S, D) starting slots on ``reference``'s device; ``noise`` as drawn by ``draw_noise`` (or None)."""
        if self.query_kind == "learned":
            return self.queries.expand(batch_size, -1, -1)
        mean = self.slot_mean.expand(batch_size, self.num_slots, -1)  # (B, S, D)
        if not self._samples_noise():
            return mean
        if noise is None:
            noise = self.draw_noise(batch_size, None, reference.device)["slots"]
        elif tuple(noise.shape) != tuple(mean.shape):
            raise FeatcacheError(f"slot noise must be (B, S, D) = {tuple(mean.shape)}, got {tuple(noise.shape)}")
        return mean + self.slot_log_std.exp() * noise.to(mean.dtype)

    def weighted_means(self, attention: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Each slot's mean of the values (B, N, D), weighted by its attention (B, S, N) renormalised over inputs.

        ``add_epsilon`` gives a slot that won nothing the plain mean of all values; ``epsilon_in_denominator``
        gives it an update near zero.
        """
        if self.epsilon_in_denominator:
            weights = attention / (attention.sum(dim=-1, keepdim=True) + self.epsilon)
        else:
            weights = attention + self.epsilon
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return torch.einsum("bsn,bnd->bsd", weights, values)  # (B, S, D)

    def attend(self, slots: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One refinement round: returns (new slots (B, S, D), attention (B, S, N) summing to 1 over slots)."""
        slots, attention, _ = self.attend_with_logits(slots, keys, values)
        return slots, attention

    def attend_with_logits(self, slots: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``attend`` that also returns the round's pre-softmax logits (B, S, N)."""
        normed = self.slot_norm(slots)
        queries = self.to_queries(normed)  # (B, S, D)
        logits = torch.einsum("bsd,bnd->bsn", queries, keys) * self.scale  # (B, S, N)
        attention = logits.softmax(dim=1)  # competition: each input is shared out among slots
        updates = self.weighted_means(attention, values)  # (B, S, D)
        slots = gru_update(self.gru, updates, normed if self.gru_on_normed_slots else slots)  # (B, S, D)
        slots = slots + self.mlp(slots)
        return slots, attention, logits

    def forward(
        self,
        inputs: torch.Tensor,
        noise: dict[str, torch.Tensor] | None = None,
        initial: torch.Tensor | None = None,
        iterations: int | None = None,
    ) -> AggregatorOutput:
        """inputs (B, N, D_in) -> slots (B, S, D) and the last attention (B, S, N).

        ``noise``: ``draw_noise``'s output for this batch; None draws any noise from torch's global generator.
        ``initial`` (B, S, D): start from these slots instead of the learned queries (temporal models: the previous
        frame's transited slots, or queries from boxes); ``iterations``: override the configured number of rounds.
        """
        inputs = self.input_norm(inputs)
        keys = self.to_keys(inputs)  # (B, N, D)
        values = self.to_values(inputs)  # (B, N, D)
        if initial is None:
            initial = self.initial_slots(inputs.shape[0], inputs, (noise or {}).get("slots"))
        slots = initial
        for _ in range((iterations or self.iterations) - 1):
            slots, _ = self.attend(slots, keys, values)
        if self.straight_through:
            # Same value as ``slots``; the gradient skips the earlier rounds and lands on the initial slots.
            slots = slots.detach() + initial - initial.detach()
        slots, attention, logits = self.attend_with_logits(slots, keys, values)
        return AggregatorOutput(slots=slots, attention=attention, logits=logits)


class SlotAttention(IterativeSlotAttention):
    """Slot Attention by name: per-slot learned means, a shared learned std, noise in training (unless overridden)."""


class BOQSA(IterativeSlotAttention):
    """BO-QSA by name: learned queries, straight-through last iteration (unless overridden)."""
