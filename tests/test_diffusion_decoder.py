"""VVO-Dfz diffusion decoder: schedule, UNet shapes, slot/timestep conditioning, training signal, sampling."""

from __future__ import annotations

import math

import pytest
import torch

from featcache.config import from_dict
from featcache.decoders.base import DecoderTargets
from featcache.decoders.diffusion import DiffusionDecoder
from featcache.decoders.diffusion_config import DiffusionDecoderConfig
from featcache.errors import ConfigError

SLOT_DIM = 12
CODE_DIM = 4
SLOTS = 3


def tiny_config(**overrides: object) -> DiffusionDecoderConfig:
    settings: dict[str, object] = dict(timesteps=50, unet="featcache", unet_channels=8, unet_levels=2, heads=2, dropout=0.0)
    settings.update(overrides)
    return DiffusionDecoderConfig(**settings)  # type: ignore[arg-type]


def make_decoder(side: int = 4, **overrides: object) -> DiffusionDecoder:
    torch.manual_seed(0)
    return DiffusionDecoder(tiny_config(**overrides), slot_dim=SLOT_DIM, code_dim=CODE_DIM, grid=(side, side))


def test_loss_is_scalar_and_reaches_unet_and_slots() -> None:
    decoder = make_decoder()
    slots = torch.randn(2, SLOTS, SLOT_DIM, requires_grad=True)
    codes = torch.randn(2, 4, 4, CODE_DIM)
    output = decoder(slots, DecoderTargets(codes=codes))
    assert output.loss.ndim == 0 and torch.isfinite(output.loss)
    assert set(output.losses) == {"diffusion"}
    assert output.masks is None and output.reconstruction is None
    output.loss.backward()
    assert slots.grad is not None and slots.grad.abs().sum() > 0
    assert decoder.unet.input_conv.weight.grad.abs().sum() > 0
    assert decoder.unet.output_conv.weight.grad.abs().sum() > 0
    assert all(parameter.grad is not None for parameter in decoder.parameters())


def test_scaled_linear_schedule_endpoints() -> None:
    config = tiny_config()
    decoder = DiffusionDecoder(config, SLOT_DIM, CODE_DIM, (4, 4))
    assert decoder.betas.dtype == torch.float32 and decoder.betas.shape == (50,)
    assert decoder.betas[0].item() == pytest.approx(0.0015, rel=1e-6)
    assert decoder.betas[-1].item() == pytest.approx(0.0195, rel=1e-6)
    # Interior point: linear in sqrt(beta), so t=1 is (sqrt(b0) + (sqrt(b1) - sqrt(b0)) / 49) ** 2.
    step = (math.sqrt(0.0195) - math.sqrt(0.0015)) / 49
    assert decoder.betas[1].item() == pytest.approx((math.sqrt(0.0015) + step) ** 2, rel=1e-6)
    assert decoder.alphas_cumprod[0].item() == pytest.approx(1 - 0.0015, rel=1e-6)
    expected_last = math.prod(1 - (math.sqrt(0.0015) + i * step) ** 2 for i in range(50))
    assert decoder.alphas_cumprod[-1].item() == pytest.approx(expected_last, rel=1e-5)
    assert torch.allclose(decoder.sqrt_alphas_cumprod**2 + decoder.sqrt_one_minus_alphas_cumprod**2, torch.ones(50))


@pytest.mark.parametrize("side", [4, 8])
def test_unet_output_shape_matches_input(side: int) -> None:
    decoder = make_decoder(side)
    x_t = torch.randn(2, CODE_DIM, side, side)
    predicted = decoder.unet(x_t, torch.tensor([0, 49]), torch.randn(2, SLOTS, SLOT_DIM))
    assert predicted.shape == x_t.shape


def test_grid_not_divisible_is_rejected() -> None:
    with pytest.raises(ConfigError, match="divisible by 4"):
        DiffusionDecoder(tiny_config(unet_levels=3), SLOT_DIM, CODE_DIM, (6, 6))
    with pytest.raises(ConfigError, match="heads"):
        DiffusionDecoder(tiny_config(heads=3), SLOT_DIM, CODE_DIM, (4, 4))


