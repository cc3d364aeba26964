"""VVO-Dfz's decoder (``ConditionDiffusionDecoder`` of Genera1Z/VQ-VFM-OCL) onto featcache's ``DiffusionDecoder``.

The official decoder is a DDPM noise schedule (no tensors) around Stable Diffusion's conditional UNet
(``backbone.*``). Build featcache's decoder with ``VVO_DFZ_OPTIONS`` (the official UNet and schedule,
config-vqdino/vqdino_dfz_r-*.py) and load ``map_vvo_dfz(state, decoder)``: the UNet's layouts agree, only
names change, and the schedule buffers come from the featcache decoder itself.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from featcache.errors import FeatcacheError

if TYPE_CHECKING:
    from featcache.decoders.diffusion import DiffusionDecoder

#: ``decoder.dfz`` options that make featcache's decoder the official one (the slot width is the model's).
VVO_DFZ_OPTIONS: dict[str, object] = {
    "timesteps": 1000,
    "beta_start": 0.0015,
    "beta_end": 0.0195,
    "unet": "sd",
    "heads": 8,
    "sd_channels": (128, 256, 384, 512),
    "sd_cross_attention": (False, True, True, True),
    "sd_layers": 2,
    "sd_transformer_layers": 1,
    "sd_norm_groups": 32,
    "dropout": 0.1,
}

#: Leaf renames inside a ResBlock, a transformer layer and an attention (official -> featcache).
_RESBLOCK = {
    "norm1": "norm_in", "conv1": "conv_in", "time_emb_proj": "time_projection",
    "norm2": "norm_out", "conv2": "conv_out", "conv_shortcut": "skip",
}
_LAYER = {
    "norm1": "norm_self", "attn1": "self_attention", "norm2": "norm_cross", "attn2": "cross_attention",
    "norm3": "norm_ff", "ff.net.0.proj": "ff_in", "ff.net.2": "ff_out",
}
_ATTENTION = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "output"}

_RESBLOCK_SCOPE = r"((?:resnets\.\d+|middle_in|middle_out)\.)"  # a ResBlock's name, after the UNet-level renames

#: (pattern, replacement) applied in order to a UNet key (without ``backbone.``).
_RULES: list[tuple[str, str]] = [
    (r"^time_embedding\.linear_1\.", "time_mlp.0."),
    (r"^time_embedding\.linear_2\.", "time_mlp.2."),
    (r"^conv_in\.", "input_conv."),
    (r"^conv_norm_out\.", "output_norm."),
    (r"^conv_out\.", "output_conv."),
    (r"^down_blocks\.", "down_stages."),
    (r"^up_blocks\.", "up_stages."),
    (r"^mid_block\.resnets\.0\.", "middle_in."),
    (r"^mid_block\.resnets\.1\.", "middle_out."),
    (r"^mid_block\.attentions\.0\.", "middle_attention."),
    (r"\.(?:down|up)samplers\.0\.conv\.", ".resample."),
    (r"\.attentions\.", ".transformers."),
    (r"\.transformer_blocks\.", ".layers."),
    *((rf"{_RESBLOCK_SCOPE}{re.escape(old)}\.", rf"\g<1>{new}.") for old, new in _RESBLOCK.items()),
    *((rf"(layers\.\d+\.){re.escape(old)}\.", rf"\g<1>{new}.") for old, new in _LAYER.items()),
    *((rf"((?:self|cross)_attention\.){re.escape(old)}\.", rf"\g<1>{new}.") for old, new in _ATTENTION.items()),
]


def vvo_dfz_key(key: str) -> str:
    """Official decoder key (``backbone.down_blocks.1.attentions.0...``) -> featcache's (``unet.down_stages.1...``)."""
    if not key.startswith("backbone."):
        raise FeatcacheError(f"VVO Dfz decoder: unexpected key {key} (the decoder's weights sit under backbone.)")
    name = key.removeprefix("backbone.")
    for pattern, replacement in _RULES:
        name = re.sub(pattern, replacement, name)
    return f"unet.{name}"


def _listed(keys: list[str], shown: int = 6) -> str:
    """``a, b, c`` or ``a, b, c and 12 more``: key lists stay one readable line."""
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def map_vvo_dfz(state: dict[str, torch.Tensor], decoder: DiffusionDecoder) -> dict[str, torch.Tensor]:
    """Official ConditionDiffusionDecoder state dict (keys relative to the decoder) -> ``decoder``'s state dict.

    The UNet weights are renamed; the noise schedule, which the official code keeps outside its state dict,
    is taken from ``decoder``'s buffers. Raises naming the keys that ``decoder`` lacks or does not get.
    """
    expected = decoder.state_dict()
    mapped = {vvo_dfz_key(key): value for key, value in state.items()}
    unexpected = sorted(key for key in state if vvo_dfz_key(key) not in expected)
    if unexpected:
        raise FeatcacheError(f"VVO Dfz decoder: unexpected keys {_listed(unexpected)}")
    mapped |= {name: buffer for name, buffer in decoder.named_buffers() if name not in mapped}
    missing = sorted(set(expected) - set(mapped))
    if missing:
        raise FeatcacheError(f"VVO Dfz decoder: missing keys {_listed(missing)}")
    return mapped
