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
    "TemporalConfig",
    "TransformerDecoderConfig",
]


@dataclass(frozen=True)
class TemporalConfig:
    """Video OCL (VVO's ``VqVfmOclT``, VideoSAUR): the image model run over a clip's frames in order, each frame's
    slot attention starting from the previous frame's slots passed through ``transit``.

    Off by default (image models). The defaults are the official VVO temporal code's
    (object_centric_bench/model/vqvfmocl.py ``VqVfmOclT``, config-vqdino/vqdino_tfdt_c-movi_d.py).
    """

    #: Train and evaluate on clips (a video store): features (B, T, h, w, C).
    enabled: bool = False
    #: Slots of frame t -> queries of frame t+1. ``transformer``: VVO's ``nn.TransformerEncoderLayer`` (post-norm,
    #: GELU, no biases, dropout 0.1); ``videosaur``: VideoSAUR's predictor (one pre-norm transformer block, ReLU,
    #: with biases, no dropout, attention logits scaled by sqrt(head_dim) as videosaur's Attention computes them;
    #: videosaur/modules/networks.py TransformerEncoder, n_blocks 1); ``none``: every frame
    #: starts from fresh queries (the same model frame by frame: the ablation without temporal propagation).
    transit: Literal["none", "transformer", "videosaur"] = "transformer"
    #: Attention heads of the transit layer (VVO and videosaur: 4).
    transit_heads: int = 4
    #: Feed-forward width of the transit layer; 0 = 4 x slot_dim (both anchors).
    transit_feedforward: int = 0
    #: Dropout of the ``transformer`` transit (VVO: 0.1; the ``videosaur`` transit has none).
    transit_dropout: float = 0.1
    #: First frame's queries: ``learned``: the aggregator's own queries (VVO's Gaussian initialiser, videosaur's
    #: RandomInit); ``bbox``: VVO's ``MLP(in_dim=4, dims=[D, D])`` of the first frame's boxes (l, t, r, b in [0, 1]),
    #: derived from the stored instance masks of the view: slot k gets instance k+1's box, slots without an
    #: instance in the first frame get zeros (VVO's PadTo1 value 0).
    query_init: Literal["learned", "bbox"] = "learned"
    #: Slot-attention rounds on the first frame; 0 = ``aggregator.iterations`` (videosaur: 3 first, then 2).
    first_frame_iterations: int = 0
    #: Frames per training window (VVO's StridedRandomSlice1 size 6); evaluation runs whole clips.
    window: int = 6
    #: ``strided``: windows start at multiples of ``window`` (VVO's StridedRandomSlice1: non-overlapping);
    #: ``any``: at any frame (VVO's RandomSliceTo1).
    window_sampling: Literal["strided", "any"] = "strided"

    def __post_init__(self) -> None:
        for name in ("transit_heads", "window"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config key 'temporal.{name}' must be at least 1, got {getattr(self, name)}")
        for name in ("transit_feedforward", "first_frame_iterations"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config key 'temporal.{name}' must be at least 0, got {getattr(self, name)}")
        if not 0.0 <= self.transit_dropout < 1.0:
            raise ConfigError(f"config key 'temporal.transit_dropout' must lie in [0, 1), got {self.transit_dropout}")


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
    #: Video models (off for image models): see ``TemporalConfig``.
    temporal: TemporalConfig = field(default_factory=TemporalConfig)

    def __post_init__(self) -> None:
        if self.projection_hidden < 1:
            raise ConfigError(f"config key 'projection_hidden' must be at least 1, got {self.projection_hidden}")
        if not 0.0 <= self.projection_dropout < 1.0:
            raise ConfigError(f"config key 'projection_dropout' must lie in [0, 1), got {self.projection_dropout}")


#: Before issue 12: the layernorm_mlp projection used ReLU and PyTorch's default biases.
saved_before(OCLModelConfig, {"projection_activation": "relu", "projection_bias_init": "torch"})
