"""Slot Attention, its query initialiser and the feature projection from the official VVO code (and videosaur).

VVO (Genera1Z/VQ-VFM-OCL) keeps three modules where featcache keeps two: ``aggregat`` (SlotAttention),
``initializ`` (NormalSeparat or NormalShared: the initial slots) and ``encode_project`` (the projection of the
VFM features). ``map_slot_attention`` turns the first two into the state dict of a featcache aggregator;
``map_projection`` turns the third into that of ``featcache.ocl.model.build_projection``'s module. The option
dictionaries name the featcache settings under which the mapped weights compute what the official modules do.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from featcache.errors import FeatcacheError

#: featcache ``AggregatorConfig`` fields that reproduce VVO's SlotAttention with a NormalSeparat initialiser
#: (object_centric_bench/model/ocl.py, config-vqdino/vqdino_*_r-coco.py); ``straight_through`` and
#: ``mlp_dropout`` follow the module's ``trunc_bp`` and ``dropout`` (see ``vvo_aggregator_options``).
VVO_AGGREGATOR_OPTIONS: dict[str, Any] = {
    "queries": "per_slot_gaussian",
    "query_mean_init": "xavier_uniform",
    "query_std_init": "inverse_sqrt_dim",
    "query_noise": "train",
    "renormalisation": "epsilon_in_denominator",
    "epsilon": 1e-5,
    "mlp_activation": "gelu",
    "gru_hidden": "slots",
    "qkv_init": "torch",
    "bias_init": "zero",
}

#: featcache ``AggregatorConfig`` fields that reproduce videosaur's SlotAttention grouper with RandomInit
#: (videosaur/modules/groupers.py, initializers.py, configs/dinosaur/coco_base14_dinov2.yml).
VIDEOSAUR_AGGREGATOR_OPTIONS: dict[str, Any] = {
    "queries": "shared_gaussian",
    "query_mean_init": "zeros",
    "query_std_init": "inverse_sqrt_dim",
    "query_noise": "always",
    "straight_through": False,
    "renormalisation": "add_epsilon",
    "epsilon": 1e-8,
    "mlp_activation": "relu",
    "mlp_dropout": 0.0,
    "gru_hidden": "normed_slots",
    "qkv_init": "torch",
    "bias_init": "zero_mlp",
}


def vvo_aggregator_options(aggregator_config: dict[str, Any], initializer_type: str = "NormalSeparat") -> dict[str, Any]:
    """featcache aggregator fields for VVO's ``SlotAttention(**aggregator_config)`` after ``initializer_type``.

    ``aggregator_config``: the official constructor arguments (num_iter, embed_dim, ffn_dim, dropout, trunc_bp);
    ``num_slots`` comes from the initialiser's ``num`` and is left to the caller.
    """
    options = dict(VVO_AGGREGATOR_OPTIONS)
    if initializer_type == "NormalShared":
        # One Glorot-uniform mean and log-std for all slots, sampled in every mode.
        options.update(queries="shared_gaussian", query_std_init="xavier_uniform", query_noise="always")
    elif initializer_type != "NormalSeparat":
        raise FeatcacheError(f"VVO query initialiser {initializer_type!r} has no featcache equivalent; known: NormalSeparat, NormalShared")
    trunc_bp = aggregator_config.get("trunc_bp")
    if trunc_bp not in (None, "bi-level"):
        raise FeatcacheError(f"VVO SlotAttention trunc_bp must be None or 'bi-level', got {trunc_bp!r}")
    options.update(
        slot_dim=int(aggregator_config["embed_dim"]),
        iterations=int(aggregator_config["num_iter"]),
        mlp_hidden=int(aggregator_config["ffn_dim"]),
        mlp_dropout=float(aggregator_config.get("dropout", 0.0)),
        straight_through=trunc_bp == "bi-level",
    )
    return options


def _check_keys(what: str, state: dict[str, torch.Tensor], expected: set[str]) -> None:
    """One-line FeatcacheError naming missing and unexpected keys of an official state dict."""
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise FeatcacheError(f"{what} state dict does not match: missing keys {missing}, unexpected keys {unexpected}")


def _numbered_layers(what: str, state: dict[str, torch.Tensor], prefix: str) -> list[int]:
    """Sorted indices ``i`` of an official ``nn.Sequential`` with parameters under ``{prefix}{i}.``."""
    indices = set()
    for key in state:
        if key.startswith(prefix):
            head = key[len(prefix) :].split(".", 1)[0]
            if not head.isdigit():
                raise FeatcacheError(f"{what} state dict has an unexpected key {key!r}")
            indices.add(int(head))
    return sorted(indices)


_VVO_AGGREGATOR_KEYS = {
    "norm1kv.weight": "input_norm.weight",
    "norm1kv.bias": "input_norm.bias",
    "proj_k.weight": "to_keys.weight",
    "proj_v.weight": "to_values.weight",
    "norm1q.weight": "slot_norm.weight",
    "norm1q.bias": "slot_norm.bias",
    "proj_q.weight": "to_queries.weight",
    "rnn.weight_ih": "gru.weight_ih",
    "rnn.weight_hh": "gru.weight_hh",
    "rnn.bias_ih": "gru.bias_ih",
    "rnn.bias_hh": "gru.bias_hh",
    "norm2.weight": "mlp.0.weight",
    "norm2.bias": "mlp.0.bias",
}


def map_slot_attention(aggregator_state: dict[str, torch.Tensor], initializer_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """VVO ``aggregat`` (SlotAttention) and ``initializ`` (NormalSeparat/NormalShared) weights -> featcache aggregator.

    Keys are relative to each official module and to the featcache aggregator. The FFN's two Linear layers sit
    at ``ffn.0`` and ``ffn.2`` (no dropout) or ``ffn.3`` (with dropout); both map onto ``mlp.1`` and ``mlp.3``.
    Load the result into an aggregator built with ``vvo_aggregator_options``.
    """
    ffn = _numbered_layers("VVO SlotAttention", aggregator_state, "ffn.")
    if len(ffn) != 2:
        raise FeatcacheError(f"VVO SlotAttention ffn must hold two Linear layers, found parameters at ffn indices {ffn}")
    ffn_keys = {f"ffn.{index}.{part}": f"mlp.{target}.{part}" for index, target in zip(ffn, (1, 3)) for part in ("weight", "bias")}
    names = {**_VVO_AGGREGATOR_KEYS, **ffn_keys}
    _check_keys("VVO SlotAttention", aggregator_state, set(names))
    _check_keys("VVO query initialiser", initializer_state, {"mean", "logstd"})
    mapped = {names[key]: value for key, value in aggregator_state.items()}
    mapped["slot_mean"] = initializer_state["mean"]
    mapped["slot_log_std"] = initializer_state["logstd"]
    return mapped


def projection_kind(state: dict[str, torch.Tensor]) -> Literal["mlp", "layernorm_mlp"]:
    """featcache ``projection`` of a VVO ``encode_project``: ``layernorm_mlp`` when it starts with a LayerNorm."""
    layers = _numbered_layers("VVO encode_project", state, "")
    return "layernorm_mlp" if layers and state[f"{layers[0]}.weight"].ndim == 1 else "mlp"


def map_projection(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """VVO ``encode_project`` weights -> featcache projection (``build_projection``'s ``nn.Sequential``).

    Two official layouts: Linear - [Dropout] - Linear (VVO-Tfd/Dfz, featcache ``mlp``), and the MLP with
    ln="pre": LayerNorm - Linear - GELU - [Dropout] - Linear (VVO-Mlp, VVO's DINOSAUR; featcache
    ``layernorm_mlp`` with ``projection_activation: gelu``). Dropout layers hold no weights, so only the
    positions of the parameterised layers change.
    """
    layers = _numbered_layers("VVO encode_project", state, "")
    kind = projection_kind(state)
    targets = (0, 1, 4) if kind == "layernorm_mlp" else (0, 2)
    if len(layers) != len(targets):
        raise FeatcacheError(
            f"VVO encode_project must be Linear-Linear or LayerNorm-Linear-Linear, found parameters at indices {layers}"
        )
    names = {f"{index}.{part}": f"{target}.{part}" for index, target in zip(layers, targets) for part in ("weight", "bias")}
    _check_keys("VVO encode_project", state, set(names))
    return {names[key]: value for key, value in state.items()}


_VIDEOSAUR_GROUPER_KEYS = {
    "norm_features.weight": "input_norm.weight",
    "norm_features.bias": "input_norm.bias",
    "to_k.weight": "to_keys.weight",
    "to_v.weight": "to_values.weight",
    "norm_slots.weight": "slot_norm.weight",
    "norm_slots.bias": "slot_norm.bias",
    "to_q.weight": "to_queries.weight",
    "gru.weight_ih": "gru.weight_ih",
    "gru.weight_hh": "gru.weight_hh",
    "gru.bias_ih": "gru.bias_ih",
    "gru.bias_hh": "gru.bias_hh",
    "mlp.layers.0.weight": "mlp.0.weight",
    "mlp.layers.0.bias": "mlp.0.bias",
    "mlp.layers.1.weight": "mlp.1.weight",
    "mlp.layers.1.bias": "mlp.1.bias",
    "mlp.layers.3.weight": "mlp.3.weight",
    "mlp.layers.3.bias": "mlp.3.bias",
}


def map_videosaur_slot_attention(
    grouper_state: dict[str, torch.Tensor], initializer_state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """videosaur's SlotAttention grouper and RandomInit initialiser -> featcache aggregator state dict.

    Load the result into an aggregator built with ``VIDEOSAUR_AGGREGATOR_OPTIONS``.
    """
    _check_keys("videosaur SlotAttention", grouper_state, set(_VIDEOSAUR_GROUPER_KEYS))
    _check_keys("videosaur RandomInit", initializer_state, {"mean", "log_std"})
    mapped = {_VIDEOSAUR_GROUPER_KEYS[key]: value for key, value in grouper_state.items()}
    mapped["slot_mean"] = initializer_state["mean"]
    mapped["slot_log_std"] = initializer_state["log_std"]
    return mapped
