"""Parity of Slot Attention, its query initialisers and the feature projection with the official VVO code.

Fixtures (tests/fixtures/parity/, generated from Genera1Z/VQ-VFM-OCL and martius-lab/videosaur):
``vvo_slot_attention_bilevel`` (SlotAttention trunc_bp="bi-level" + NormalSeparat), ``vvo_slot_attention``
(trunc_bp=None), ``vvo_projection_fcdofc`` (VVO-Tfd/Dfz's Linear-Dropout-Linear), ``vvo_projection_mlp``
(VVO-Mlp/DINOSAUR's pre-LayerNorm MLP) and ``videosaur_slot_attention`` (videosaur's grouper + RandomInit).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from featcache.aggregators import AggregatorConfig, create_aggregator
from featcache.config import from_dict, to_dict
from featcache.errors import FeatcacheError
from featcache.interop.vvo_slots import (
    VIDEOSAUR_AGGREGATOR_OPTIONS,
    VVO_AGGREGATOR_OPTIONS,
    map_projection,
    map_slot_attention,
    map_videosaur_slot_attention,
    projection_kind,
    vvo_aggregator_options,
)
from featcache.ocl.config import OCLModelConfig
from featcache.ocl.model import build_projection
from tests.parity import assert_close, fixture_config, load_fixture

SLOT_FIXTURES = {"vvo_slot_attention_bilevel": "bo_qsa", "vvo_slot_attention": "slot_attention"}


def split(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix.`` with the prefix removed."""
    return {key[len(prefix) + 1 :]: value for key, value in weights.items() if key.startswith(prefix + ".")}


def zero_linear_biases(module: torch.nn.Module) -> set[str]:
    """Names of the Linear/GRU bias parameters that are all zero (LayerNorm biases start at zero anyway)."""
    return {
        f"{prefix}.{name}" if prefix else name
        for prefix, child in module.named_modules()
        if isinstance(child, (torch.nn.Linear, torch.nn.GRUCell))
        for name, parameter in child.named_parameters(recurse=False)
        if name.startswith("bias") and bool(torch.all(parameter == 0))
    }


def vvo_aggregator(fixture: str, **changes: object) -> tuple[torch.nn.Module, dict[str, dict[str, torch.Tensor]]]:
    """The featcache aggregator under VVO's options, holding the fixture's mapped official weights."""
    tensors, metadata = load_fixture(fixture)
    config = fixture_config(metadata)
    options = {**vvo_aggregator_options(config["aggregat"], config["initializ"]["type"]), **changes}
    aggregator_config = AggregatorConfig(name=SLOT_FIXTURES[fixture], num_slots=config["initializ"]["num"], **options)
    aggregator = create_aggregator(aggregator_config, input_dim=config["aggregat"]["kv_dim"])
    mapped = map_slot_attention(split(tensors["weights"], "aggregat"), split(tensors["weights"], "initializ"))
    aggregator.load_state_dict(mapped, strict=True)
    return aggregator, tensors


@pytest.mark.parametrize("fixture", sorted(SLOT_FIXTURES))
def test_vvo_slot_attention_eval_equals_official(fixture: str) -> None:
    aggregator, tensors = vvo_aggregator(fixture)
    aggregator.eval()
    assert aggregator.draw_noise(2, None, torch.device("cpu")) == {}  # NormalSeparat: no noise at evaluation
    with torch.no_grad():
        output = aggregator(tensors["input"]["features"])
    assert_close(output.slots, tensors["output"]["eval_slots"], what=f"{fixture} eval slots")
    assert_close(output.attention, tensors["output"]["eval_attention"], what=f"{fixture} eval attention")


@pytest.mark.parametrize("fixture", sorted(SLOT_FIXTURES))
def test_vvo_slot_attention_training_step_equals_official(fixture: str) -> None:
    """Fixed query noise, one backward pass: slots, attention and every gradient (weights, query mean/log-std, input)."""
    # The fixture's training pass ran with the FFN's dropout switched off; featcache's dropout is a config value.
    aggregator, tensors = vvo_aggregator(fixture, mlp_dropout=0.0)
    aggregator.train()
    assert aggregator.straight_through == (fixture == "vvo_slot_attention_bilevel")
    features = tensors["input"]["features"].clone().requires_grad_(True)
    output = aggregator(features, {"slots": tensors["input"]["noise"]})
    assert_close(output.slots, tensors["output"]["train_slots"], what=f"{fixture} train slots")
    assert_close(output.attention, tensors["output"]["train_attention"], what=f"{fixture} train attention")
    loss = (output.slots * tensors["input"]["loss_weights"]).sum()
    assert_close(loss.reshape(1), tensors["output"]["train_loss"], atol=1e-4, what=f"{fixture} loss")
    loss.backward()
    expected = map_slot_attention(split(tensors["grad"], "aggregat"), split(tensors["grad"], "initializ"))
    for name, parameter in aggregator.named_parameters():
        assert parameter.grad is not None, name
        assert_close(parameter.grad, expected[name], what=f"{fixture} grad {name}")
    assert_close(features.grad, tensors["grad"]["features"], what=f"{fixture} grad features")


