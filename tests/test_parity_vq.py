"""Parity of featcache's quantizer with the official VVO ``VQVAEZ`` / ``QuantiZ`` (Genera1Z/VQ-VFM-OCL).

Fixtures ``vvo_vq`` (config-vqdino/vqdino-coco-c256.py, code_dim 8) and ``vvo_vq_c4`` (vqdino-coco-c4.py,
code_dim 4) hold the official module's weights at small widths (24 feature channels, 4x4 grid, 16 codes, the
official template dimension 1024), its outputs in evaluation and in training with fixed Gumbel draws, the
weighted losses, the gradients of one fixed loss, and the official schedule callbacks' values.
``vvo_vq_decoder`` holds the official image decoder at small widths (TAESD part randomly initialised).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from featcache.errors import FeatcacheError
from featcache.interop.vvo_vq import map_decoder, map_quantizer, official_decoder_config, official_quantizer_config, quantizer_key_map
from featcache.quantize import QuantizerConfig, VectorQuantizer, VQModel, VVOPixelDecoder, gumbel_scale, residual_alpha
from tests.parity import assert_close, fixture_config, load_fixture

FIXTURES = ["vvo_vq", "vvo_vq_c4"]
#: Official loss names (config ``loss_fn``) -> featcache's quantizer loss names.
LOSS_NAMES = {"align": "alignment", "commit": "commitment", "norm_e": "normalisation"}


def official_config(code_dim: int, codebook_size: int = 16) -> QuantizerConfig:
    """featcache options set to the official values (vaez.py, basic.py CNN, config-vqdino/vqdino-coco-*.py)."""
    return QuantizerConfig(
        codebook_size=codebook_size,
        code_dim=code_dim,
        template_dim=1024,  # QuantiZ in_dim default, vaez.py:49
        encoder_layers=3,
        encoder_last_block="conv",
        projection_bias=True,
        code_similarity="standardised_distance",
        gumbel_scaling="similarities",
        gumbel_scale_start=1.0,
        gumbel_scale_end=2.35,
        residual_anneal_fraction=0.5,
        residual_alpha_end=0.0,
        commitment_target="residual",
        alignment_weight=1.0,
        commitment_weight=0.25,
        normalisation_weight=0.1,
    )


def build(name: str, config: QuantizerConfig | None = None) -> tuple[VectorQuantizer, dict, dict]:
    tensors, metadata = load_fixture(name)
    code_dim = tensors["weights"]["quant.project.weight"].shape[0]
    quantizer = VectorQuantizer(config or official_config(code_dim), feature_channels=24)
    mapped, _ = map_quantizer(tensors["weights"])
    quantizer.load_state_dict(mapped, strict=True)
    return quantizer, tensors, fixture_config(metadata)


def features_of(tensors: dict, requires_grad: bool = False) -> torch.Tensor:
    features = tensors["input"]["features"].permute(0, 2, 3, 1).contiguous()  # (B, C, h, w) -> (B, h, w, C)
    return features.requires_grad_(requires_grad)


def run_case(quantizer: VectorQuantizer, tensors: dict, config: dict, case: str, features: torch.Tensor):
    info = config["cases"][case]
    noise = tensors["input"].get(f"{case}.gumbel")
    return quantizer(features, progress=info["progress"], training_noise=info["train"], gumbel_noise=noise)


def weighted_losses(quantizer: VectorQuantizer, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    weights = {
        "alignment": quantizer.config.alignment_weight,
        "commitment": quantizer.config.commitment_weight,
        "normalisation": quantizer.config.normalisation_weight,
    }
    return {name: weights[name] * losses[name] for name in weights}


@pytest.mark.parametrize("name", FIXTURES)
@pytest.mark.parametrize("case", ["eval", "train", "train_late"])
def test_quantizer_equals_official_forward(name: str, case: str) -> None:
    quantizer, tensors, config = build(name)
    expected = {key.split(".", 1)[1]: value for key, value in tensors["output"].items() if key.startswith(case + ".")}
    output = run_case(quantizer, tensors, config, case, features_of(tensors))
    info = config["cases"][case]
    assert output.alpha == pytest.approx(info["alpha"], abs=1e-6)
    if info["train"]:
        assert output.gumbel_scale == pytest.approx(info["std"], rel=1e-6)
    assert_close(output.z, expected["encode"], what=f"{case} z")
    assert torch.equal(output.indices, expected["zidx"].long()), f"{case} indices"
    assert_close(output.quantized, expected["quant"], what=f"{case} quantized")
    assert_close(output.decoder_input, expected["decode"], what=f"{case} decoder input")
    ours = weighted_losses(quantizer, output.losses)
    for official_name, our_name in LOSS_NAMES.items():
        assert_close(ours[our_name].reshape(1), expected[f"loss.{official_name}"], what=f"{case} {our_name}")


@pytest.mark.parametrize("name", FIXTURES)
def test_training_gradients_equal_official(name: str) -> None:
    quantizer, tensors, config = build(name)
    features = features_of(tensors, requires_grad=True)
    output = run_case(quantizer, tensors, config, "train", features)
    upstream = tensors["input"]["train.upstream"]
    loss = sum(weighted_losses(quantizer, output.losses).values()) + (output.decoder_input * upstream).mean()
    assert_close(loss.reshape(1), tensors["output"]["train.fixed_loss"], what="fixed loss")
    loss.backward()
    parameters = dict(quantizer.named_parameters())
    key_map = quantizer_key_map(tensors["weights"])
    official_grads = {key: grad for key, grad in tensors["grad"].items() if key != "features"}
    assert set(official_grads) == {key for key, target in key_map.items() if target in parameters}
    for official_key, grad in official_grads.items():
        assert_close(parameters[key_map[official_key]].grad, grad, what=f"grad {official_key}")
    assert_close(features.grad.permute(0, 3, 1, 2), tensors["grad"]["features"], what="grad features")


@pytest.mark.parametrize("name", FIXTURES)
def test_schedules_equal_official_callbacks(name: str) -> None:
    tensors, metadata = load_fixture(name)
    total = fixture_config(metadata)["total_step"]
    schedule = tensors["output"]
    for index, step in enumerate(schedule["schedule.steps"].tolist()):
        progress = step / total
        official_gumbel = schedule["schedule.gumbel_std"][index].item()
        assert gumbel_scale(progress, 1.0, 2.35) == pytest.approx(official_gumbel, rel=1e-6)
        assert residual_alpha(progress, 0.5) == pytest.approx(schedule["schedule.alpha"][index].item(), abs=1e-6)
        # ClevrTex/MOVi-D configs: alpha "anneals" from 1 to 1, the decoder never sees q alone.
        assert residual_alpha(progress, 0.5, end=1.0) == pytest.approx(
            schedule["schedule.alpha_clevrtex"][index].item(), abs=1e-6
        )


@pytest.mark.parametrize("name", FIXTURES)
def test_mapping_gives_the_config_and_the_tokenize_codebook(name: str) -> None:
    quantizer, tensors, _ = build(name)
    code_dim = tensors["weights"]["quant.project.weight"].shape[0]
    assert official_quantizer_config(tensors["weights"]) == official_config(code_dim)
    _, codebook = map_quantizer(tensors["weights"])
    assert_close(codebook, quantizer.codebook.codes(), what="codebook")
    indices, _ = quantizer.tokenize(features_of(tensors))
    assert torch.equal(indices, tensors["output"]["eval.zidx"].long())  # noise-free tokens = official eval


def test_mapping_rejects_missing_and_unexpected_keys() -> None:
    tensors, _ = load_fixture("vvo_vq")
    weights = dict(tensors["weights"])
    with pytest.raises(FeatcacheError, match="quant.project.weight"):
        map_quantizer({key: value for key, value in weights.items() if key != "quant.project.weight"})
    with pytest.raises(FeatcacheError, match="unexpected keys quant.extra"):
        map_quantizer({**weights, "quant.extra": torch.zeros(1)})
    assert map_quantizer({**weights, "decode.0.weight": torch.zeros(1)})[0].keys() == map_quantizer(weights)[0].keys()


@pytest.mark.parametrize(
    ("option", "featcache_value"),
    [("code_similarity", "squared_distance"), ("gumbel_scaling", "noise"), ("commitment_target", "quantized")],
)
def test_featcache_defaults_depart_from_official(option: str, featcache_value: str) -> None:
    """Each featcache default, alone, gives a different training pass from the official code."""
    code_dim = 8
    quantizer, tensors, config = build("vvo_vq", replace(official_config(code_dim), **{option: featcache_value}))
    output = run_case(quantizer, tensors, config, "train", features_of(tensors))
    if option == "commitment_target":
        commitment = 0.25 * output.losses["commitment"]
        assert (commitment - tensors["output"]["train.loss.commit"]).abs().item() > 1e-3
    else:
        assert not torch.equal(output.indices, tensors["output"]["train.zidx"].long())


def test_featcache_encoder_default_departs_from_official() -> None:
    """featcache's default last encoder block adds GroupNorm + SiLU before the closing GroupNorm."""
    tensors, _ = load_fixture("vvo_vq")
    quantizer = VectorQuantizer(replace(official_config(8), encoder_last_block="conv_norm_activation"), 24)
    mapped, _ = map_quantizer(tensors["weights"])
    missing = quantizer.load_state_dict(mapped, strict=False).missing_keys
    assert missing == ["encoder.blocks.2.1.weight", "encoder.blocks.2.1.bias"]
    z = quantizer.encoder(features_of(tensors))
    assert (z - tensors["output"]["eval.encode"]).abs().max().item() > 1e-2


