"""Parity of the Tfd decoder with the official VVO ARTransformerDecoder and of its token orders with SPOT's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from parity import assert_close, fixture_config, load_fixture

from featcache.config import from_dict
from featcache.decoders import DecoderConfig, DecoderTargets, TransformerDecoder, TransformerDecoderConfig
from featcache.decoders.transformer import token_orders
from featcache.errors import ConfigError, FeatcacheError
from featcache.interop.vvo_tfd import VVO_TFD_OPTIONS, map_vvo_tfd
from featcache.ocl import OCLModel, OCLModelConfig
from featcache.ocl.config import AggregatorConfig

#: featcache's Tfd before issue 12 (what configs saved then resolve to).
LEGACY_TFD: dict = {
    "input_embedding": "learned", "bias": True, "first_norm": "layer", "final_norm": True, "readout_bias": True,
    "bos_init": "normal_0.02", "position_init": "normal_0.02", "layer_init": "independent",
}


def vvo_decoder(tensors: dict[str, dict[str, torch.Tensor]], config: dict, **changes: object) -> TransformerDecoder:
    """featcache's decoder at the fixture's sizes with the official options (``changes`` override them)."""
    layer = config["backbone"]["decoder_layer"]
    options = {**VVO_TFD_OPTIONS, **changes}
    tfd = TransformerDecoderConfig(
        layers=config["backbone"]["num_layers"], dim=config["embed_dim"], heads=layer["nhead"],
        feedforward=layer["dim_feedforward"], dropout=layer["dropout"], **options,  # type: ignore[arg-type]
    )
    codebook = tensors["input"]["codebook"]
    grid = tuple(config["resolut"])
    size, width = codebook.shape
    return TransformerDecoder(tfd, config["embed_dim"], grid, "tokens", width, codebook_size=size, code_dim=width)


def fixture_targets(tensors: dict[str, dict[str, torch.Tensor]]) -> DecoderTargets:
    tokens = tensors["input"]["tokens"]  # (B, h, w)
    return DecoderTargets(tokens=tokens, codes=tensors["input"]["codebook"][tokens])  # codes (B, h, w, D)


def test_vvo_tfd_logits_loss_and_gradients_equal_the_official_decoder() -> None:
    tensors, metadata = load_fixture("vvo_tfd")
    config = fixture_config(metadata)
    decoder = vvo_decoder(tensors, config).train()
    assert decoder.needs == ("tokens", "codes")
    decoder.load_state_dict(map_vvo_tfd(tensors["weights"]), strict=True)
    slots = tensors["input"]["slots"].clone().requires_grad_(True)
    targets = fixture_targets(tensors)
    torch.testing.assert_close(targets.codes, tensors["input"]["codes"], rtol=0, atol=0)
    logits, attention = decoder.predict(slots, targets)
    assert_close(logits, tensors["output"]["logits"], what="logits")
    output = decoder(slots, targets)
    assert_close(output.loss.reshape(1), tensors["output"]["loss"], what="loss")
    output.loss.backward()
    assert_close(slots.grad, tensors["grad"]["slots"], what="grad slots")
    gradients = {name: parameter.grad for name, parameter in decoder.named_parameters()}
    weight_grads = {name: grad for name, grad in tensors["grad"].items() if name != "slots"}  # official names
    mapped = map_vvo_tfd(weight_grads)
    assert set(mapped) == set(gradients)
    for name, expected in mapped.items():
        assert_close(gradients[name], expected, what=f"grad {name}")
    # Masks stay the last cross-attention, a distribution over the slots.
    assert output.masks is not None and output.masks.shape == (2, config["slots"], *config["resolut"])
    torch.testing.assert_close(output.masks.sum(dim=1), torch.ones(2, *config["resolut"]))
    torch.testing.assert_close(output.masks, attention.transpose(1, 2).reshape(output.masks.shape))


@pytest.mark.parametrize(
    "option, value", [("first_norm", "layer"), ("final_norm", True), ("input_embedding", "learned")]
)
def test_featcache_defaults_depart_from_the_official_decoder(option: str, value: object) -> None:
    """Each default that differs changes the function: the official weights no longer give its logits."""
    tensors, metadata = load_fixture("vvo_tfd")
    decoder = vvo_decoder(tensors, fixture_config(metadata), **{option: value}).eval()
    state = map_vvo_tfd(tensors["weights"])
    if option == "first_norm":  # the input norm's weights become the first layer's self-attention norm
        state["layers.0.norm1.weight"] = state.pop("input_norm.weight")
    missing, _ = decoder.load_state_dict(state, strict=False)
    with torch.no_grad():
        logits, _ = decoder.predict(tensors["input"]["slots"], fixture_targets(tensors))
    assert (logits - tensors["output"]["logits"]).abs().max() > 1e-2
    if option == "input_embedding":
        assert missing == ["input_embedding.weight"]  # featcache's default learns a token embedding


def test_vvo_options_initialise_as_the_official_decoder() -> None:
    """BOS N(0, 1/d), position embedding truncated N(0, 1), layers cloned, no biases and no final norm."""
    torch.manual_seed(0)
    options: dict = VVO_TFD_OPTIONS
    tfd = TransformerDecoderConfig(layers=3, dim=64, heads=2, feedforward=128, orders=9, **options)
    decoder = TransformerDecoder(tfd, 64, (16, 16), "tokens", 64, codebook_size=32, code_dim=64)
    assert 0.85 < decoder.bos.std().item() * 64**0.5 < 1.15  # 9 x 64 draws of N(0, 1/64)
    position = decoder.position_embedding
    assert position.abs().max() <= 2.0 and 0.8 < position.std().item() < 0.95  # truncated at 2: std 0.88
    first, second, third = decoder.layers
    for name, parameter in third.named_parameters():
        torch.testing.assert_close(second.get_parameter(name), parameter, rtol=0, atol=0)
        if not name.startswith("norm1"):
            torch.testing.assert_close(first.get_parameter(name), parameter, rtol=0, atol=0)
    assert not any(name.endswith("bias") for name, _ in decoder.named_parameters())
    assert isinstance(decoder.final_norm, torch.nn.Identity) and isinstance(first.norm1, torch.nn.Identity)
    assert isinstance(decoder.input_embedding, torch.nn.Identity)  # code width = dim: read as they are
    projected = TransformerDecoder(tfd, 64, (4, 4), "tokens", 64, codebook_size=32, code_dim=8)
    assert isinstance(projected.input_embedding, torch.nn.Linear) and projected.input_embedding.in_features == 8
    small = TransformerDecoderConfig(layers=2, dim=64, heads=2, feedforward=128, **LEGACY_TFD)
    before = TransformerDecoder(small, 64, (4, 4), "tokens", 64, codebook_size=32)  # featcache before issue 12
    assert not torch.equal(before.layers[0].linear1.weight, before.layers[1].linear1.weight)
    assert before.position_embedding.std() < 0.05 and before.needs == ("tokens",)


def test_codes_input_runs_with_nine_orders_and_checks_its_inputs() -> None:
    tensors, metadata = load_fixture("vvo_tfd")
    config = fixture_config(metadata)
    decoder = vvo_decoder(tensors, config, orders=9, order_set="spot", order_draw="batch").train()
    generator = torch.Generator().manual_seed(3)
    for _ in range(5):
        drawn = decoder.draw_noise(4, generator, torch.device("cpu"))["order"]
        assert drawn.shape == (4,) and len(set(drawn.tolist())) == 1  # SPOT: one order per batch
    targets = fixture_targets(tensors)
    slots = tensors["input"]["slots"]
    output = decoder(slots, targets, {"order": torch.tensor([8, 8])})
    logits, _ = decoder.predict(slots, targets, torch.tensor([8, 8]))
    torch.testing.assert_close(output.loss, F.cross_entropy(logits.flatten(0, 1), targets.tokens.flatten()))
    assert output.masks is not None
    torch.testing.assert_close(output.masks.sum(dim=1), torch.ones(2, *config["resolut"]))
    with pytest.raises(FeatcacheError, match="input_embedding codes needs targets.codes, got None"):
        decoder(slots, DecoderTargets(tokens=targets.tokens))
    with pytest.raises(FeatcacheError, match="reads code vectors of width 32, got 5"):
        decoder(slots, DecoderTargets(tokens=targets.tokens, codes=torch.zeros(2, 3, 4, 5)))
    with pytest.raises(ConfigError, match="input_embedding' codes needs decoder.target tokens, got 'features'"):
        codes_input = TransformerDecoderConfig(dim=32, heads=2, input_embedding="codes")
        TransformerDecoder(codes_input, 32, (3, 4), "features", 32)
    options = ("order_set", "order_draw", "input_embedding", "first_norm", "bos_init", "position_init", "layer_init")
    for option in options:
        with pytest.raises(ConfigError, match=f"config key 'decoder.tfd.{option}' must be one of"):
            TransformerDecoderConfig(**{option: "nope"})  # type: ignore[arg-type]


def test_ocl_model_feeds_code_vectors_to_a_tfd_with_the_vvo_options() -> None:
    """OCLModel looks the codes up in its frozen codebook because the decoder lists "codes" in ``needs``."""
    torch.manual_seed(0)
    options: dict = VVO_TFD_OPTIONS
    tfd = TransformerDecoderConfig(layers=2, dim=16, heads=2, feedforward=32, orders=9, order_set="spot", **options)
    config = OCLModelConfig(
        aggregator=AggregatorConfig(num_slots=3, slot_dim=16, mlp_hidden=32),
        decoder=DecoderConfig(name="tfd", target="tokens", tfd=tfd),
        projection_hidden=24,
        mask_source="decoder",
    )
    codebook = torch.randn(10, 16)  # (K, D) with D = decoder width, as in VVO (256 = 256)
    model = OCLModel(config, 8, (4, 4), codebook).train()
    features, tokens = torch.randn(2, 4, 4, 8), torch.randint(0, 10, (2, 4, 4))
    targets = model.decoder_targets(features, tokens)
    torch.testing.assert_close(targets.codes, codebook[tokens])
    output = model(features, tokens)
    output.loss.backward()
    assert model.decoder.bos.grad is not None and model.codebook.grad is None
    masks = model.predict_masks(features, tokens)  # evaluation reads raster
    assert masks.shape == (2, 3, 4, 4)
    torch.testing.assert_close(masks.sum(dim=1), torch.ones(2, 4, 4))


def test_spot_order_set_equals_spots_nine_permutations() -> None:
    tensors, metadata = load_fixture("spot_orders")
    assert metadata["repo"] == "gkakogeorgiou/spot"
    for size in (4, 5, 16):
        expected = tensors["output"][f"orders_{size}x{size}"]  # (9, size*size)
        torch.testing.assert_close(token_orders((size, size), 9, "spot"), expected, rtol=0, atol=0)
        torch.testing.assert_close(token_orders((size, size), 1, "spot"), expected[:1], rtol=0, atol=0)
    # SPOT's spiral rule on a rectangle (its model builds square grids only).
    torch.testing.assert_close(token_orders((3, 5), 9, "spot")[8], tensors["output"]["spiral_3x5"], rtol=0, atol=0)


def test_featcache_order_set_has_spots_corner_orders_in_another_sequence_and_another_spiral() -> None:
    tensors, _ = load_fixture("spot_orders")
    for size in (4, 5, 16):
        spot = [tuple(order.tolist()) for order in tensors["output"][f"orders_{size}x{size}"]]
        ours = [tuple(order.tolist()) for order in token_orders((size, size), 9)]
        assert [ours.index(order) for order in spot[:8]] == [0, 1, 5, 4, 3, 2, 7, 6]  # same corner orders
        assert spot[8] not in ours  # SPOT: outward from the centre; featcache: inward from the top-left
        assert ours[8][0] == 0 and spot[8][-1] == size - 1


def test_defaults_are_vvo_and_saved_configs_keep_their_decoder() -> None:
    """The defaults are VVO's decoder; a config saved before issue 12 (without these fields) keeps featcache's."""
    default = TransformerDecoderConfig()
    assert {name: getattr(default, name) for name in VVO_TFD_OPTIONS} == VVO_TFD_OPTIONS
    assert (default.order_set, default.order_draw) == ("featcache", "sample")
    saved = {"layers": 2, "dim": 64, "heads": 4, "feedforward": 128, "dropout": 0.0, "orders": 1}
    before = from_dict(TransformerDecoderConfig, saved)
    assert {name: getattr(before, name) for name in LEGACY_TFD} == LEGACY_TFD


def test_map_vvo_tfd_names_unknown_and_missing_keys() -> None:
    tensors, _ = load_fixture("vvo_tfd")
    state = dict(tensors["weights"])
    with pytest.raises(FeatcacheError, match=r"unexpected keys backbone.norm.weight$"):
        map_vvo_tfd(state | {"backbone.norm.weight": torch.ones(32)})
    del state["norm0.weight"]
    with pytest.raises(FeatcacheError, match=r"missing keys norm0.weight$"):
        map_vvo_tfd(state)
