"""Slot Attention and BO-QSA: shapes, the attention normalisation, a reference loop, noise, straight-through."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import get_args, get_type_hints

import pytest
import torch

from featcache.aggregators import AGGREGATORS, BOQSA, AggregatorConfig, SlotAttention, create_aggregator
from featcache.config import from_dict, merge
from featcache.errors import ConfigError, FeatcacheError

INPUT_DIM = 12


def tiny_config(name: str, iterations: int = 3) -> AggregatorConfig:
    return AggregatorConfig(name=name, num_slots=3, slot_dim=16, iterations=iterations, mlp_hidden=32)


def tiny_inputs(batch: int = 2, positions: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, positions, INPUT_DIM, generator=generator)


def reference_slot_attention(module: SlotAttention, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A plain per-sample, per-slot loop over the same weights (eval mode: slots start at the means)."""
    epsilon = module.epsilon
    slot_dim = module.slot_dim
    outputs, attentions = [], []
    for sample in inputs:  # (N, D_in)
        normed = module.input_norm(sample)
        keys = normed @ module.to_keys.weight.T  # (N, D)
        values = normed @ module.to_values.weight.T
        slots = module.slot_mean[0].clone()  # (S, D)
        attention = None
        for _ in range(module.iterations):
            queries = module.slot_norm(slots) @ module.to_queries.weight.T  # (S, D)
            logits = torch.stack([torch.stack([q @ k for k in keys]) for q in queries]) / slot_dim**0.5  # (S, N)
            attention = torch.exp(logits) / torch.exp(logits).sum(dim=0, keepdim=True)
            updated = []
            for slot_index in range(slots.shape[0]):
                weights = attention[slot_index] + epsilon
                weights = weights / weights.sum()
                update = (weights[:, None] * values).sum(dim=0)
                hidden = module.gru(update[None], slots[slot_index][None])[0]
                updated.append(hidden + module.mlp(hidden))
            slots = torch.stack(updated)
        outputs.append(slots)
        attentions.append(attention)
    return torch.stack(outputs), torch.stack(attentions)


@pytest.mark.parametrize("name", ["slot_attention", "bo_qsa"])
def test_shapes_and_attention_sums_to_one_over_slots(name: str) -> None:
    torch.manual_seed(0)
    aggregator = create_aggregator(tiny_config(name), INPUT_DIM)
    output = aggregator(tiny_inputs(batch=2, positions=16))
    assert output.slots.shape == (2, 3, 16)
    assert output.attention.shape == (2, 3, 16)
    torch.testing.assert_close(output.attention.sum(dim=1), torch.ones(2, 16))
    assert torch.isfinite(output.slots).all()


def test_create_aggregator_picks_the_registered_class() -> None:
    assert isinstance(create_aggregator(tiny_config("slot_attention"), INPUT_DIM), SlotAttention)
    assert isinstance(create_aggregator(tiny_config("bo_qsa"), INPUT_DIM), BOQSA)
    assert AGGREGATORS.names() == ["bo_qsa", "slot_attention"]
    assert sorted(get_args(get_type_hints(AggregatorConfig)["name"])) == AGGREGATORS.names()