def test_prediction_depends_on_slots_and_timestep() -> None:
    decoder = make_decoder()
    x_t = torch.randn(2, CODE_DIM, 4, 4)
    timesteps = torch.tensor([5, 5])
    slots = torch.randn(2, SLOTS, SLOT_DIM)
    base = decoder.unet(x_t, timesteps, slots)
    other_slots = decoder.unet(x_t, timesteps, torch.randn(2, SLOTS, SLOT_DIM))
    other_time = decoder.unet(x_t, torch.tensor([40, 40]), slots)
    assert (base - other_slots).abs().max() > 1e-4
    assert (base - other_time).abs().max() > 1e-4


def test_overfitting_lowers_the_loss() -> None:
    decoder = make_decoder(unet_channels=16)
    torch.manual_seed(1)
    codes = torch.randn(1, 4, 4, CODE_DIM).expand(8, -1, -1, -1)  # one fixed x0, batch of 8 draws
    slots = torch.randn(1, SLOTS, SLOT_DIM).expand(8, -1, -1)
    targets = DecoderTargets(codes=codes)

    def evaluation_loss() -> float:
        """Loss over fixed (seeded) timesteps and noise, averaged over a few batches."""
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(123)
            return sum(decoder(slots, targets).loss.item() for _ in range(8)) / 8

    before = evaluation_loss()
    optimiser = torch.optim.Adam(decoder.parameters(), lr=5e-3)
    for _ in range(100):
        optimiser.zero_grad()
        decoder(slots, targets).loss.backward()
        optimiser.step()
    after = evaluation_loss()
    assert after < 0.6 * before, (before, after)


def test_sample_shape_finite_and_seeded() -> None:
    decoder = make_decoder(8)
    slots = torch.randn(2, SLOTS, SLOT_DIM)
    full = decoder.sample(slots, generator=torch.Generator().manual_seed(0))
    assert full.shape == (2, 8, 8, CODE_DIM) and torch.isfinite(full).all()
    strided = decoder.sample(slots, steps=5, generator=torch.Generator().manual_seed(0))
    again = decoder.sample(slots, steps=5, generator=torch.Generator().manual_seed(0))
    assert strided.shape == (2, 8, 8, CODE_DIM) and torch.isfinite(strided).all()
    assert torch.equal(strided, again)
    assert decoder.sampling_timesteps(5, torch.device("cpu")).tolist() == [49, 37, 24, 12, 0]
    with pytest.raises(ValueError, match="steps"):
        decoder.sample(slots, steps=0)


def test_seeded_training_loss_repeats() -> None:
    """The training loss is a function of the seed: the same seed repeats it, another seed changes it (so the
    timesteps and noise really are drawn from the seeded RNG; a decoder that drew none would fail here)."""
    decoder = make_decoder()
    slots = torch.randn(2, SLOTS, SLOT_DIM)
    targets = DecoderTargets(codes=torch.randn(2, 4, 4, CODE_DIM))

    def global_rng_loss(seed: int) -> torch.Tensor:  # no noise passed: torch's global RNG
        torch.manual_seed(seed)
        return decoder(slots, targets).loss

    assert torch.equal(global_rng_loss(7), global_rng_loss(7))
    assert not torch.equal(global_rng_loss(7), global_rng_loss(8))

    def generator_loss(seed: int, global_seed: int) -> torch.Tensor:  # noise from a seeded generator via draw_noise
        noise = decoder.draw_noise(2, torch.Generator().manual_seed(seed), torch.device("cpu"))
        torch.manual_seed(global_seed)
        return decoder(slots, targets, noise).loss

    assert torch.equal(generator_loss(7, global_seed=1), generator_loss(7, global_seed=2))  # the global RNG plays no part
    assert not torch.equal(generator_loss(7, global_seed=1), generator_loss(8, global_seed=1))


