"""The official MSF quantizer (Genera1Z/MultiScaleFusion ``VQVAEZMultiScale``) as featcache's MSFQuantizer.

Official layout: ``encode.*`` (featcache tests use VVO's feature-encoder layout: CNN ``encode.0``, GroupNorm
``encode.1``, Conv1x1 ``encode.2``), ``quant.0`` the shared ``QuantiZ`` and ``quant.{1+i}`` level i's specified
one, each with frozen templates ``codebook.weight`` and the projection ``project``. The official msf configs
use ``project=None`` (no pseudo-inverse projection; ``project.*``, a ``LinearPinv``, maps to ``projection.*``) and quantize the full code vector with both codebooks,
averaging the two (featcache ``combine: average``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace

import torch

from featcache.errors import FeatcacheError
from featcache.interop.vvo_vq import OFFICIAL_QUANTIZER_OPTIONS, quantizer_key_map
from featcache.quantize.msf import MSFQuantizerConfig

_QUANT_KEY = re.compile(r"^quant\.(\d+)\.(codebook\.weight|project\.weight|project\.bias)$")
_PROJECT = {"project.weight": "projection.weight", "project.bias": "projection.bias"}
_QUANT_TARGET = {"codebook.weight": "templates", "project.weight": "projection.weight", "project.bias": "projection.bias"}


def msf_key_map(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Official key -> featcache MSFQuantizer key for every quantizer entry; ``decode.*`` is skipped."""
    quant_keys = {key: match for key in state if (match := _QUANT_KEY.match(key))}
    levels = sorted({int(match.group(1)) for match in quant_keys.values()})
    if not levels or levels != list(range(len(levels))) or len(levels) < 2:
        raise FeatcacheError(f"MSF weights need quant.0 (shared) and quant.1.. (specified), got levels {levels}")
    unexpected = [k for k in state if k not in quant_keys and k not in _PROJECT and not k.startswith(("encode.", "decode."))]
    if unexpected:
        raise FeatcacheError(f"MSF quantizer weights have unexpected keys {', '.join(sorted(unexpected))}")
    # The encoder keys follow VVO's layout: map them with VVO's mapping (quant.0 stands in for its codebook).
    encoder_state = {k: v for k, v in state.items() if k.startswith("encode.")}
    encoder_state.update({f"quant.{name}": state[f"quant.0.{name}"] for name in _QUANT_TARGET if f"quant.0.{name}" in state})
    key_map = {k: v for k, v in quantizer_key_map(encoder_state).items() if k.startswith("encode.")}
    for key, match in quant_keys.items():
        level, name = int(match.group(1)), match.group(2)
        prefix = "shared" if level == 0 else f"specified.{level - 1}"
        key_map[key] = f"{prefix}.{_QUANT_TARGET[name]}"
    key_map.update({key: target for key, target in _PROJECT.items() if key in state})
    return key_map


def map_msf(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """featcache MSFQuantizer state dict (float32) from an official ``VQVAEZMultiScale`` state dict."""
    return {target: state[key].detach().float().clone() for key, target in msf_key_map(state).items()}


def official_msf_config(state: Mapping[str, torch.Tensor], **overrides: object) -> MSFQuantizerConfig:
    """The MSFQuantizerConfig reproducing the official quantizer whose weights are ``state`` (sizes from them)."""
    key_map = msf_key_map(state)
    convs = [k for k, t in key_map.items() if re.fullmatch(r"encoder\.blocks\.\d+\.0\.weight", t)]
    hidden = int(state[convs[0]].shape[0])
    feature_channels = int(state["encode.0.0.weight"].shape[1])
    num_scales = max(int(_QUANT_KEY.match(k).group(1)) for k in key_map if _QUANT_KEY.match(k))  # type: ignore[union-attr]
    sizes = [int(state[f"quant.{1 + i}.codebook.weight"].shape[0]) for i in range(num_scales)]
    halving = [sizes[0] // 2**i for i in range(num_scales)]
    if sizes != halving and len(set(sizes)) != 1:
        raise FeatcacheError(f"MSF specified codebook sizes {sizes} neither halve per level nor are equal")
    config = MSFQuantizerConfig(
        codebook_size=int(state["quant.0.codebook.weight"].shape[0]),
        code_dim=int(state["quant.0.project.weight"].shape[0]),
        template_dim=int(state["quant.0.codebook.weight"].shape[1]),
        encoder_layers=len(convs),
        encoder_channels=0 if hidden == feature_channels else hidden,
        num_scales=num_scales,
        specified_codebook_size=sizes[0],
        specified_size_halving=sizes == halving and num_scales > 1 and sizes[0] != sizes[-1],
        combine="average",
        encoder_dim=int(state["project.weight"].shape[0]) if "project.weight" in state else 0,
        pyramid_downsample="bilinear",
        **{**OFFICIAL_QUANTIZER_OPTIONS, "projection_bias": "quant.0.project.bias" in state},  # type: ignore[arg-type]
    )
    return replace(config, **overrides) if overrides else config  # type: ignore[arg-type]


__all__ = ["map_msf", "msf_key_map", "official_msf_config"]
