"""The official VVO temporal model's trainable modules (``VqVfmOclT``) -> featcache's ``TemporalOCLModel``.

VVO keeps ``encode_project``, ``initializ`` (NormalSeparat, or MLP(in_dim=4, dims=[D, D]) of boxes),
``aggregat`` (SlotAttention) and ``transit`` (``nn.TransformerEncoderLayer``, the same class featcache uses, so its
keys carry over unchanged). ``map_vvo_temporal`` turns their state dicts into that of a ``TemporalOCLModel`` built
with ``vvo_aggregator_options`` and ``temporal.transit: transformer``; the decoder maps as for image models.
"""

from __future__ import annotations

import torch

from featcache.errors import FeatcacheError
from featcache.interop.vvo_slots import _check_keys, _numbered_layers, map_projection, map_slot_attention

#: featcache key prefixes of the temporal model's modules.
FRAME_PREFIX = "frame."


def _under(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def map_box_queries(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """VVO ``MLP(in_dim=4, dims=[D, D])`` (Linear - GELU - [Dropout] - Linear) -> featcache ``box_queries``."""
    layers = _numbered_layers("VVO bbox initializ", state, "")
    if len(layers) != 2:
        raise FeatcacheError(f"VVO bbox initializ must hold two Linear layers, found parameters at indices {layers}")
    names = {f"{index}.{part}": f"{target}.{part}" for index, target in zip(layers, (0, 2)) for part in ("weight", "bias")}
    _check_keys("VVO bbox initializ", state, set(names))
    return {names[key]: value for key, value in state.items()}


def map_vvo_temporal(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A VqVfmOclT state dict (keys ``encode_project.``, ``initializ.``, ``aggregat.``, ``transit.``; the frozen
    backbone and VQ and the decoder are ignored) -> TemporalOCLModel keys (without the decoder's).

    With box queries the aggregator's own query parameters are not in the official model: they keep their
    initial values (load with ``strict=False``; they are unused).
    """
    initializer = _under(official, "initializ.")
    box_queries = "mean" not in initializer
    mapped_slots = map_slot_attention(_under(official, "aggregat."), {"mean": torch.empty(0), "logstd": torch.empty(0)}
                                      if box_queries else initializer)
    if box_queries:
        del mapped_slots["slot_mean"], mapped_slots["slot_log_std"]
    mapped = {f"{FRAME_PREFIX}aggregator.{key}": value for key, value in mapped_slots.items()}
    mapped.update({f"{FRAME_PREFIX}projection.{key}": value for key, value in map_projection(_under(official, "encode_project.")).items()})
    if box_queries:
        mapped.update({f"box_queries.{key}": value for key, value in map_box_queries(initializer).items()})
    transit = _under(official, "transit.")
    if not transit:
        raise FeatcacheError("VVO temporal state dict has no transit.* weights")
    mapped.update({f"transit.{key}": value for key, value in transit.items()})
    return mapped


def map_videosaur_predictor(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """videosaur's predictor ``TransformerEncoder(n_blocks=1)`` (its own Attention with one ``qkv`` Linear) ->
    featcache's ``transit: videosaur`` (PyTorch's TransformerEncoderLayer: ``in_proj_weight`` is the same stacked
    q/k/v matrix). Keys relative to the official module and to ``transit``."""
    block = _under(state, "blocks.0.")
    if any(key.startswith("blocks.1.") for key in state):
        raise FeatcacheError("videosaur predictor has more than one block; featcache's transit: videosaur has one")
    renamed = {"self_attn.qkv.weight": "self_attn.in_proj_weight", "self_attn.qkv.bias": "self_attn.in_proj_bias"}
    expected = {*renamed, "self_attn.out_proj.weight", "self_attn.out_proj.bias",
                *(f"{layer}.{part}" for layer in ("linear1", "linear2", "norm1", "norm2") for part in ("weight", "bias"))}
    _check_keys("videosaur predictor block", block, expected)
    return {renamed.get(key, key): value for key, value in block.items()}
