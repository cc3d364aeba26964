"""Parity of featcache's MSF quantizer with the official ``VQVAEZMultiScale`` (Genera1Z/MultiScaleFusion).

Fixture ``msf_vq``: the official module at small widths (12 feature channels, 8x8 grid, 3 levels, code_dim 8,
shared codebook 16 codes, specified 16/8/4, template dimension 1024), with VVO's feature-encoder layout and an
identity decoder so that its forward returns every level; evaluation mode (alpha 0 and 0.5) and training mode
with Gumbel noise (progress 0.3; level-choice temperature 0 and 0.5), the noise drawn from a fixed seed, and
one training step's gradients. ``msf_vq_pinv``: the same with the official pseudo-inverse projection
(``LinearPinv``, encoder dim 4, code dim 8, template dimension 64). Also unit tests of
the fusion rule on hand-made cases.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from featcache.errors import ConfigError, FeatcacheError
from featcache.interop.msf import map_msf, msf_key_map, official_msf_config
from featcache.quantize.msf import MSFQuantizer, MSFQuantizerConfig, align_to, feature_pyramid, fuse_shared
from tests.parity import assert_close, fixture_config, load_fixture

FIXTURES = ["msf_vq", "msf_vq_pinv"]
CASES = ["eval", "eval_residual", "train", "train_tau"]
LOSS_NAMES = {"align": ("alignment", 1.0), "commit": ("commitment", 0.25), "norm_e": ("normalisation", 0.1)}


def build(config: MSFQuantizerConfig | None = None, name: str = "msf_vq") -> tuple[MSFQuantizer, dict, dict]:
    tensors, metadata = load_fixture(name)
    info = fixture_config(metadata)
    quantizer = MSFQuantizer(config or official_msf_config(tensors["weights"]), info["feature_channels"])
    quantizer.load_state_dict(map_msf(tensors["weights"]), strict=True)
    return quantizer.eval(), tensors, info


def features_of(tensors: dict) -> torch.Tensor:
    return tensors["input"]["features"].permute(0, 2, 3, 1).contiguous()  # (B, C, h, w) -> (B, h, w, C)


def progress_for(alpha: float) -> float:
    """Training progress at which featcache's residual schedule (anneal over half) gives ``alpha``."""
    return 0.5 if alpha == 0 else float(torch.arccos(torch.tensor(2 * alpha - 1.0)) / torch.pi) * 0.5


@pytest.mark.parametrize("name", FIXTURES)
@pytest.mark.parametrize("case", CASES)
def test_msf_forward_equals_official(name: str, case: str) -> None:
    quantizer, tensors, info = build(name=name)
    spec = info["cases"][case]
    if spec["tau"]:
        quantizer.config = replace(quantizer.config, fusion_temperature=spec["tau"])
    alpha = spec["alpha"]
    if spec["train"]:  # the official pass drew its Gumbel noise from torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(spec["seed"])
        output = quantizer(features_of(tensors), progress=spec["progress"], training_noise=True, generator=generator)
        assert output.gumbel_scale == pytest.approx(spec["std"], rel=1e-6)
    else:
        output = quantizer(features_of(tensors), progress=progress_for(alpha), training_noise=False)
    assert output.alpha == pytest.approx(alpha, abs=1e-6)
    expected = tensors["output"]
    for i in range(info["num_scale"]):
        prefix = f"{case}.{i}."
        assert_close(output.raw_z[i], expected[prefix + "raw_encode"], what=f"{prefix} raw z")
        assert torch.equal(output.indices[i], expected[prefix + "zidx"]), f"{prefix} indices"
        assert_close(output.z[i], expected[prefix + "encode"], what=f"{prefix} fused z")
        assert_close(output.quantized[i], expected[prefix + "quant"], what=f"{prefix} quantized")
        assert_close(output.decoder_input[i], expected[prefix + "decode"], what=f"{prefix} decoder input")
        for official, (ours, weight) in LOSS_NAMES.items():
            value = weight * output.losses_per_scale[i][ours]
            assert_close(value.reshape(1), expected[prefix + "loss." + official], what=f"{prefix} {ours}")