def test_sampling_with_all_steps_matches_ddpm_posterior() -> None:
    """Full-length respaced coefficients reduce to the textbook DDPM ones (beta'_t = beta_t)."""
    decoder = make_decoder()
    abar = decoder.alphas_cumprod.double()
    previous = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    assert torch.allclose(1 - abar / previous, decoder.betas.double(), rtol=1e-4)


def tiny_sd(**overrides: object) -> dict[str, object]:
    """Settings of a small ``sd`` UNet (VVO-Dfz's block types at widths 4-8)."""
    settings: dict[str, object] = dict(
        unet="sd", heads=2, sd_channels=(4, 8, 8, 8), sd_norm_groups=4, sd_cross_attention=(False, True, True, True)
    )
    settings.update(overrides)
    return settings


@pytest.mark.parametrize("side", [8, 6])
def test_sd_unet_shape_and_slot_conditioning(side: int) -> None:
    decoder = make_decoder(side, **tiny_sd())
    x_t = torch.randn(2, CODE_DIM, side, side)
    slots = torch.randn(2, SLOTS, SLOT_DIM)
    predicted = decoder.unet(x_t, torch.tensor([3, 40]), slots)
    assert predicted.shape == x_t.shape
    assert (predicted - decoder.unet(x_t, torch.tensor([3, 40]), torch.randn(2, SLOTS, SLOT_DIM))).abs().max() > 1e-4
    stages = decoder.unet.down_stages
    assert [len(stage.resnets) for stage in stages] == [2, 2, 2, 2]
    assert [len(stage.transformers) for stage in stages] == [0, 2, 2, 2]
    assert [len(stage.resnets) for stage in decoder.unet.up_stages] == [3, 3, 3, 3]
    assert [len(stage.transformers) for stage in decoder.unet.up_stages] == [3, 3, 3, 0]
    assert [stage.resample is None for stage in stages] == [False, False, False, True]


def test_sd_unet_trains_slots() -> None:
    decoder = make_decoder(4, **tiny_sd(dropout=0.1))
    slots = torch.randn(2, SLOTS, SLOT_DIM, requires_grad=True)
    output = decoder(slots, DecoderTargets(codes=torch.randn(2, 4, 4, CODE_DIM)))
    output.loss.backward()
    assert slots.grad is not None and slots.grad.abs().sum() > 0
    assert all(parameter.grad is not None for parameter in decoder.parameters())


def test_defaults_are_vvo_and_saved_configs_keep_featcache_unet() -> None:
    """Defaults: VVO's decoder (SD UNet, 8 heads, dropout 0.1); a config saved before issue 12 (without the new
    fields) resolves to featcache's UNet without dropout, whose state dict has no new keys (old runs load)."""
    config = DiffusionDecoderConfig()
    assert (config.unet, config.heads, config.dropout) == ("sd", 8, 0.1)
    saved = {"timesteps": 50, "beta_start": 0.0015, "beta_end": 0.0195, "unet_channels": 8, "unet_levels": 2, "heads": 2}
    before = from_dict(DiffusionDecoderConfig, saved)
    assert before.unet == "featcache" and before.dropout == 0.0
    decoder = DiffusionDecoder(before, slot_dim=SLOT_DIM, code_dim=CODE_DIM, grid=(4, 4))
    assert not any("dropout" in key for key in decoder.state_dict())
    assert type(decoder.unet).__name__ == "ConditionalUNet"


def test_sd_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="decoder.dfz.unet"):
        DiffusionDecoderConfig(unet="diffusers")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="decoder.dfz.dropout"):
        DiffusionDecoderConfig(dropout=1.0)
    with pytest.raises(ConfigError, match="one entry per level"):
        DiffusionDecoderConfig(**tiny_sd(sd_cross_attention=(False, True)))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="sd_norm_groups=4"):
        DiffusionDecoderConfig(**tiny_sd(sd_channels=(4, 8, 8, 6)))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="heads=3"):
        DiffusionDecoderConfig(**tiny_sd(heads=3, sd_norm_groups=1))  # type: ignore[arg-type]
    DiffusionDecoderConfig(**tiny_sd(sd_channels=(2, 8, 8, 8), sd_norm_groups=2))  # level 0 does not attend