@pytest.mark.parametrize("iterations", [1, 2])
def test_matches_a_plain_loop_reimplementation(iterations: int) -> None:
    torch.manual_seed(1)
    aggregator = create_aggregator(tiny_config("slot_attention", iterations), INPUT_DIM).eval()
    assert isinstance(aggregator, SlotAttention)
    inputs = tiny_inputs(batch=2, positions=6, seed=3)
    with torch.no_grad():
        output = aggregator(inputs)
        slots, attention = reference_slot_attention(aggregator, inputs)
    torch.testing.assert_close(output.slots, slots, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(output.attention, attention, rtol=1e-4, atol=1e-6)


def test_one_iteration_by_hand() -> None:
    """Hand-set weights: identity projections, a GRU that outputs tanh(update), a residual MLP adding 0.

    GRUCell rows are [reset, update gate, candidate]: an update-gate bias of -30 closes the gate (keep
    nothing of the old slot) and an identity candidate input weight makes the candidate tanh(update).
    """
    config = AggregatorConfig(name="slot_attention", num_slots=2, slot_dim=2, iterations=1, mlp_hidden=4, epsilon=0.0)
    aggregator = SlotAttention(config, input_dim=2).eval()
    with torch.no_grad():
        for module in (aggregator.to_keys, aggregator.to_values, aggregator.to_queries):
            module.weight.copy_(torch.eye(2))
        for parameter in aggregator.gru.parameters():
            parameter.zero_()
        aggregator.gru.weight_ih[4:6].copy_(torch.eye(2))
        aggregator.gru.bias_ih[2:4].fill_(-30.0)
        aggregator.mlp[-1].weight.zero_()
        aggregator.mlp[-1].bias.zero_()
        aggregator.slot_mean.copy_(torch.tensor([[[1.0, -1.0], [-1.0, 1.0]]]))
        inputs = torch.tensor([[[2.0, -2.0], [-3.0, 3.0], [1.0, -1.0]]])  # LayerNorm maps each to (+-1, -+1)
        output = aggregator(inputs)
    # Normed inputs: (1,-1), (-1,1), (1,-1); normed slots: the same directions (eps aside).
    # logits = q.k / sqrt(2): slot 0 -> [2, -2, 2] / sqrt(2), slot 1 -> the negation.
    logit = 2.0 / 2**0.5
    win = torch.exp(torch.tensor(logit)) / (torch.exp(torch.tensor(logit)) + torch.exp(torch.tensor(-logit)))
    lose = 1 - win
    expected_attention = torch.tensor([[[win, lose, win], [lose, win, lose]]])
    torch.testing.assert_close(output.attention, expected_attention, rtol=1e-4, atol=1e-4)
    # Weighted means (over inputs) of the values (1,-1), (-1,1), (1,-1), through tanh.
    values = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [1.0, -1.0]])
    weights = expected_attention[0] / expected_attention[0].sum(dim=1, keepdim=True)
    expected_slots = torch.tanh(weights @ values)
    torch.testing.assert_close(output.slots[0], expected_slots, rtol=1e-4, atol=1e-4)


def test_slot_attention_noise_only_in_training() -> None:
    torch.manual_seed(2)
    aggregator = create_aggregator(tiny_config("slot_attention"), INPUT_DIM)
    inputs = tiny_inputs()
    aggregator.eval()
    with torch.no_grad():
        torch.testing.assert_close(aggregator(inputs).slots, aggregator(inputs).slots, rtol=0, atol=0)
        aggregator.train()
        first, second = aggregator(inputs).slots, aggregator(inputs).slots
    assert not torch.allclose(first, second)


def test_learned_queries_have_no_noise_in_training() -> None:
    torch.manual_seed(3)
    aggregator = create_aggregator(replace(tiny_config("bo_qsa"), queries="learned", mlp_dropout=0.0), INPUT_DIM).train()
    inputs = tiny_inputs()
    with torch.no_grad():
        torch.testing.assert_close(aggregator(inputs).slots, aggregator(inputs).slots, rtol=0, atol=0)


def test_bo_qsa_straight_through_keeps_values_and_feeds_the_queries() -> None:
    torch.manual_seed(4)
    # The BO-QSA paper's learned queries (deterministic, so the gradient check below is exact); no dropout.
    aggregator = create_aggregator(replace(tiny_config("bo_qsa", iterations=3), queries="learned", mlp_dropout=0.0), INPUT_DIM)
    assert isinstance(aggregator, BOQSA)
    plain = copy.deepcopy(aggregator)
    plain.straight_through = False
    inputs = tiny_inputs()
    output = aggregator(inputs)
    torch.testing.assert_close(output.slots, plain(inputs).slots, rtol=1e-6, atol=1e-6)  # x + q - q: rounding only

    weights = torch.randn_like(output.slots)
    (output.slots * weights).sum().backward()
    assert aggregator.queries.grad is not None and aggregator.queries.grad.abs().sum() > 0

    # The queries get exactly the gradient of the last iteration's input: earlier rounds are cut off.
    with torch.no_grad():
        normed = aggregator.input_norm(inputs)
        keys, values = aggregator.to_keys(normed), aggregator.to_values(normed)
        slots = aggregator.queries.expand(inputs.shape[0], -1, -1)
        for _ in range(aggregator.iterations - 1):
            slots, _ = aggregator.attend(slots, keys, values)
    last_input = slots.clone().requires_grad_(True)
    final, _ = aggregator.attend(last_input, keys, values)
    (final * weights).sum().backward()
    assert last_input.grad is not None
    torch.testing.assert_close(aggregator.queries.grad, last_input.grad.sum(dim=0, keepdim=True))


def test_unknown_aggregator_lists_the_valid_names() -> None:
    with pytest.raises(FeatcacheError, match="unknown aggregator 'nope'; known: bo_qsa, slot_attention"):
        AGGREGATORS.get("nope")
    with pytest.raises(ConfigError, match="bo_qsa"):
        merge(AggregatorConfig(), {"name": "nope"})


