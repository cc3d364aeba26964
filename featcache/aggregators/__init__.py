"""Slot aggregators: turn a set of projected VFM features (B, N, D_in) into slots (B, S, D).

``create_aggregator`` builds one by ``AggregatorConfig.name``; unknown names fail listing the valid ones.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from featcache.aggregators.config import AggregatorConfig
from featcache.aggregators.slot_attention import BOQSA, AggregatorOutput, IterativeSlotAttention, SlotAttention
from featcache.registry import Registry

__all__ = [
    "AGGREGATORS",
    "BOQSA",
    "AggregatorConfig",
    "AggregatorOutput",
    "IterativeSlotAttention",
    "SlotAttention",
    "create_aggregator",
]

AggregatorFactory = Callable[[AggregatorConfig, int], nn.Module]

AGGREGATORS = Registry[AggregatorFactory]("aggregator")
AGGREGATORS.register("slot_attention", SlotAttention)
AGGREGATORS.register("bo_qsa", BOQSA)


def create_aggregator(config: AggregatorConfig, input_dim: int) -> nn.Module:
    """Build the aggregator named by ``config.name`` for inputs of width ``input_dim``."""
    return AGGREGATORS.get(config.name)(config, input_dim)