def test_bi_level_gradient_differs_from_full_backpropagation() -> None:
    """The two fixtures' query gradients come from different computations: the straight-through step matters."""
    bilevel, _ = vvo_aggregator("vvo_slot_attention_bilevel", mlp_dropout=0.0)
    plain, tensors = vvo_aggregator("vvo_slot_attention_bilevel", mlp_dropout=0.0, straight_through=False)
    grads = []
    for aggregator in (bilevel, plain):
        aggregator.train()
        output = aggregator(tensors["input"]["features"], {"slots": tensors["input"]["noise"]})
        (output.slots * tensors["input"]["loss_weights"]).sum().backward()
        grads.append(aggregator.slot_mean.grad)
    assert (grads[0] - grads[1]).abs().max() > 1e-3


def test_defaults_are_vvo_and_the_previous_defaults_depart() -> None:
    """featcache's defaults are VVO's options; featcache's previous ones (ReLU slot MLP, noise-free learned queries
    for bo_qsa), which runs saved before issue 12 keep, give other slots."""
    assert {name: getattr(AggregatorConfig(), name) for name in VVO_AGGREGATOR_OPTIONS} == VVO_AGGREGATOR_OPTIONS
    official, tensors = vvo_aggregator("vvo_slot_attention_bilevel")
    relu, _ = vvo_aggregator("vvo_slot_attention_bilevel", mlp_activation="relu")
    with torch.no_grad():
        gap = (official.eval()(tensors["input"]["features"]).slots - relu.eval()(tensors["input"]["features"]).slots).abs().max()
    assert gap > 1e-3
    assert official.train().draw_noise(2, None, torch.device("cpu"))["slots"].shape == (2, 5, 32)
    saved = to_dict(AggregatorConfig(name="bo_qsa", num_slots=5, slot_dim=32, mlp_hidden=64))
    saved = {key: value for key, value in saved.items() if key in ("name", "num_slots", "slot_dim", "iterations", "mlp_hidden", "epsilon")}
    before = create_aggregator(from_dict(AggregatorConfig, saved), 24).train()  # a config written before issue 12
    assert before.draw_noise(2, None, torch.device("cpu")) == {}
    assert before.straight_through and before.query_kind == "learned"


def test_renormalisation_variants_differ_on_a_slot_that_wins_nothing() -> None:
    """(a + eps) / sum(a + eps) gives a slot that won nothing the mean of all values; VVO's a / (sum(a) + eps)
    keeps its update near zero. Where every slot wins some input, both are a / sum(a) up to eps."""
    values = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # (1, N=3, D=2)
    attention = torch.tensor([[[1.0, 1.0, 1.0], [1e-9, 1e-9, 1e-9]]])  # (1, S=2, N): slot 1 wins nothing
    updates = {}
    for mode, epsilon in (("add_epsilon", 1e-8), ("epsilon_in_denominator", 1e-5)):
        config = AggregatorConfig(name="slot_attention", num_slots=2, slot_dim=2, renormalisation=mode, epsilon=epsilon)
        updates[mode] = create_aggregator(config, 2).weighted_means(attention, values)
    torch.testing.assert_close(updates["add_epsilon"][0, 1], values[0].mean(dim=0), rtol=1e-3, atol=1e-3)
    assert updates["epsilon_in_denominator"][0, 1].abs().max() < 1e-3
    torch.testing.assert_close(updates["add_epsilon"][0, 0], updates["epsilon_in_denominator"][0, 0], rtol=1e-4, atol=1e-4)


