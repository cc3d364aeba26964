"""Parity of featcache's spatial-broadcast MLP decoder with VVO's BroadcastMLPDecoder, videosaur's MLPDecoder
and OCLF's PatchDecoder: reconstruction, alpha masks, losses and one backward pass on fixtures made by the
official code (tests/fixtures/parity/*_mlp_decoder*.safetensors), plus each anchor's initialisation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from parity import assert_close, fixture_config, load_fixture

from featcache.config import from_dict, merge
from featcache.decoders import DecoderTargets, MlpDecoder, MlpDecoderConfig
from featcache.errors import ConfigError, FeatcacheError
from featcache.interop.vvo_mlp_decoder import (
    OCLF_MLP_OPTIONS,
    VIDEOSAUR_MLP_OPTIONS,
    VVO_MLP_OPTIONS,
    map_mlp_decoder,
    map_oclf_mlp_decoder,
    map_videosaur_mlp_decoder,
    vvo_mlp_options,
)

GRID = (4, 4)
#: The fixtures scale the alpha row of the official decoder's last Linear by this after init (sharper masks).
ALPHA_SCALE = 50.0


def vvo_decoder(name: str, options: dict[str, Any]) -> tuple[MlpDecoder, dict, dict]:
    """featcache decoder with the VVO fixture's sizes and ``options``, holding the fixture's mapped weights."""
    tensors, metadata = load_fixture(name)
    config = fixture_config(metadata)
    mlp = dict(vvo_mlp_options(config), **options)
    code_dim, feature_dim = config["code_dim"], config["vfm_dim"]
    target = "codes+features" if code_dim else "features"
    slot_dim = config["posit_embed"]["embed_dim"]
    decoder = MlpDecoder(MlpDecoderConfig(**mlp), slot_dim, tuple(config["grid"]), target, feature_dim, code_dim)
    decoder.load_state_dict(map_mlp_decoder(tensors["weights"]), strict=True)
    return decoder, tensors, config


def vvo_targets(tensors: dict) -> DecoderTargets:
    """Official (B, C, h, w) targets as featcache's (B, h, w, C)."""
    inputs = tensors["input"]
    codes = inputs.get("quant")
    return DecoderTargets(
        features=inputs["feature"].permute(0, 2, 3, 1),
        codes=None if codes is None else codes.permute(0, 2, 3, 1),
    )


def assert_grads(decoder: MlpDecoder, expected: dict[str, torch.Tensor], mapping: Callable, slots: torch.Tensor) -> None:
    """Weight gradients (mapped like the weights) and the slots' gradient equal the official ones."""
    grads = mapping({key: value for key, value in expected.items() if key != "slots"})
    for key, parameter in decoder.named_parameters():
        assert parameter.grad is not None, key
        assert_close(parameter.grad, grads[key], what=f"grad {key}")
    assert slots.grad is not None
    assert_close(slots.grad, expected["slots"], what="grad slots")


@pytest.mark.parametrize("name", ["vvo_mlp_decoder", "vvo_mlp_decoder_dinosaur"])
def test_vvo_broadcast_mlp_decoder_matches_official(name: str) -> None:
    """VVO-Mlp (codes+features) and VVO's DINOSAUR (features): outputs, losses and gradients."""
    decoder, tensors, config = vvo_decoder(name, VVO_MLP_OPTIONS)
    slots = tensors["input"]["slots"].clone().requires_grad_(True)
    out = decoder(slots, vvo_targets(tensors))
    expected = tensors["output"]
    assert out.reconstruction is not None and out.masks is not None
    assert_close(out.reconstruction, expected["recon"].permute(0, 2, 3, 1), what="reconstruction")
    assert_close(out.masks, expected["attent2"], what="masks")
    assert_close(out.losses["mse_features"], expected["loss_recon"], what="feature loss")
    if config["code_dim"]:
        assert_close(out.losses["mse_codes"], expected["loss_recon0"], what="code loss")
    assert_close(out.loss, expected["loss"], what="loss")
    out.loss.backward()
    assert_grads(decoder, tensors["grad"], map_mlp_decoder, slots)


def test_vvo_decoder_departs_with_featcache_default_activation() -> None:
    """featcache's default ReLU gives a different decoder from VVO's GELU with the same weights."""
    decoder, tensors, _ = vvo_decoder("vvo_mlp_decoder", {"activation": "relu"})
    out = decoder(tensors["input"]["slots"], vvo_targets(tensors))
    assert out.masks is not None
    assert (out.masks - tensors["output"]["attent2"]).abs().max() > 1e-3


def test_vvo_options_initialise_like_the_official_decoder() -> None:
    """Under the fixture's seed, featcache with VVO's options draws the official initial weights bit for bit
    (same draw order: position embedding, then the Linears)."""
    tensors, metadata = load_fixture("vvo_mlp_decoder")
    config = fixture_config(metadata)
    torch.manual_seed(0)
    decoder = MlpDecoder(
        MlpDecoderConfig(**vvo_mlp_options(config)), 32, GRID, "codes+features", config["vfm_dim"], config["code_dim"]
    )
    ours = {key: value.clone() for key, value in decoder.state_dict().items()}
    ours["mlp.6.weight"][-1] *= ALPHA_SCALE  # as the fixture's generator did after the official init
    official = map_mlp_decoder(tensors["weights"])
    for key, value in ours.items():
        assert torch.equal(value, official[key]), key
    position = official["position_embedding"]
    assert position.abs().max() <= 2.0 and position.std() > 0.5


