"""OCL decoders (mlp, tfd) and the OCL model: losses, masks, causality, config checks, a short training run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from featcache.config import from_dict, load_config, merge, to_dict
from featcache.decoders import (
    DECODER_TARGETS,
    DECODERS,
    DecoderConfig,
    DecoderTargets,
    MlpDecoder,
    MlpDecoderConfig,
    TransformerDecoder,
    TransformerDecoderConfig,
    create_decoder,
)
from featcache.decoders.transformer import DecoderLayer, token_orders
from featcache.errors import ConfigError, FeatcacheError
from featcache.ocl import OCLModel, OCLModelConfig
from featcache.ocl.config import AggregatorConfig

GRID = (4, 4)
FEATURES = 8
SLOT_DIM = 16
CODES = 10
CODE_DIM = 6
TINY_MLP = MlpDecoderConfig(hidden=32, layers=2)
# A learned token embedding with biases: these tests pin featcache's reading orders, causality, loss and masks, which
# do not depend on the input; VVO's default (frozen code vectors, no biases) is pinned by tests/test_parity_tfd.py.
TINY_TFD = TransformerDecoderConfig(layers=2, dim=16, heads=2, feedforward=32, input_embedding="learned", bias=True)


def tiny_model_config(name: str, target: str, **changes: object) -> OCLModelConfig:
    config = OCLModelConfig(
        aggregator=AggregatorConfig(num_slots=3, slot_dim=SLOT_DIM, mlp_hidden=32),
        decoder=DecoderConfig(name=name, target=target, mlp=TINY_MLP, tfd=TINY_TFD),  # type: ignore[arg-type]
        projection_hidden=24,
    )
    return merge(config, dict(changes)) if changes else config


def random_batch(batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, *GRID, FEATURES, generator=generator)
    tokens = torch.randint(0, CODES, (batch, *GRID), generator=generator)
    return features, tokens


def test_mlp_alphas_are_masks_and_mix_the_slot_predictions() -> None:
    torch.manual_seed(0)
    decoder = create_decoder(DecoderConfig(name="mlp", target="features", mlp=TINY_MLP), SLOT_DIM, GRID, FEATURES)
    assert isinstance(decoder, MlpDecoder) and decoder.needs == ("features",)
    slots = torch.randn(2, 3, SLOT_DIM)
    features, _ = random_batch()
    output = decoder(slots, DecoderTargets(features=features))
    assert output.masks is not None and output.masks.shape == (2, 3, *GRID)
    torch.testing.assert_close(output.masks.sum(dim=1), torch.ones(2, *GRID))

    predictions, alpha_logits = decoder.per_slot(slots)  # (B, S, N, C), (B, S, N)
    alpha = alpha_logits.softmax(dim=1)
    mixture = (alpha[..., None] * predictions).sum(dim=1).reshape(2, *GRID, FEATURES)
    assert output.reconstruction is not None
    torch.testing.assert_close(output.reconstruction, mixture)
    torch.testing.assert_close(output.masks, alpha.reshape(2, 3, *GRID))
    torch.testing.assert_close(output.loss, F.mse_loss(mixture, features))
    assert set(output.losses) == {"mse_features"}


def test_mlp_codes_plus_features_sums_both_losses() -> None:
    torch.manual_seed(1)
    config = DecoderConfig(name="mlp", target="codes+features", mlp=TINY_MLP)
    decoder = create_decoder(config, SLOT_DIM, GRID, FEATURES, codebook_size=CODES, code_dim=CODE_DIM)
    assert set(decoder.needs) == {"codes", "features"}
    features, _ = random_batch()
    codes = torch.randn(2, *GRID, CODE_DIM)
    output = decoder(torch.randn(2, 3, SLOT_DIM), DecoderTargets(features=features, codes=codes))
    assert output.reconstruction is not None and output.reconstruction.shape == (2, *GRID, CODE_DIM + FEATURES)
    code_loss = F.mse_loss(output.reconstruction[..., :CODE_DIM], codes)
    feature_loss = F.mse_loss(output.reconstruction[..., CODE_DIM:], features)
    torch.testing.assert_close(output.losses["mse_codes"], code_loss)
    torch.testing.assert_close(output.losses["mse_features"], feature_loss)
    torch.testing.assert_close(output.loss, code_loss + feature_loss)


def tiny_tfd(target: str = "tokens", orders: int = 1) -> TransformerDecoder:
    torch.manual_seed(2)
    decoder = create_decoder(
        DecoderConfig(name="tfd", target=target, tfd=merge(TINY_TFD, {"orders": orders})),  # type: ignore[arg-type]
        SLOT_DIM,
        GRID,
        FEATURES,
        codebook_size=CODES,
    )
    assert isinstance(decoder, TransformerDecoder)
    return decoder.eval()


def test_token_orders_are_the_raster_column_corner_and_spiral_permutations() -> None:
    orders = token_orders((3, 4), 9)  # raster indices of a 3 x 4 grid: rows 0-3, 4-7, 8-11
    assert orders[0].tolist() == list(range(12))
    assert orders[1].tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]  # column-major from the top-left
    assert orders[2].tolist() == list(range(11, -1, -1))  # raster from the bottom-right
    assert orders[4].tolist() == [3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8]  # row-major from the top-right
    assert orders[8].tolist() == [0, 1, 2, 3, 7, 11, 10, 9, 8, 4, 5, 6]  # clockwise spiral
    assert len({tuple(order.tolist()) for order in orders}) == 9
    assert all(sorted(order.tolist()) == list(range(12)) for order in orders)
    assert torch.equal(token_orders((3, 4), 2), orders[:2])
    with pytest.raises(ConfigError, match="decoder.tfd.orders' must lie in 1..9, got 10"):
        TransformerDecoderConfig(orders=10)


@pytest.mark.parametrize("order", range(9))
def test_tfd_is_causal_in_its_reading_order(order: int) -> None:
    decoder = tiny_tfd(orders=9)
    reading = decoder.orders[order]  # (N,) raster index read at each step
    slots = torch.randn(1, 3, SLOT_DIM)
    _, tokens = random_batch(batch=1)
    flat = tokens.flatten()
    chosen = torch.tensor([order])
    with torch.no_grad():
        logits, _ = decoder.predict(slots, DecoderTargets(tokens=tokens), chosen)  # (1, N, K) in raster order
        for step in (0, 5, 15):
            changed = flat.clone()
            changed[reading[step]] = (changed[reading[step]] + 1) % CODES
            changed_logits, _ = decoder.predict(slots, DecoderTargets(tokens=changed.reshape(tokens.shape)), chosen)
            # The prediction read at step t sees the tokens read before t: steps 0..t must not move, t + 1 must.
            seen = reading[: step + 1]
            torch.testing.assert_close(changed_logits[:, seen], logits[:, seen])
            if step + 1 < flat.numel():
                assert not torch.allclose(changed_logits[:, reading[step + 1]], logits[:, reading[step + 1]])


def test_tfd_with_one_order_reads_raster_and_training_draws_orders_per_sample() -> None:
    single = tiny_tfd()
    assert single.orders.tolist() == [list(range(16))] and single.draw_noise(4, None, torch.device("cpu")) == {}
    decoder = tiny_tfd(orders=9).train()
    generator = torch.Generator().manual_seed(0)
    drawn = decoder.draw_noise(64, generator, torch.device("cpu"))["order"]
    assert drawn.shape == (64,) and set(drawn.tolist()) == set(range(9))
    slots = torch.randn(2, 3, SLOT_DIM)
    _, tokens = random_batch()
    targets = DecoderTargets(tokens=tokens)
    order = torch.tensor([1, 8])
    output = decoder(slots, targets, {"order": order})
    logits, _ = decoder.predict(slots, targets, order)
    torch.testing.assert_close(output.loss, F.cross_entropy(logits.reshape(-1, CODES), tokens.reshape(-1)))
    raster_logits, raster_attention = decoder.predict(slots, targets, torch.tensor([0, 0]))
    assert not torch.allclose(raster_logits, logits)  # other orders see other context (and another BOS)
    unpermuted_logits, unpermuted_attention = decoder.predict(slots, targets)  # None = raster, without permuting
    torch.testing.assert_close(unpermuted_logits, raster_logits)
    torch.testing.assert_close(unpermuted_attention, raster_attention)
    assert decoder.eval().draw_noise(4, generator, torch.device("cpu")) == {}  # evaluation reads raster


def test_tfd_layers_load_torch_decoder_layer_weights_and_match_it() -> None:
    """Old checkpoints (nn.TransformerDecoderLayer) load into DecoderLayer and compute the same function."""
    torch.manual_seed(4)
    reference = torch.nn.TransformerDecoderLayer(16, 2, 32, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
    layer = DecoderLayer(16, 2, 32, 0.0)
    layer.load_state_dict(reference.state_dict())
    hidden, memory = torch.randn(2, 9, 16), torch.randn(2, 3, 16)
    causal = torch.ones(9, 9, dtype=torch.bool).triu(diagonal=1)
    output, attention = layer(hidden, memory, causal, return_attention=True)
    torch.testing.assert_close(output, reference(hidden, memory, tgt_mask=causal, tgt_is_causal=True))
    assert attention is not None and attention.shape == (2, 9, 3)
    torch.testing.assert_close(attention.sum(dim=-1), torch.ones(2, 9))


def test_tfd_loss_is_cross_entropy_of_its_logits_and_masks_are_its_last_cross_attention() -> None:
    decoder = tiny_tfd()
    slots = torch.randn(2, 3, SLOT_DIM)
    _, tokens = random_batch()
    targets = DecoderTargets(tokens=tokens)
    output = decoder(slots, targets)
    logits, attention = decoder.predict(slots, targets)  # (B, N, K), (B, N, S)
    expected = F.cross_entropy(logits.reshape(-1, CODES), tokens.reshape(-1))
    torch.testing.assert_close(output.loss, expected)
    torch.testing.assert_close(output.losses["cross_entropy"], expected)
    assert output.masks is not None and output.masks.shape == (2, 3, *GRID)
    torch.testing.assert_close(output.masks, attention.transpose(1, 2).reshape(2, 3, *GRID))
    torch.testing.assert_close(output.masks.sum(dim=1), torch.ones(2, *GRID))
    # The masks are the softmax over slots of the last layer's queries against the projected slots.
    last = decoder.layers[-1]
    captured: dict[str, torch.Tensor] = {}
    hook = last.multihead_attn.register_forward_hook(lambda module, inputs, result: captured.update(query=inputs[0], key=inputs[1]))
    decoder(slots, targets)
    hook.remove()
    weight, bias = last.multihead_attn.in_proj_weight, last.multihead_attn.in_proj_bias
    query = F.linear(captured["query"], weight[:16], bias[:16]).reshape(2, 16, 2, 8).transpose(1, 2)  # (B, heads, N, 8)
    key = F.linear(captured["key"], weight[16:32], bias[16:32]).reshape(2, 3, 2, 8).transpose(1, 2)  # (B, heads, S, 8)
    by_hand = (query @ key.transpose(-1, -2) / 8**0.5).softmax(dim=-1).mean(dim=1)  # (B, N, S)
    torch.testing.assert_close(output.masks, by_hand.transpose(1, 2).reshape(2, 3, *GRID))
    assert output.reconstruction is not None and output.reconstruction.shape == (2, *GRID)
    with torch.no_grad():
        other, _ = decoder.predict(torch.randn(2, 3, SLOT_DIM), targets)
    assert not torch.allclose(other, logits)


def test_tfd_features_target_is_mse() -> None:
    decoder = tiny_tfd("features")
    assert decoder.needs == ("features",)
    features, _ = random_batch()
    slots = torch.randn(2, 3, SLOT_DIM)
    output = decoder(slots, DecoderTargets(features=features))
    prediction, _ = decoder.predict(slots, DecoderTargets(features=features))
    torch.testing.assert_close(output.loss, F.mse_loss(prediction, features.flatten(1, 2)))


def test_bad_decoder_target_pairs_fail_naming_both() -> None:
    for name, target in (("mlp", "tokens"), ("tfd", "codes"), ("dfz", "features"), ("dfz", "tokens")):
        with pytest.raises(ConfigError, match=f"decoder '{name}' cannot reconstruct target '{target}'"):
            DecoderConfig(name=name, target=target)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'mlp' cannot reconstruct target 'tokens'"):
        merge(OCLModelConfig(), {"decoder": {"name": "mlp"}})  # default target is tokens
    merged = merge(OCLModelConfig(), {"decoder": {"name": "mlp", "target": "features"}})
    assert merged.decoder.name == "mlp" and merged.decoder.target == "features"


def test_unknown_decoder_lists_the_valid_names() -> None:
    with pytest.raises(FeatcacheError, match="unknown decoder 'vae'; known: dfz, mlp, tfd"):
        DECODERS.get("vae")
    with pytest.raises(ConfigError, match="dfz"):
        merge(DecoderConfig(), {"name": "vae"})
    assert sorted(DECODER_TARGETS) == DECODERS.names()


def test_mask_source_decoder_needs_a_decoder_with_masks() -> None:
    config = tiny_model_config("dfz", "codes", mask_source="decoder")
    with pytest.raises(ConfigError, match="mask_source 'decoder' needs a decoder with masks; decoder dfz has none"):
        OCLModel(config, FEATURES, GRID, torch.randn(CODES, CODE_DIM))
    torch.manual_seed(5)
    model = OCLModel(tiny_model_config("tfd", "tokens", mask_source="decoder"), FEATURES, GRID, torch.randn(CODES, CODE_DIM))
    features, tokens = random_batch()
    output = model(features, tokens)
    assert output.decoder_masks is not None and output.masks is output.decoder_masks
    model.eval()
    torch.testing.assert_close(model.predict_masks(features, tokens), model(features, tokens).decoder_masks)


def test_missing_tokens_and_codebook_fail_in_one_line() -> None:
    config = tiny_model_config("tfd", "tokens")
    with pytest.raises(FeatcacheError, match="needs the VQ codebook"):
        OCLModel(config, FEATURES, GRID, None)
    model = OCLModel(config, FEATURES, GRID, torch.randn(CODES, CODE_DIM))
    features, tokens = random_batch()
    with pytest.raises(FeatcacheError) as error:
        model(features)
    assert str(error.value) == "decoder tfd with target tokens needs a token set: pass tokens=NAME in the config"
    with pytest.raises(FeatcacheError, match="features must be"):
        model(features[:, :3], tokens)


def test_codes_are_looked_up_in_the_frozen_codebook() -> None:
    torch.manual_seed(3)
    codebook = torch.randn(CODES, CODE_DIM)
    model = OCLModel(tiny_model_config("mlp", "codes+features", projection="layernorm_mlp"), FEATURES, GRID, codebook)
    features, tokens = random_batch()
    targets = model.decoder_targets(features, tokens.to(torch.int16))
    assert targets.codes is not None and targets.tokens is not None
    torch.testing.assert_close(targets.codes, codebook[tokens])
    assert not model.codebook.requires_grad
    assert "codebook" in model.state_dict()
    output = model(features, tokens)
    output.loss.backward()
    assert set(output.losses) == {"mse_codes", "mse_features"}
    assert output.decoder_masks is not None
    torch.testing.assert_close(output.masks, output.attention_masks)  # default mask_source: attention


def test_predict_masks_eval_mode_and_restores_training() -> None:
    torch.manual_seed(4)
    config = tiny_model_config("mlp", "features", mask_source="decoder")
    config = merge(config, {"aggregator": {"name": "slot_attention"}})
    model = OCLModel(config, FEATURES, GRID).train()
    features, _ = random_batch()
    masks = model.predict_masks(features)
    assert model.training
    assert masks.shape == (2, 3, *GRID) and not masks.requires_grad
    torch.testing.assert_close(masks.sum(dim=1), torch.ones(2, *GRID))
    torch.testing.assert_close(model.predict_masks(features), masks, rtol=0, atol=0)  # no slot noise
    model.eval()
    torch.testing.assert_close(model(features).decoder_masks, masks)


def test_config_round_trips_through_yaml_and_dicts(tmp_path: Path) -> None:
    path = tmp_path / "ocl.yaml"
    path.write_text(
        "aggregator: {name: slot_attention, num_slots: 11}\n"
        "decoder: {name: mlp, target: codes+features, mlp: {hidden: 1024}}\n"
        "projection: layernorm_mlp\nmask_source: decoder\n"
    )
    config = load_config(OCLModelConfig, path, ["decoder.mlp.layers=4"])
    assert config.aggregator.num_slots == 11 and config.decoder.mlp == MlpDecoderConfig(hidden=1024, layers=4)
    assert from_dict(OCLModelConfig, to_dict(config)) == config


def synthetic_scenes(count: int, seed: int) -> torch.Tensor:
    """(count, 4, 4, C) feature maps: two objects per scene (a random rectangle on a background), each
    region filled with one of four fixed prototype vectors plus a little noise."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(4, FEATURES, generator=generator)
    scenes = []
    for _ in range(count):
        kinds = torch.randperm(4, generator=generator)[:2]
        top, left = torch.randint(0, 3, (2,), generator=generator).tolist()
        inside = torch.zeros(*GRID, dtype=torch.bool)
        inside[top : top + 2, left : left + 2] = True
        scene = torch.where(inside[..., None], prototypes[kinds[0]], prototypes[kinds[1]])
        scenes.append(scene + 0.05 * torch.randn(*GRID, FEATURES, generator=generator))
    return torch.stack(scenes)