def test_aggregator_config_validation() -> None:
    with pytest.raises(ConfigError, match="num_slots"):
        AggregatorConfig(num_slots=0)
    with pytest.raises(ConfigError, match="epsilon"):
        AggregatorConfig(epsilon=-1.0)
    merged = merge(AggregatorConfig(), {"name": "slot_attention", "num_slots": 11, "epsilon": 0})
    assert merged == AggregatorConfig(name="slot_attention", num_slots=11, epsilon=0.0)


@pytest.mark.parametrize(
    ("name", "shapes"),
    [
        ("slot_attention", {"slot_mean": (1, 3, 16), "slot_log_std": (1, 1, 16)}),
        ("bo_qsa", {"queries": (1, 3, 16)}),
    ],
)
def test_configs_saved_before_the_options_keep_their_parameter_layout(name: str, shapes: dict[str, tuple[int, ...]]) -> None:
    """Run folders saved before the query/MLP options load: their configs (which lack the new fields) resolve to
    the old queries, so keys and shapes are the old ones; dropout and the activation add no weights."""
    saved = {"name": name, "num_slots": 3, "slot_dim": 16, "iterations": 3, "mlp_hidden": 32, "epsilon": 1e-8}
    old = from_dict(AggregatorConfig, saved)
    assert (old.renormalisation, old.mlp_activation, old.mlp_dropout, old.bias_init) == ("add_epsilon", "relu", 0.0, "torch")
    aggregator = create_aggregator(old, INPUT_DIM)
    with_options = create_aggregator(replace(old, mlp_dropout=0.1, mlp_activation="gelu"), INPUT_DIM)
    keys = {key: tuple(value.shape) for key, value in aggregator.state_dict().items()}
    assert keys == {key: tuple(value.shape) for key, value in with_options.state_dict().items()}
    assert {key: keys[key] for key in shapes} == shapes
    assert {"mlp.1.weight", "mlp.3.weight", "gru.bias_hh"} <= set(keys)


def test_queries_and_straight_through_are_independent_of_the_name() -> None:
    gaussian_bo_qsa = create_aggregator(AggregatorConfig(name="bo_qsa", queries="per_slot_gaussian"), INPUT_DIM)
    assert gaussian_bo_qsa.straight_through and gaussian_bo_qsa.query_kind == "per_slot_gaussian"
    assert gaussian_bo_qsa.train().draw_noise(2, None, torch.device("cpu"))["slots"].shape == (2, 7, 256)
    learned_plain = create_aggregator(AggregatorConfig(name="slot_attention", queries="learned", straight_through=False), INPUT_DIM)
    assert not learned_plain.straight_through and learned_plain.query_kind == "learned"
    assert learned_plain.train().draw_noise(2, None, torch.device("cpu")) == {}
    assert AggregatorConfig(name="slot_attention", straight_through=True).resolved_straight_through


def test_mlp_dropout_and_bias_init() -> None:
    torch.manual_seed(5)
    config = AggregatorConfig(name="bo_qsa", num_slots=3, slot_dim=16, mlp_hidden=32, mlp_dropout=0.5, bias_init="zero_mlp")
    aggregator = create_aggregator(config, INPUT_DIM)
    assert aggregator.mlp[1].bias.abs().sum() == 0 and aggregator.mlp[3].bias.abs().sum() == 0
    assert aggregator.gru.bias_ih.abs().sum() > 0  # zero_mlp leaves the GRU at PyTorch's init
    inputs = tiny_inputs()
    with torch.no_grad():
        assert not torch.allclose(aggregator.train()(inputs).slots, aggregator(inputs).slots)  # dropout in training
        torch.testing.assert_close(aggregator.eval()(inputs).slots, aggregator(inputs).slots, rtol=0, atol=0)
    zero = create_aggregator(replace(config, bias_init="zero", qkv_init="xavier_uniform"), INPUT_DIM)
    assert zero.gru.bias_ih.abs().sum() == 0 and zero.gru.bias_hh.abs().sum() == 0
    bound = (6.0 / (INPUT_DIM + 16)) ** 0.5
    assert zero.to_keys.weight.abs().max() <= bound and zero.to_keys.weight.abs().max() > 0.8 * bound


def test_new_option_validation() -> None:
    with pytest.raises(ConfigError, match="mlp_dropout"):
        AggregatorConfig(mlp_dropout=1.0)
    with pytest.raises(ConfigError, match="query_mean_init"):
        AggregatorConfig(name="bo_qsa", queries="learned", query_mean_init="zeros")
    with pytest.raises(ConfigError, match="per_slot_gaussian"):
        merge(AggregatorConfig(), {"queries": "nope"})
    merged = merge(AggregatorConfig(), {"queries": "shared_gaussian", "query_noise": "always", "straight_through": False})
    assert merged.queries == "shared_gaussian" and not merged.resolved_straight_through
