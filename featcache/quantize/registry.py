"""The quantizer registry: each ``quantizer.kind`` names its config class and its module.

``vvo``: VVO's single-codebook quantizer (:class:`VectorQuantizer`); ``msf``: the multi-scale fused quantizer
(:class:`MSFQuantizer`). Registering the configs as variants of one another (:func:`featcache.config.variants`)
lets a YAML file select the quantizer with ``quantizer.kind`` and then set that quantizer's own keys.
"""

from __future__ import annotations

from torch import nn

from featcache.config import variants
from featcache.errors import ConfigError
from featcache.quantize.config import QuantizerConfig
from featcache.quantize.msf import MSFQuantizer, MSFQuantizerConfig
from featcache.quantize.quantizer import VectorQuantizer

#: kind -> (config class, quantizer module class).
QUANTIZERS: dict[str, tuple[type[QuantizerConfig], type[nn.Module]]] = {
    "vvo": (QuantizerConfig, VectorQuantizer),
    "msf": (MSFQuantizerConfig, MSFQuantizer),
}

variants("kind", {kind: config_class for kind, (config_class, _) in QUANTIZERS.items()})


def build_quantizer(config: QuantizerConfig, feature_channels: int) -> nn.Module:
    """The quantizer module that ``config.kind`` names, for features of ``feature_channels`` channels."""
    if config.kind not in QUANTIZERS:
        raise ConfigError(f"config key 'quantizer.kind' must be one of {', '.join(QUANTIZERS)}, got {config.kind!r}")
    config_class, module_class = QUANTIZERS[config.kind]
    if not isinstance(config, config_class):
        raise ConfigError(f"quantizer kind {config.kind!r} needs a {config_class.__name__}, got {type(config).__name__}")
    return module_class(config, feature_channels)


def decoder_input_dim(config: QuantizerConfig) -> int:
    """Channels of what the quantizer hands its decoders: MSF's encoder_dim when projecting, else code_dim."""
    return getattr(config, "encoder_dim", 0) or config.code_dim


__all__ = ["QUANTIZERS", "build_quantizer", "decoder_input_dim"]
