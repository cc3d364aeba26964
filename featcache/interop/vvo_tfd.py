"""VVO-Tfd's decoder (``ARTransformerDecoder`` of Genera1Z/VQ-VFM-OCL) onto featcache's ``TransformerDecoder``.

The official decoder reads the frozen code vectors (no input embedding), keeps its first layer's self-attention
norm as a separate input norm, has no final norm and, in the VVO configs, no biases. Build the featcache
decoder with ``VVO_TFD_OPTIONS`` (and the sizes of the checkpoint), then load ``map_vvo_tfd(state)``.
"""

from __future__ import annotations

import re

import torch

from featcache.errors import FeatcacheError

#: ``decoder.tfd`` options that make featcache's decoder the official one (config-vqdino/vqdino_tfd_r-*.py).
VVO_TFD_OPTIONS: dict[str, object] = {
    "input_embedding": "codes",
    "bias": False,
    "first_norm": "input",
    "final_norm": False,
    "readout_bias": False,
    "bos_init": "normal_inv_sqrt_dim",
    "position_init": "trunc_normal_1",
    "layer_init": "cloned",
}

#: Per-layer parameter names (identical in nn.TransformerDecoderLayer and featcache's DecoderLayer).
_LAYER_KEY = re.compile(
    r"backbone\.layers\.(\d+)\."
    r"((?:self_attn|multihead_attn)\.(?:in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)"
    r"|(?:linear1|linear2|norm1|norm2|norm3)\.(?:weight|bias))"
)

#: Official name -> featcache name for the parameters outside the layers.
_RENAMES = {
    "bos": "bos",
    "posit_embed.pe": "position_embedding",
    "norm0.weight": "input_norm.weight",
    "norm0.bias": "input_norm.bias",
    "readout.weight": "readout.weight",
    "readout.bias": "readout.bias",
}


def map_vvo_tfd(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ARTransformerDecoder state dict (keys relative to the decoder) -> featcache TransformerDecoder's.

    Layouts agree (the layers are ``nn.TransformerDecoderLayer`` on both sides; BOS (1, 1, d) and position
    embedding (1, N, d) keep their shapes); only names change. Raises on keys it does not know and on
    missing ones.
    """
    mapped: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, value in state.items():
        match = _LAYER_KEY.fullmatch(key)
        if match:
            mapped[f"layers.{match.group(1)}.{match.group(2)}"] = value
        elif key in _RENAMES:
            mapped[_RENAMES[key]] = value
        else:
            unexpected.append(key)
    if unexpected:
        raise FeatcacheError(f"VVO Tfd decoder: unexpected keys {', '.join(sorted(unexpected))}")
    required = ("bos", "posit_embed.pe", "norm0.weight", "readout.weight", "backbone.layers.0.linear1.weight")
    missing = [key for key in required if key not in state]
    if missing:
        raise FeatcacheError(f"VVO Tfd decoder: missing keys {', '.join(missing)}")
    return mapped