def test_vvo_initialisation_matches_normal_separat_and_reset_parameters() -> None:
    """Under VVO's options: per-slot means Glorot-uniform over (S, D), per-slot log-std log(D^-0.5), and zero
    biases exactly where VVO's reset_parameters puts them (the fixture lists those official names)."""
    torch.manual_seed(0)
    _, metadata = load_fixture("vvo_slot_attention_bilevel")
    config = fixture_config(metadata)
    options = vvo_aggregator_options(config["aggregat"], "NormalSeparat")
    aggregator = create_aggregator(AggregatorConfig(name="bo_qsa", num_slots=5, **options), 24)
    slots, dim = 5, 32
    assert aggregator.slot_mean.shape == (1, slots, dim) and aggregator.slot_log_std.shape == (1, slots, dim)
    bound = math.sqrt(6.0 / (slots + dim))
    assert aggregator.slot_mean.abs().max() <= bound and aggregator.slot_mean.abs().max() > 0.8 * bound
    torch.testing.assert_close(aggregator.slot_log_std, torch.full((1, slots, dim), math.log(dim**-0.5)))
    tensors, _ = load_fixture("vvo_slot_attention_bilevel")
    zeroed = set(json.loads(metadata["zeroed_by_reset_parameters"]))
    assert zeroed == {"aggregat.rnn.bias_ih", "aggregat.rnn.bias_hh", "aggregat.ffn.0.bias", "aggregat.ffn.3.bias"}
    flags = {key: torch.tensor(float(f"aggregat.{key}" in zeroed)) for key in split(tensors["weights"], "aggregat")}
    mapped_flags = map_slot_attention(flags, {"mean": torch.tensor(0.0), "logstd": torch.tensor(0.0)})
    assert zero_linear_biases(aggregator) == {name for name, flag in mapped_flags.items() if flag}


def test_query_initialisations_and_their_noise() -> None:
    """Each ``queries`` kind: parameter shapes, noise in training and (``always``) in evaluation."""
    base = {"num_slots": 4, "slot_dim": 8, "mlp_hidden": 8}
    cpu = torch.device("cpu")
    shapes = {
        "per_slot_gaussian": {"slot_mean": (1, 4, 8), "slot_log_std": (1, 4, 8)},
        "per_slot_mean": {"slot_mean": (1, 4, 8), "slot_log_std": (1, 1, 8)},
        "shared_gaussian": {"slot_mean": (1, 1, 8), "slot_log_std": (1, 1, 8)},
        "learned": {"queries": (1, 4, 8)},
    }
    for kind, expected in shapes.items():
        aggregator = create_aggregator(AggregatorConfig(name="slot_attention", queries=kind, **base), 6)
        own = {name: tuple(p.shape) for name, p in aggregator.named_parameters() if name in ("slot_mean", "slot_log_std", "queries")}
        assert own == expected, kind
        assert (aggregator.train().draw_noise(3, None, cpu) != {}) == (kind != "learned")
        assert aggregator.eval().draw_noise(3, None, cpu) == {}
        slots = aggregator.initial_slots(3, torch.zeros(1))
        assert slots.shape == (3, 4, 8)
    always = create_aggregator(AggregatorConfig(name="slot_attention", queries="shared_gaussian", query_noise="always", **base), 6).eval()
    noise = always.draw_noise(3, torch.Generator().manual_seed(0), cpu)["slots"]
    expected_slots = always.slot_mean + always.slot_log_std.exp() * noise
    torch.testing.assert_close(always.initial_slots(3, torch.zeros(1), noise), expected_slots)


def test_slot_attention_default_init_is_consistent() -> None:
    """Issue 12: plain Slot Attention's training noise now has the scale of its means (std D^-0.5, not 1)."""
    torch.manual_seed(0)
    aggregator = create_aggregator(AggregatorConfig(name="slot_attention", num_slots=7, slot_dim=64), 64)
    torch.testing.assert_close(aggregator.slot_log_std.exp(), torch.full((1, 7, 64), 64**-0.5))
    assert 0.14 < aggregator.slot_mean.std().item() < 0.2  # Glorot-uniform over (7, 64): std sqrt(2 / 71) = 0.168
    before = create_aggregator(
        AggregatorConfig(name="slot_attention", num_slots=7, slot_dim=64, queries="per_slot_mean", query_std_init="one"), 64
    )
    torch.testing.assert_close(before.slot_log_std.exp(), torch.ones(1, 1, 64))


def projection_config(fixture: str, **changes: object) -> OCLModelConfig:
    tensors, metadata = load_fixture(fixture)
    kind = projection_kind(tensors["weights"])
    options: dict[str, object] = {"projection": kind, "projection_hidden": 48}
    if kind == "layernorm_mlp":
        options["projection_activation"] = "gelu"
    else:
        options["projection_dropout"] = fixture_config(metadata)["modules"][1]["p"]
    return OCLModelConfig(**{**options, **changes})


