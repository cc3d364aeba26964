"""Parity of the Dfz decoder with the official VVO ConditionDiffusionDecoder (DDPM schedule + SD conditional UNet)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from parity import assert_close, fixture_config, load_fixture

from featcache.decoders import DecoderTargets, DiffusionDecoderConfig
from featcache.decoders.diffusion import DiffusionDecoder
from featcache.errors import FeatcacheError
from featcache.interop.vvo_dfz import VVO_DFZ_OPTIONS, map_vvo_dfz, vvo_dfz_key


def vvo_decoder(config: dict, side: int = 8, **changes: object) -> DiffusionDecoder:
    """featcache's decoder with the official options at the fixture's sizes (``changes`` override them)."""
    unet = config["backbone"]
    schedule = config["noise_sched"]
    options = {
        **VVO_DFZ_OPTIONS,
        "timesteps": schedule["num_train_timesteps"],
        "beta_start": schedule["beta_start"],
        "beta_end": schedule["beta_end"],
        "heads": unet["attention_head_dim"],  # diffusers reads attention_head_dim as the head count
        "sd_channels": tuple(unet["block_out_channels"]),
        "sd_cross_attention": tuple(kind.startswith("CrossAttn") for kind in unet["down_block_types"]),
        "sd_layers": unet["layers_per_block"], "sd_transformer_layers": unet["transformer_layers_per_block"],
        "sd_norm_groups": unet["norm_num_groups"], "dropout": unet["dropout"],
        **changes,
    }
    dfz = DiffusionDecoderConfig(**options)  # type: ignore[arg-type]
    return DiffusionDecoder(dfz, config["slot_dim"], unet["in_channels"], (side, side))


def test_fixture_uses_the_official_block_types() -> None:
    config = fixture_config(load_fixture("vvo_dfz")[1])
    assert config["noise_sched"]["beta_schedule"] == "scaled_linear"
    assert config["backbone"]["down_block_types"] == ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * 3
    assert config["backbone"]["up_block_types"] == ["CrossAttnUpBlock2D"] * 3 + ["UpBlock2D"]
    assert config["backbone"]["mid_block_type"] == "UNetMidBlock2DCrossAttn"


def test_schedule_and_noising_equal_ddpm_scaled_linear() -> None:
    """featcache's schedule (float64, then float32) equals diffusers' float32 one to rounding, on both defaults."""
    tensors, metadata = load_fixture("vvo_dfz")
    for decoder in (vvo_decoder(fixture_config(metadata)), DiffusionDecoder(DiffusionDecoderConfig(), 16, 4, (8, 8))):
        assert_close(decoder.betas, tensors["output"]["betas"], atol=1e-8, rtol=1e-6, what="betas")
        assert_close(decoder.alphas_cumprod, tensors["output"]["alphas_cumprod"], atol=1e-6, rtol=1e-5, what="abar")
        inputs = tensors["input"]
        noisy = decoder.add_noise(inputs["quant"], inputs["noise"], inputs["timesteps"])
        assert_close(noisy, tensors["output"]["noisy"], atol=1e-6, what="x_t")


def test_vvo_dfz_prediction_loss_and_gradients_equal_the_official_decoder() -> None:
    tensors, metadata = load_fixture("vvo_dfz")
    decoder = vvo_decoder(fixture_config(metadata)).train()
    decoder.load_state_dict(map_vvo_dfz(tensors["weights"], decoder), strict=True)
    inputs = tensors["input"]
    # The training loss through featcache's own noising (schedule rounding: |x_t diff| ~4e-7).
    codes = inputs["quant"].permute(0, 2, 3, 1)  # (B, D, h, w) -> featcache's (B, h, w, D)
    noise = {"timesteps": inputs["timesteps"], "noise": inputs["noise"]}
    output = decoder(inputs["slots"], DecoderTargets(codes=codes), noise=noise)
    assert_close(output.loss.reshape(1), tensors["output"]["loss"], what="loss")
    # The UNet on the official x_t, and one backward of the official loss MSE(prediction, noise).
    slots = inputs["slots"].clone().requires_grad_(True)
    prediction = decoder.unet(tensors["output"]["noisy"], inputs["timesteps"], slots)
    assert_close(prediction, tensors["output"]["prediction"], what="predicted noise")
    F.mse_loss(prediction, inputs["noise"]).backward()
    assert_close(slots.grad, tensors["grad"]["slots"], what="grad slots")
    parameters = dict(decoder.named_parameters())
    official_grads = {key: value for key, value in tensors["grad"].items() if key != "slots"}
    assert len(official_grads) == 10
    for key, expected in official_grads.items():
        assert_close(parameters[vvo_dfz_key(key)].grad, expected, what=f"grad {key}")


def test_sides_that_do_not_halve_upsample_to_the_skip_size() -> None:
    """6x6 goes 6 -> 3 -> 2 -> 1 and back: each upsampling meets its skip's size, as in the official UNet."""
    tensors, metadata = load_fixture("vvo_dfz")
    decoder = vvo_decoder(fixture_config(metadata), side=6).eval()
    decoder.load_state_dict(map_vvo_dfz(tensors["weights"], decoder), strict=True)
    inputs = tensors["input"]
    with torch.no_grad():
        prediction = decoder.unet(inputs["noisy_6x6"], inputs["timesteps"], inputs["slots"])
    assert_close(prediction, tensors["output"]["prediction_6x6"], what="predicted noise 6x6")


def test_mapping_names_missing_and_unexpected_keys() -> None:
    tensors, metadata = load_fixture("vvo_dfz")
    config = fixture_config(metadata)
    weights = tensors["weights"]
    # featcache's default UNet is another architecture: the official weights do not fit it.
    with pytest.raises(FeatcacheError, match="unexpected keys backbone"):
        map_vvo_dfz(weights, vvo_decoder(config, unet="featcache", unet_channels=8, heads=2))
    decoder = vvo_decoder(config)
    partial = {key: value for key, value in weights.items() if key != "backbone.mid_block.attentions.0.proj_in.weight"}
    with pytest.raises(FeatcacheError, match=r"missing keys unet\.middle_attention\.proj_in\.weight$"):
        map_vvo_dfz(partial, decoder)
    with pytest.raises(FeatcacheError, match="unexpected key noise_sched.betas"):
        map_vvo_dfz(weights | {"noise_sched.betas": torch.zeros(1)}, decoder)
