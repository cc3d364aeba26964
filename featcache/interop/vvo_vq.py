"""The official VVO quantizer (Genera1Z/VQ-VFM-OCL ``VQVAEZ`` encoder + ``QuantiZ``) as featcache's VectorQuantizer.

The official pre-training model keeps the quantizer in ``mediat``: ``encode`` (a CNN of Conv3x3-GroupNorm-SiLU
blocks whose last block is a plain Conv3x3, then GroupNorm and a Conv1x1), ``quant`` (frozen N(0, 1) templates
``codebook.weight`` and the projection ``project``) and ``decode`` (the image decoder, not part of the
quantizer). :func:`map_quantizer` renames these weights onto :class:`featcache.quantize.VectorQuantizer`;
:func:`official_quantizer_config` gives the config that reproduces the official quantizer with them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace

import torch

from featcache.errors import FeatcacheError
from featcache.quantize.config import QuantizerConfig, VQDecoderConfig

#: How the official code behaves where featcache's defaults differ (vaez.py, basic.py CNN, vqdino-*.py configs).
OFFICIAL_QUANTIZER_OPTIONS: dict[str, object] = {
    "encoder_last_block": "conv",
    "projection_bias": True,
    "code_similarity": "standardised_distance",
    "gumbel_scaling": "similarities",
    "commitment_target": "residual",
}

_CNN_KEY = re.compile(r"^encode\.0\.(\d+)\.(weight|bias)$")
_FIXED_KEYS = {
    "encode.1.weight": "encoder.output_norm.weight",
    "encode.1.bias": "encoder.output_norm.bias",
    "encode.2.weight": "encoder.output_projection.weight",
    "encode.2.bias": "encoder.output_projection.bias",
    "quant.codebook.weight": "codebook.templates",
    "quant.project.weight": "codebook.projection.weight",
    "quant.project.bias": "codebook.projection.bias",
}
_REQUIRED = ("encode.0.0.weight", "encode.1.weight", "encode.2.weight", "quant.codebook.weight", "quant.project.weight")


def quantizer_key_map(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Official ``mediat`` key -> featcache VectorQuantizer key, for every quantizer entry of ``state``.

    The encoder CNN's layers are numbered by the official Sequential (Conv, GroupNorm, SiLU, Conv, ...): a 4-d
    weight starts block ``b``, a 1-d weight after it is that block's GroupNorm. ``decode.*`` keys (the image
    decoder) are skipped; anything else raises :class:`FeatcacheError`.
    """
    missing = [key for key in _REQUIRED if key not in state]
    if missing:
        raise FeatcacheError(f"VVO quantizer weights lack {', '.join(missing)}")
    unexpected = [
        key for key in state if key not in _FIXED_KEYS and not _CNN_KEY.match(key) and not key.startswith("decode.")
    ]
    if unexpected:
        raise FeatcacheError(f"VVO quantizer weights have unexpected keys {', '.join(sorted(unexpected))}")
    cnn_indices = sorted({int(match.group(1)) for key in state if (match := _CNN_KEY.match(key))})
    key_map: dict[str, str] = {}
    block, has_norm = -1, False
    for index in cnn_indices:
        weight_key = f"encode.0.{index}.weight"
        if weight_key not in state:
            raise FeatcacheError(f"VVO quantizer weights lack {weight_key}")
        if state[weight_key].ndim == 4:  # a convolution starts the next block
            if block >= 0 and not has_norm:
                raise FeatcacheError(f"VVO encoder block {block} has no GroupNorm before layer encode.0.{index}")
            block, has_norm, slot = block + 1, False, 0
        elif block >= 0 and not has_norm:  # the block's GroupNorm
            has_norm, slot = True, 1
        else:
            raise FeatcacheError(f"VVO encoder layer encode.0.{index} is not a Conv2d or a GroupNorm after one")
        for name in ("weight", "bias"):
            if f"encode.0.{index}.{name}" in state:
                key_map[f"encode.0.{index}.{name}"] = f"encoder.blocks.{block}.{slot}.{name}"
    if has_norm:
        raise FeatcacheError("VVO encoder ends with a GroupNorm inside its CNN; expected a plain last Conv2d")
    key_map.update({key: target for key, target in _FIXED_KEYS.items() if key in state})
    return key_map


