"""Settings of the slot aggregator (Slot Attention and its BO-QSA variant)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from featcache.errors import ConfigError


@dataclass(frozen=True)
class AggregatorConfig:
    """Slot Attention settings; defaults follow VVO with DINOv2 ViT-S/14 on COCO."""

    #: ``slot_attention``: per-slot learned Gaussian queries (noise in training);
    #: ``bo_qsa``: learned deterministic queries trained through a straight-through last iteration.
    name: Literal["slot_attention", "bo_qsa"] = "bo_qsa"
    #: Number of slots S (COCO 7, VOC 6, ClevrTex 11).
    num_slots: int = 7
    #: Slot width D.
    slot_dim: int = 256
    #: Attention-GRU-MLP refinement rounds.
    iterations: int = 3
    #: Hidden width of the residual slot MLP.
    mlp_hidden: int = 1024
    #: Added to the softmax-over-slots attention before it is renormalised over inputs.
    epsilon: float = 1e-8

    def __post_init__(self) -> None:
        for name in ("num_slots", "slot_dim", "iterations", "mlp_hidden"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config key 'aggregator.{name}' must be at least 1, got {getattr(self, name)}")
        if self.epsilon < 0:
            raise ConfigError(f"config key 'aggregator.epsilon' must not be negative, got {self.epsilon}")