def test_fusion_is_exercised_and_tokenize_matches() -> None:
    """The fixture really mixes levels (not a trivial parity), and tokenize gives the official level-0 indices."""
    quantizer, tensors, _ = build()
    output = quantizer(features_of(tensors), progress=1.0, training_noise=False)
    assert all(len(choice.unique()) > 1 for choice in output.scale_choice[:2])
    indices, error = quantizer.tokenize(features_of(tensors))
    assert torch.equal(indices, tensors["output"]["eval.0.zidx"])
    assert_close(quantizer.lookup(indices), tensors["output"]["eval.0.quant"], what="lookup")
    assert error.shape == indices[:, 0].shape and (error >= 0).all()


def test_mapping_gives_the_config_and_rejects_bad_keys() -> None:
    tensors, _ = load_fixture("msf_vq")
    config = official_msf_config(tensors["weights"])
    assert (config.codebook_size, config.code_dim, config.num_scales, config.specified_sizes()) == (16, 8, 3, [16, 8, 4])
    assert msf_key_map(tensors["weights"])["quant.2.project.weight"] == "specified.1.projection.weight"
    assert config.encoder_dim == 0
    pinv, _ = load_fixture("msf_vq_pinv")
    assert (official_msf_config(pinv["weights"]).encoder_dim, official_msf_config(pinv["weights"]).code_dim) == (4, 8)
    assert msf_key_map(pinv["weights"])["project.weight"] == "projection.weight"
    with pytest.raises(FeatcacheError, match="unexpected keys extra"):
        map_msf({**tensors["weights"], "extra": torch.zeros(1)})


def test_switches_depart_from_official() -> None:
    """Fusion off or area pyramid each change the level-0 output of the fixture."""
    base, tensors, _ = build()
    features = features_of(tensors)
    reference = base(features, progress=1.0, training_noise=False)
    for change in ({"inter_scale_fusion": False}, {"pyramid_downsample": "area"}):
        quantizer, _, _ = build(replace(base.config, **change))
        output = quantizer(features, progress=1.0, training_noise=False)
        assert any(not torch.equal(a, b) for a, b in zip(output.indices, reference.indices)), change


def _config(**kwargs: object) -> MSFQuantizerConfig:
    defaults = dict(codebook_size=2, code_dim=2, template_dim=4, encoder_layers=0, num_scales=2, code_similarity="standardised_distance")
    return MSFQuantizerConfig(**{**defaults, **kwargs})  # type: ignore[arg-type]


def test_fusion_takes_the_more_confident_scale() -> None:
    """Where level 0's vector lies midway between the codes, level 1's clear match (code 1) wins; where level 0
    is the clearer match (a larger margin between its best and second-best code), level 0 keeps its code."""
    codes = torch.tensor([[0.0, 0.0], [4.0, 0.0]])  # (K=2, d=2)
    fine = torch.zeros(1, 2, 2, 2)  # (B, d, 2, 2)
    fine[:, 0] = 2.0  # every fine vector (2, 0): exactly between the codes
    fine[0, :, 1, 1] = torch.tensor([0.1, 0.0])  # one fine position clearly on code 0
    coarse = torch.tensor([3.5, 0.0]).reshape(1, 2, 1, 1)  # (B, d, 1, 1): near code 1 (margin 3 < 3.8)
    index, paired, choice = fuse_shared([fine, coarse], 0, codes, _config())
    # Positions between the codes take level 1's confident match (code 1, upsampled by nearest).
    assert choice[0].tolist() == [[1, 1], [1, 0]]
    assert index[0].tolist() == [[1, 1], [1, 0]]
    assert torch.equal(paired[0, :, 0, 0], torch.tensor([3.5, 0.0]))  # paired z comes from the chosen level
    assert torch.equal(paired[0, :, 1, 1], torch.tensor([0.1, 0.0]))
    # For the coarse target the fine map is average-pooled: mean (1.525, 0) is less confident than (3.5, 0).
    index1, _, choice1 = fuse_shared([fine, coarse], 1, codes, _config())
    assert choice1.tolist() == [[[1]]] and index1.tolist() == [[[1]]]
    # Without fusion every level keeps its own match.
    _, paired_off, choice_off = fuse_shared([fine, coarse], 0, codes, _config(inter_scale_fusion=False))
    assert (choice_off == 0).all() and torch.equal(paired_off, fine)