def map_quantizer(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(featcache VectorQuantizer state dict, codebook (K, D) float32) from an official ``mediat`` state dict.

    The codebook is what ``featcache tokenize`` stores: the projected codes ``W T0 + b``.
    """
    mapped = {target: state[key].detach().float().clone() for key, target in quantizer_key_map(state).items()}
    with torch.no_grad():
        codebook = mapped["codebook.templates"] @ mapped["codebook.projection.weight"].t()  # (K, c0) -> (K, D)
        if "codebook.projection.bias" in mapped:
            codebook = codebook + mapped["codebook.projection.bias"]
    return mapped, codebook


def official_quantizer_config(state: Mapping[str, torch.Tensor], **overrides: object) -> QuantizerConfig:
    """The QuantizerConfig that reproduces the official quantizer whose ``mediat`` weights are ``state``.

    Sizes come from the weights, behaviour from :data:`OFFICIAL_QUANTIZER_OPTIONS`; the official recipe values
    (Gumbel scale 1 -> 2.35, alpha annealed over half of training, loss weights 1 / 0.25 / 0.1) are featcache's
    defaults. ``overrides`` set anything else, e.g. ``residual_alpha_end=1.0`` for the ClevrTex/MOVi-D configs.
    """
    key_map = quantizer_key_map(state)
    convs = [key for key, target in key_map.items() if re.fullmatch(r"encoder\.blocks\.\d+\.0\.weight", target)]
    widths = {int(state[key].shape[0]) for key in convs}
    if len(widths) != 1:
        raise FeatcacheError(f"VVO encoder blocks have different widths {sorted(widths)}; featcache needs one width")
    hidden = widths.pop()
    feature_channels = int(state["encode.0.0.weight"].shape[1])
    config = QuantizerConfig(
        codebook_size=int(state["quant.codebook.weight"].shape[0]),
        code_dim=int(state["quant.project.weight"].shape[0]),
        template_dim=int(state["quant.codebook.weight"].shape[1]),
        encoder_layers=len(convs),
        encoder_channels=0 if hidden == feature_channels else hidden,
        **{**OFFICIAL_QUANTIZER_OPTIONS, "projection_bias": "quant.project.bias" in state},  # type: ignore[arg-type]
    )
    return replace(config, **overrides) if overrides else config  # type: ignore[arg-type]


def _decoder_key_map() -> dict[str, str]:
    """Official ``decode.*`` key -> featcache VVOPixelDecoder key, for the official decoder's every weight.

    Official layout: ``decode.0`` Conv1x1; ``decode.1`` CNN (0 Conv, 1 GroupNorm, 3.0 pixel-shuffle Conv,
    4 GroupNorm, 6 Conv); ``decode.2`` GroupNorm; ``decode.4`` TAESD decoder layers 2-4 (blocks);
    ``decode.5`` TAESD decoder layers 6-18 (the first upsampling, layer 5, is left out).
    """
    stem = {"0": 0, "1.0": 1, "1.1": 2, "1.3.0": 4, "1.4": 6, "1.6": 8, "2": 9}
    key_map = {
        f"decode.{official}.{name}": f"stem.{index}.{name}"
        for official, index in stem.items()
        for name in ("weight", "bias")
    }
    body = {f"4.{index}": index for index in range(3)} | {f"5.{index}": index + 3 for index in range(13)}
    blocks, plain_convs, upsamplings = {0, 1, 2, 4, 5, 6, 9, 10, 11, 14}, {3, 8, 13}, {7, 12}
    for official, index in body.items():
        if index in blocks:
            for conv in (0, 2, 4):
                for name in ("weight", "bias"):
                    key_map[f"decode.{official}.conv.{conv}.{name}"] = f"body.{index}.conv.{conv}.{name}"
        elif index in plain_convs:
            key_map[f"decode.{official}.weight"] = f"body.{index}.weight"
        elif index not in upsamplings:  # the output convolution
            for name in ("weight", "bias"):
                key_map[f"decode.{official}.{name}"] = f"body.{index}.{name}"
    return key_map


def map_decoder(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """featcache VVOPixelDecoder state dict from an official ``mediat`` state dict (its ``decode.*`` entries).

    ``encode.*`` and ``quant.*`` keys (the quantizer, see :func:`map_quantizer`) are skipped.
    """
    key_map = _decoder_key_map()
    missing = [key for key in key_map if key not in state]
    if missing:
        more = " ..." if len(missing) > 5 else ""
        raise FeatcacheError(f"VVO decoder weights lack {', '.join(missing[:5])}{more}")
    unexpected = [key for key in state if key.startswith("decode.") and key not in key_map] + [
        key for key in state if not key.startswith(("decode.", "encode.", "quant."))
    ]
    if unexpected:
        raise FeatcacheError(f"VVO decoder weights have unexpected keys {', '.join(sorted(unexpected))}")
    return {target: state[key].detach().float().clone() for key, target in key_map.items()}


def official_decoder_config(state: Mapping[str, torch.Tensor], grid_side: int) -> VQDecoderConfig:
    """The VQDecoderConfig of the official decoder whose ``mediat`` weights are ``state``, for a ``grid_side`` grid."""
    map_decoder(state)
    return VQDecoderConfig(
        target="pixels",
        architecture="vvo",
        channels=int(state["decode.0.weight"].shape[0]),
        body_channels=int(state["decode.2.weight"].shape[0]),
        image_size=8 * grid_side,
    )


__all__ = [
    "OFFICIAL_QUANTIZER_OPTIONS",
    "map_decoder",
    "map_quantizer",
    "official_decoder_config",
    "official_quantizer_config",
    "quantizer_key_map",
]