@pytest.mark.parametrize("fixture", ["vvo_projection_fcdofc", "vvo_projection_mlp"])
def test_vvo_projection_equals_official(fixture: str) -> None:
    tensors, metadata = load_fixture(fixture)
    config = projection_config(fixture, projection_bias_init="zero")
    projection = build_projection(config, 24, 32)
    zeroed = set(json.loads(metadata["zeroed_by_reset_parameters"]))
    flags = map_projection({key: torch.full_like(value, float(key in zeroed)) for key, value in tensors["weights"].items()})
    assert zero_linear_biases(projection) == {name for name, flag in flags.items() if bool(flag.all())}  # where reset_parameters zeroes
    projection.load_state_dict(map_projection(tensors["weights"]), strict=True)
    with torch.no_grad():
        output = projection.eval()(tensors["input"]["features"])
    assert_close(output, tensors["output"]["projected"], what=fixture)


def test_relu_projection_departs_from_vvo_mlp() -> None:
    tensors, _ = load_fixture("vvo_projection_mlp")
    projection = build_projection(projection_config("vvo_projection_mlp", projection_activation="relu"), 24, 32)
    projection.load_state_dict(map_projection(tensors["weights"]), strict=True)
    with torch.no_grad():
        output = projection.eval()(tensors["input"]["features"])
    assert (output - tensors["output"]["projected"]).abs().max() > 1e-2


def test_videosaur_slot_attention_equals_official() -> None:
    """videosaur's grouper feeds the LayerNorm-ed slots to the GRU and samples its queries in every mode."""
    tensors, metadata = load_fixture("videosaur_slot_attention")
    config = fixture_config(metadata)
    mapped = map_videosaur_slot_attention(split(tensors["weights"], "grouper"), split(tensors["weights"], "initializer"))
    aggregator_config = AggregatorConfig(
        name="slot_attention",
        num_slots=config["initializer"]["n_slots"],
        slot_dim=config["grouper"]["slot_dim"],
        iterations=config["grouper"]["n_iters"],
        mlp_hidden=config["grouper"]["hidden_dim"],
        **VIDEOSAUR_AGGREGATOR_OPTIONS,
    )
    aggregator = create_aggregator(aggregator_config, config["grouper"]["inp_dim"])
    aggregator.load_state_dict(mapped, strict=True)
    aggregator.eval()
    assert aggregator.draw_noise(2, None, torch.device("cpu"))["slots"].shape == (2, 5, 32)  # noise at evaluation too
    features = tensors["input"]["features"].clone().requires_grad_(True)
    output = aggregator(features, {"slots": tensors["input"]["noise"]})
    assert_close(output.slots, tensors["output"]["slots"], what="videosaur slots")
    assert_close(output.attention, tensors["output"]["attention"], what="videosaur attention")
    (output.slots * tensors["input"]["loss_weights"]).sum().backward()
    expected = map_videosaur_slot_attention(split(tensors["grad"], "grouper"), split(tensors["grad"], "initializer"))
    for name, parameter in aggregator.named_parameters():
        assert_close(parameter.grad, expected[name], what=f"videosaur grad {name}")
    assert_close(features.grad, tensors["grad"]["features"], what="videosaur grad features")

    plain = create_aggregator(AggregatorConfig(**{**aggregator_config.__dict__, "gru_hidden": "slots"}), 24).eval()
    plain.load_state_dict(mapped, strict=True)
    with torch.no_grad():
        gap = (plain(tensors["input"]["features"], {"slots": tensors["input"]["noise"]}).slots - output.slots).abs().max()
    assert gap > 1e-2


def test_mappings_name_missing_and_unexpected_keys() -> None:
    tensors, _ = load_fixture("vvo_slot_attention")
    aggregat, initializ = split(tensors["weights"], "aggregat"), split(tensors["weights"], "initializ")
    broken = {key: value for key, value in aggregat.items() if key != "proj_q.weight"} | {"extra.weight": torch.zeros(1)}
    with pytest.raises(FeatcacheError, match=r"missing keys \['proj_q.weight'\], unexpected keys \['extra.weight'\]"):
        map_slot_attention(broken, initializ)
    with pytest.raises(FeatcacheError, match="missing keys \\['logstd'\\]"):
        map_slot_attention(aggregat, {"mean": initializ["mean"]})
    with pytest.raises(FeatcacheError, match="ffn must hold two Linear layers"):
        map_slot_attention({key: value for key, value in aggregat.items() if not key.startswith("ffn.2")}, initializ)
    projection, _ = load_fixture("vvo_projection_mlp")
    with pytest.raises(FeatcacheError, match="missing keys \\['3.bias'\\]"):
        map_projection({key: value for key, value in projection["weights"].items() if key != "3.bias"})