def test_a_few_adam_steps_reduce_the_loss() -> None:
    torch.manual_seed(5)
    scenes = synthetic_scenes(32, seed=6)
    model = OCLModel(tiny_model_config("mlp", "features", projection="layernorm_mlp"), FEATURES, GRID)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(100):
        batch = scenes[(step * 4) % 32 : (step * 4) % 32 + 4]
        loss = model(batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.65 * first, (first, last)  # measured 0.36-0.45 over seeds


def test_soft_input_position_lets_identical_features_attend_by_position() -> None:
    torch.manual_seed(5)
    features = torch.randn(1, 1, 1, FEATURES).expand(2, *GRID, FEATURES)  # the same feature at every patch
    without = OCLModel(tiny_model_config("mlp", "features"), FEATURES, GRID).eval()
    attention = without.aggregate(features).attention  # (B, S, N)
    torch.testing.assert_close(attention, attention[..., :1].expand_as(attention))  # no position: all patches alike
    with_position = OCLModel(tiny_model_config("mlp", "features", input_position="soft"), FEATURES, GRID).eval()
    embedding = with_position.input_position
    assert embedding is not None
    corners = embedding.coordinates[0, [0, GRID[1] - 1, -1]]  # top-left, top-right, bottom-right: (y, x, 1-y, 1-x)
    torch.testing.assert_close(corners, torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]]))
    attention = with_position.aggregate(features).attention
    assert (attention - attention[..., :1]).abs().max() > 1e-3  # patches now differ by where they are
    assert "input_position.linear.weight" in with_position.state_dict()
    assert "input_position.coordinates" not in with_position.state_dict()  # fixed buffer, not saved
