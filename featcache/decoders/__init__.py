"""OCL decoders: reconstruct a cached target from slots; ``create_decoder`` builds one by name.

Decoder names and the targets each accepts:

- ``mlp`` (DINOSAUR / VVO-Mlp): ``features`` or ``codes+features``; returns masks (its alphas).
- ``tfd`` (VVO-Tfd, auto-regressive Transformer): ``tokens`` or ``features``; returns masks (its last
  cross-attention to the slots, SPOT's decoder masks).
- ``dfz`` (VVO-Dfz, conditional diffusion on the code map): ``codes``; no masks.

``dfz`` lives in :mod:`featcache.decoders.diffusion` and is imported only when built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from featcache.decoders.base import DecoderOutput, DecoderTargets, SlotDecoder
from featcache.decoders.diffusion_config import DiffusionDecoderConfig
from featcache.decoders.mlp import MlpDecoder, MlpDecoderConfig
from featcache.decoders.transformer import TransformerDecoder, TransformerDecoderConfig
from featcache.errors import ConfigError, FeatcacheError
from featcache.registry import Registry

__all__ = [
    "DECODERS",
    "DECODER_TARGETS",
    "DecoderConfig",
    "DecoderOutput",
    "DecoderTargets",
    "DiffusionDecoderConfig",
    "MlpDecoder",
    "MlpDecoderConfig",
    "SlotDecoder",
    "TransformerDecoder",
    "TransformerDecoderConfig",
    "check_decoder_target",
    "create_decoder",
]

#: The reconstruction targets each decoder accepts (first = the one VVO uses).
DECODER_TARGETS: dict[str, tuple[str, ...]] = {
    "mlp": ("codes+features", "features"),
    "tfd": ("tokens", "features"),
    "dfz": ("codes",),
}


def check_decoder_target(name: str, target: str) -> None:
    """Fail in one line when decoder ``name`` cannot reconstruct ``target`` (unknown names pass: the registry reports them)."""
    valid = DECODER_TARGETS.get(name)
    if valid is not None and target not in valid:
        raise ConfigError(
            f"decoder {name!r} cannot reconstruct target {target!r}; "
            f"decoder.target for {name} must be one of: {', '.join(valid)}"
        )


@dataclass(frozen=True)
class DecoderConfig:
    """Which decoder, what it reconstructs, and the settings of each decoder kind (only ``name``'s are used)."""

    name: Literal["mlp", "tfd", "dfz"] = "tfd"
    #: ``features``: VFM features; ``tokens``: VQ indices; ``codes``: quantized code vectors;
    #: ``codes+features``: both code vectors and features (VVO-Mlp).
    target: Literal["features", "tokens", "codes", "codes+features"] = "tokens"
    mlp: MlpDecoderConfig = field(default_factory=MlpDecoderConfig)
    tfd: TransformerDecoderConfig = field(default_factory=TransformerDecoderConfig)
    dfz: DiffusionDecoderConfig = field(default_factory=DiffusionDecoderConfig)

    def __post_init__(self) -> None:
        check_decoder_target(self.name, self.target)


#: factory(config, slot_dim, grid, feature_dim, codebook_size, code_dim) -> decoder
DecoderFactory = Callable[[DecoderConfig, int, tuple[int, int], int, int, int], SlotDecoder]

DECODERS = Registry[DecoderFactory]("decoder")


@DECODERS.decorator("mlp")
def _build_mlp(
    config: DecoderConfig, slot_dim: int, grid: tuple[int, int], feature_dim: int, codebook_size: int, code_dim: int
) -> SlotDecoder:
    return MlpDecoder(config.mlp, slot_dim, grid, config.target, feature_dim, code_dim)  # type: ignore[arg-type]


@DECODERS.decorator("tfd")
def _build_tfd(
    config: DecoderConfig, slot_dim: int, grid: tuple[int, int], feature_dim: int, codebook_size: int, code_dim: int
) -> SlotDecoder:
    return TransformerDecoder(config.tfd, slot_dim, grid, config.target, feature_dim, codebook_size, code_dim)  # type: ignore[arg-type]


@DECODERS.decorator("dfz")
def _build_dfz(
    config: DecoderConfig, slot_dim: int, grid: tuple[int, int], feature_dim: int, codebook_size: int, code_dim: int
) -> SlotDecoder:
    # Imported here so the other decoders (and config loading) never depend on the diffusion module.
    from featcache.decoders.diffusion import DiffusionDecoder

    if code_dim < 1:
        raise FeatcacheError("decoder dfz with target codes needs a codebook (code_dim is 0)")
    return DiffusionDecoder(config.dfz, slot_dim, code_dim, grid)


def create_decoder(
    config: DecoderConfig,
    slot_dim: int,
    grid: tuple[int, int],
    feature_dim: int,
    codebook_size: int = 0,
    code_dim: int = 0,
) -> SlotDecoder:
    """Build the decoder ``config.name`` for slots of width ``slot_dim`` on an (h, w) ``grid``.

    ``codebook_size``/``code_dim`` describe the frozen VQ codebook (0 when the target is ``features``).
    """
    factory = DECODERS.get(config.name)
    check_decoder_target(config.name, config.target)
    return factory(config, slot_dim, grid, feature_dim, codebook_size, code_dim)