def test_pyramid_and_alignment_ops() -> None:
    maps = torch.arange(64.0).reshape(1, 1, 8, 8)
    bilinear = feature_pyramid(maps, 3)
    assert [tuple(level.shape[-2:]) for level in bilinear] == [(8, 8), (4, 4), (2, 2)]
    assert_close(bilinear[1], torch.nn.functional.avg_pool2d(maps, 2), what="x0.5 bilinear = 2x2 mean")
    area = feature_pyramid(maps, 3, "area")
    assert_close(area[2], torch.nn.functional.avg_pool2d(maps, 4), what="area")
    assert torch.equal(align_to(bilinear[2], (8, 8)), bilinear[2].repeat_interleave(4, 2).repeat_interleave(4, 3))
    with pytest.raises(ValueError, match="too small"):
        feature_pyramid(torch.zeros(1, 1, 2, 2), 3)


def test_halves_and_switches_shapes() -> None:
    features = torch.randn(2, 4, 4, 6, generator=torch.Generator().manual_seed(0))
    cases = (({}, 2, 4), ({"combine": "halves"}, 2, 4), ({"specified_codebooks": False}, 1, 4), ({"encoder_dim": 3}, 2, 3))
    for kwargs, groups, channels in cases:
        config = _config(codebook_size=8, code_dim=4, encoder_layers=1, num_scales=3, **kwargs)
        quantizer = MSFQuantizer(config, feature_channels=6)
        output = quantizer(features, progress=0.3, training_noise=True, generator=torch.Generator().manual_seed(1))
        assert [tuple(i.shape) for i in output.indices] == [(2, groups, 4, 4), (2, groups, 2, 2), (2, groups, 1, 1)]
        assert [tuple(q.shape) for q in output.quantized] == [(2, 4, 4, 4), (2, 4, 2, 2), (2, 4, 1, 1)]
        assert [tuple(q.shape) for q in output.decoder_input] == [(2, channels, 4, 4), (2, channels, 2, 2), (2, channels, 1, 1)]
        indices, _ = quantizer.tokenize(features)
        assert tuple(quantizer.lookup(indices).shape) == (2, channels, 4, 4)
        sum(output.losses.values()).backward()
    with pytest.raises(ConfigError, match="even code_dim"):
        _config(code_dim=3, combine="halves")
    with pytest.raises(ConfigError, match="combine"):
        _config(combine="concat")


@pytest.mark.parametrize("name", FIXTURES)
def test_training_gradients_equal_official(name: str) -> None:
    """One seeded training pass, a fixed loss (weighted losses + a projection of every decoder input): same grads."""
    quantizer, tensors, info = build(name=name)
    quantizer.train()
    spec = info["cases"]["train"]
    features = features_of(tensors).requires_grad_(True)
    generator = torch.Generator().manual_seed(spec["seed"])
    output = quantizer(features, progress=spec["progress"], training_noise=True, generator=generator)
    loss = sum(
        terms["alignment"]
        + 0.25 * terms["commitment"]
        + 0.1 * terms["normalisation"]
        + (decoder_input * tensors["input"][f"train.upstream.{i}"]).mean()
        for i, (terms, decoder_input) in enumerate(zip(output.losses_per_scale, output.decoder_input))
    )
    assert_close(loss.reshape(1), tensors["output"]["train.fixed_loss"], what="fixed loss")
    loss.backward()
    parameters = dict(quantizer.named_parameters())
    key_map = msf_key_map(tensors["weights"])
    official = {key: grad for key, grad in tensors["grad"].items() if key != "features"}
    assert set(official) == {key for key, target in key_map.items() if target in parameters}
    for key, grad in official.items():
        assert_close(parameters[key_map[key]].grad, grad, what=f"grad {key}")
    assert_close(features.grad.permute(0, 3, 1, 2), tensors["grad"]["features"], what="grad features")