@pytest.mark.parametrize(
    ("name", "options", "mapping"),
    [
        ("videosaur_mlp_decoder", VIDEOSAUR_MLP_OPTIONS, map_videosaur_mlp_decoder),
        ("oclf_mlp_decoder", OCLF_MLP_OPTIONS, map_oclf_mlp_decoder),
    ],
)
def test_dinosaur_mlp_decoder_matches_videosaur_and_oclf(name: str, options: dict[str, Any], mapping: Callable) -> None:
    """DINOSAUR's decoder as videosaur and OCLF write it: reconstruction, masks, MSE loss and gradients."""
    tensors, metadata = load_fixture(name)
    config = fixture_config(metadata)
    hidden = config["hidden_dims"] if "hidden_dims" in config else config["decoder"]["features"]
    feature_dim = config["outp_dim"] if "outp_dim" in config else config["output_dim"]
    slots = tensors["input"]["slots"].clone().requires_grad_(True)
    batch, _, slot_dim = slots.shape
    decoder = MlpDecoder(
        MlpDecoderConfig(hidden=hidden[0], layers=len(hidden), **options), slot_dim, GRID, "features", feature_dim
    )
    decoder.load_state_dict(mapping(tensors["weights"]), strict=True)
    features = tensors["input"]["features"]  # (B, N, C)
    out = decoder(slots, DecoderTargets(features=features.reshape(batch, *GRID, feature_dim)))
    expected = tensors["output"]
    assert out.reconstruction is not None and out.masks is not None
    assert_close(out.reconstruction.flatten(1, 2), expected["reconstruction"], what="reconstruction")
    assert_close(out.masks.flatten(2), expected["masks"], what="masks")
    assert_close(out.loss, expected["loss"], what="loss")
    out.loss.backward()
    assert_grads(decoder, tensors["grad"], mapping, slots)


def make(options: dict[str, Any], slot_dim: int = 256, grid: tuple[int, int] = (16, 16)) -> MlpDecoder:
    return MlpDecoder(MlpDecoderConfig(hidden=16, layers=2, **options), slot_dim, grid, "features", 8)


def test_position_and_bias_initialisations() -> None:
    """Each anchor's initial position embedding and biases; featcache's previous default (what configs saved
    before issue 12 resolve to) draws exactly what it drew before."""
    assert {name: getattr(MlpDecoderConfig(), name) for name in VVO_MLP_OPTIONS} == VVO_MLP_OPTIONS
    legacy = {name: getattr(from_dict(MlpDecoderConfig, {"hidden": 16, "layers": 2}), name) for name in VVO_MLP_OPTIONS}
    torch.manual_seed(1)
    default = make(legacy)
    torch.manual_seed(1)
    assert torch.equal(default.position_embedding.data, torch.randn(1, 256, 256) * 0.02)
    vvo = make(VVO_MLP_OPTIONS).position_embedding.data  # N(0, 1) truncated to [-2, 2]: std 0.88
    assert vvo.abs().max() <= 2.0 and abs(vvo.std().item() - 0.88) < 0.02
    videosaur = make(VIDEOSAUR_MLP_OPTIONS).position_embedding.data
    assert abs(videosaur.std().item() - 256**-0.5) < 0.002 and videosaur.abs().max() > 2 * 256**-0.5
    oclf = make(OCLF_MLP_OPTIONS)
    assert abs(oclf.position_embedding.std().item() - 0.02) < 0.001
    assert all(layer.bias.abs().max() == 0 for layer in oclf.mlp if isinstance(layer, torch.nn.Linear))
    assert all(layer.bias.abs().max() > 0 for layer in default.mlp if isinstance(layer, torch.nn.Linear))
    assert isinstance(make(VVO_MLP_OPTIONS).mlp[1], torch.nn.GELU) and isinstance(default.mlp[1], torch.nn.ReLU)


def test_config_options_validate_and_merge() -> None:
    merged = merge(MlpDecoderConfig(), {"activation": "gelu", "position_init": "trunc_normal_1", "bias_init": "zero"})
    assert (merged.activation, merged.position_init, merged.bias_init) == ("gelu", "trunc_normal_1", "zero")
    with pytest.raises(ConfigError, match="decoder.mlp.activation"):
        MlpDecoderConfig(activation="silu")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="decoder.mlp.position_init"):
        MlpDecoderConfig(position_init="normal")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="decoder.mlp.bias_init"):
        MlpDecoderConfig(bias_init="zeros")  # type: ignore[arg-type]


def test_mappings_name_missing_and_unexpected_keys() -> None:
    weights = load_fixture("vvo_mlp_decoder")[0]["weights"]
    with pytest.raises(FeatcacheError, match=r"missing keys \['posit_embed.pe'\]"):
        map_mlp_decoder({key: value for key, value in weights.items() if key != "posit_embed.pe"})
    with pytest.raises(FeatcacheError, match=r"missing keys \['backbone.4.bias'\]"):
        map_mlp_decoder({key: value for key, value in weights.items() if key != "backbone.4.bias"})
    with pytest.raises(FeatcacheError, match=r"unexpected keys \['inp_transform.weight'\]"):
        map_oclf_mlp_decoder({"inp_transform.weight": torch.zeros(1), "pos_embed": torch.zeros(1, 4, 2)})
    with pytest.raises(FeatcacheError, match="not a Linear layer"):
        map_mlp_decoder({**weights, "backbone.8.weight": torch.ones(3), "backbone.8.bias": torch.zeros(3)})
    with pytest.raises(FeatcacheError, match="ln='pre'"):
        vvo_mlp_options({"backbone": {"dims": [8, 8, 5], "ln": "pre", "dropout": 0}})