def test_vvo_decoder_equals_official() -> None:
    """decoder.architecture 'vvo' reproduces the official pre-training decoder (1x1 stem + TAESD decoder body)."""
    tensors, _ = load_fixture("vvo_vq_decoder")
    weights = tensors["weights"]
    decoder = VVOPixelDecoder(code_dim=8, channels=16, body_channels=8)
    decoder.load_state_dict(map_decoder(weights), strict=True)
    assert_close(decoder(tensors["input"]["codes"]), tensors["output"]["image"], what="vvo decoder image")
    config = official_decoder_config(weights, grid_side=4)
    assert (config.architecture, config.channels, config.body_channels, config.image_size) == ("vvo", 16, 8, 32)
    model = VQModel(official_config(8), config, feature_channels=24, grid=(4, 4))
    model.decoder.load_state_dict(map_decoder(weights), strict=True)
    features = torch.randn(2, 4, 4, 24, generator=torch.Generator().manual_seed(0))
    assert model(features, torch.zeros(2, 3, 32, 32), progress=0.5).reconstruction.shape == (2, 3, 32, 32)
    with pytest.raises(FeatcacheError, match="unexpected keys decode.9.weight"):
        map_decoder({**weights, "decode.9.weight": torch.zeros(1)})
    with pytest.raises(FeatcacheError, match="lack decode.0.weight"):
        map_decoder({key: value for key, value in weights.items() if key != "decode.0.weight"})
