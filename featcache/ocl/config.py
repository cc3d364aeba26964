"""OCL model config: feature projection, slot aggregator, decoder, and where object masks come from.

Merged from YAML by :mod:`featcache.config` (plain types and nested frozen dataclasses only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from featcache.aggregators.config import AggregatorConfig
from featcache.config import saved_before
from featcache.decoders import DecoderConfig, MlpDecoderConfig, TransformerDecoderConfig
from featcache.decoders.diffusion_config import DiffusionDecoderConfig
from featcache.errors import ConfigError

__all__ = [
    "AggregatorConfig",
    "DecoderConfig",
    "DiffusionDecoderConfig",
    "MlpDecoderConfig",
    "OCLModelConfig",
    "TransformerDecoderConfig",
]


@dataclass(frozen=True)
class OCLModelConfig:
    """The trainable part of an OCL model; the VFM and the quantizer are frozen upstream (in the store).

    Defaults are the official VVO code's (config-vqdino/vqdino_tfd_r-coco.py: the Linear-Dropout-Linear projection).
    """

    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    #: Hidden width of the feature projection into the slot width.
    projection_hidden: int = 768
    #: Dropout between the projection's two linear layers.
    projection_dropout: float = 0.01
    #: ``mlp``: Linear(C, hidden) - Dropout - Linear(hidden, slot_dim), no activation (VVO-Tfd/Dfz);
    #: ``layernorm_mlp``: LayerNorm(C) - Linear - activation - Dropout - Linear (DINOSAUR, VVO-Mlp).
    projection: Literal["mlp", "layernorm_mlp"] = "mlp"
    #: Activation of the ``layernorm_mlp`` projection (VVO's DINOSAUR/VVO-Mlp: gelu; OCLF, videosaur: relu).
    projection_activation: Literal["relu", "gelu"] = "gelu"
    #: Initial biases of the projection's linear layers: ``torch`` (PyTorch defaults) or ``zero`` (VVO's
    #: reset_parameters, OCLF's and videosaur's MLPs).
    projection_bias_init: Literal["torch", "zero"] = "zero"
    #: ``none``: the VFM features carry position (pretrained DINOv2/SAM2); ``soft``: add Slot Attention's soft
    #: position embedding (a learned linear map of the patch's grid coordinates) to the aggregator input, for
    #: features without position, such as those of randomly initialised VFMs (see the README, "OCL quality").
    input_position: Literal["none", "soft"] = "none"
    #: Object masks for evaluation: slot-attention maps, or the decoder's own masks (mlp: its alphas; tfd: its last
    #: cross-attention to the slots; dfz has none).
    mask_source: Literal["attention", "decoder"] = "attention"

    def __post_init__(self) -> None:
        if self.projection_hidden < 1:
            raise ConfigError(f"config key 'projection_hidden' must be at least 1, got {self.projection_hidden}")
        if not 0.0 <= self.projection_dropout < 1.0:
            raise ConfigError(f"config key 'projection_dropout' must lie in [0, 1), got {self.projection_dropout}")


#: Before issue 12: the layernorm_mlp projection used ReLU and PyTorch's default biases.
saved_before(OCLModelConfig, {"projection_activation": "relu", "projection_bias_init": "torch"})
