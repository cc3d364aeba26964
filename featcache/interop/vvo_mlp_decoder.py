"""The spatial-broadcast MLP decoders of VVO, videosaur and OCLF onto featcache's ``MlpDecoder``.

All three broadcast each slot over the patch grid, add a learned position embedding, run one MLP whose last
output channel is the alpha logit, softmax the alphas over slots and mix the per-slot predictions; they differ
only in activation and initialisation, which the ``*_MLP_OPTIONS`` below select. Build the featcache decoder
with those options (and the checkpoint's sizes), then load the mapped state dict.

- VVO (Genera1Z/VQ-VFM-OCL ``BroadcastMLPDecoder`` with ``LearntPositionalEmbedding`` and ``MLP``): keys
  ``posit_embed.pe`` (1, N, D) and ``backbone.{i}.weight|bias``. VVO-Mlp predicts codes then features
  (channels ``[:code_dim]`` and ``[code_dim:]``), as featcache's ``codes+features`` target does.
- videosaur (``MLPDecoder``): ``pos_emb`` (1, 1, N, D) and ``mlp.layers.{i}.weight|bias``.
- OCLF (``PatchDecoder`` without ``decoder_input_dim``): ``pos_embed`` (1, N, D) and ``decoder.{i}.weight|bias``.
"""

from __future__ import annotations

from typing import Any

import torch

from featcache.errors import FeatcacheError

#: ``decoder.mlp`` options of VVO's decoder (object_centric_bench/model/basic.py MLP: GELU; ocl.py
#: LearntPositionalEmbedding: ``nn.init.trunc_normal_`` defaults; the decoder is not re-initialised).
VVO_MLP_OPTIONS: dict[str, Any] = {"activation": "gelu", "position_init": "trunc_normal_1", "bias_init": "torch"}
#: videosaur's MLPDecoder (activation "relu" by default and in configs/dinosaur; position std D^-0.5; its
#: ``init_parameters`` call leaves the Linear layers at PyTorch's default init).
VIDEOSAUR_MLP_OPTIONS: dict[str, Any] = {"activation": "relu", "position_init": "normal_inv_sqrt_dim", "bias_init": "torch"}
#: OCLF's PatchDecoder with ``build_mlp`` (ReLU, zero biases, position std 0.02).
OCLF_MLP_OPTIONS: dict[str, Any] = {"activation": "relu", "position_init": "normal_0.02", "bias_init": "zero"}


def vvo_mlp_options(decode_config: dict[str, Any]) -> dict[str, Any]:
    """``decoder.mlp`` settings (width, depth and ``VVO_MLP_OPTIONS``) of an official ``decode=dict(type=
    "BroadcastMLPDecoder", ...)`` config; fails on the official variants featcache does not build."""
    backbone = decode_config.get("backbone", {})
    dims = list(backbone.get("dims", []))
    if decode_config.get("type", "BroadcastMLPDecoder") != "BroadcastMLPDecoder" or len(dims) < 2:
        raise FeatcacheError("VVO decode must be a BroadcastMLPDecoder whose backbone MLP has at least 2 dims")
    hidden = dims[:-1]
    if len(set(hidden)) != 1:
        raise FeatcacheError(f"VVO decoder MLP hidden dims must all be equal, got {hidden}")
    if backbone.get("ln") is not None or backbone.get("dropout", 0):
        raise FeatcacheError(
            f"VVO decoder MLP with ln={backbone.get('ln')!r}, dropout={backbone.get('dropout')!r} has no featcache "
            "equivalent (needs ln=None, dropout=0)"
        )
    return {"hidden": int(hidden[0]), "layers": len(hidden), **VVO_MLP_OPTIONS}


def _map(what: str, state: dict[str, torch.Tensor], position_key: str, mlp_prefix: str) -> dict[str, torch.Tensor]:
    """Position embedding -> ``position_embedding`` (1, N, D); the k-th Linear of ``mlp_prefix`` -> ``mlp.{2k}``."""
    indices: set[int] = set()
    unexpected: list[str] = []
    for key in state:
        head, _, part = key[len(mlp_prefix) :].partition(".")
        if key.startswith(mlp_prefix) and head.isdigit() and part in ("weight", "bias"):
            indices.add(int(head))
        elif key != position_key:
            unexpected.append(key)
    linears = sorted(indices)
    expected = {position_key} | {f"{mlp_prefix}{i}.{part}" for i in linears for part in ("weight", "bias")}
    missing = sorted(expected - set(state))
    if missing or unexpected or len(linears) < 2:
        raise FeatcacheError(
            f"{what} state dict does not match: missing keys {missing}, unexpected keys {sorted(unexpected)}"
            + ("" if len(linears) >= 2 else f", needs at least 2 Linear layers under {mlp_prefix!r}")
        )
    position = state[position_key]
    if position.dim() < 3 or any(size != 1 for size in position.shape[:-2]):
        raise FeatcacheError(f"{what} {position_key} must be (1, ..., N, D), got shape {tuple(position.shape)}")
    mapped = {"position_embedding": position.reshape(1, *position.shape[-2:])}  # (1, N, D)
    for k, index in enumerate(linears):
        if state[f"{mlp_prefix}{index}.weight"].dim() != 2:
            raise FeatcacheError(f"{what} {mlp_prefix}{index} is not a Linear layer (a LayerNorm?); featcache's MLP has none")
        for part in ("weight", "bias"):
            mapped[f"mlp.{2 * k}.{part}"] = state[f"{mlp_prefix}{index}.{part}"]
    return mapped


def map_mlp_decoder(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """VVO ``BroadcastMLPDecoder`` state dict (keys relative to the decoder) -> featcache ``MlpDecoder``'s.

    Layouts agree; only names change (the official Sequential's Linears may sit at any indices)."""
    return _map("VVO BroadcastMLPDecoder", state, "posit_embed.pe", "backbone.")


def map_videosaur_mlp_decoder(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """videosaur ``MLPDecoder`` state dict -> featcache ``MlpDecoder``'s (position embedding (1, 1, N, D) -> (1, N, D))."""
    return _map("videosaur MLPDecoder", state, "pos_emb", "mlp.layers.")


def map_oclf_mlp_decoder(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OCLF ``PatchDecoder`` (``build_mlp`` backbone, no input transform) state dict -> featcache ``MlpDecoder``'s."""
    return _map("OCLF PatchDecoder", state, "pos_embed", "decoder.")
