"""Encoders with random weights on small inputs: shapes, the stored/derived kinds, seeding and weight loading."""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from featcache.encoders import ENCODERS, DinoV2Encoder, FrozenEncoder, Sam2Encoder, apply_final_norm, create_encoder, list_encoders, state_dict_sha256
from featcache.errors import FeatcacheError, WeightsError

#: Small test resolutions: multiples of the ViT patch (14) or Hiera's coarsest stride (32). dino2-b14 is only
#: checked on the meta device (its random init alone takes seconds on 2 cores).
SMALL_RESOLUTION = {"dino2-s14": 56, "dino2-s14-reg4": 56, "dino3-s16": 32, "sam2-t16": 64}


@pytest.fixture(autouse=True, scope="module")
def single_thread() -> Iterator[None]:
    """One intra-op thread: these models are tiny, and on a shared 2-core machine torch's spinning worker
    threads make the suite several times slower than one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@functools.lru_cache(maxsize=None)
def random_encoder(name: str, resolution: int, seed: int = 0) -> FrozenEncoder:
    """Build once per (name, resolution, seed); tests only read these encoders."""
    return create_encoder(name, weights="random", resolution=resolution, seed=seed)


def images(resolution: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, resolution, resolution, generator=generator)


def run(encoder: FrozenEncoder, inputs: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return encoder(inputs)


def assert_one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------------------------------- shapes


def test_registry_lists_all_specs() -> None:
    names = [spec.name for spec in list_encoders()]
    assert names == sorted(["dino2-s14", "dino2-b14", "dino2-s14-reg4", "dino3-s16", "dino3-b16", "sam2-t16"])
    assert ENCODERS.get("sam2-t16").stored_kind == "fpn_neck"
    assert ENCODERS.get("dino2-s14").derivable_kinds == ("final_norm",)


@pytest.mark.parametrize("name", sorted(SMALL_RESOLUTION))
def test_output_shape_small_resolution(name: str) -> None:
    spec = ENCODERS.get(name)
    resolution = SMALL_RESOLUTION[name]
    encoder = random_encoder(name, resolution)
    output = run(encoder, images(resolution))
    side = resolution // spec.patch_size
    assert output.shape == (2, side, side, spec.channels)
    assert output.dtype == torch.float32
    assert encoder.grid == (side, side)
    assert not encoder.training
    assert not any(parameter.requires_grad for parameter in encoder.parameters())
    assert encoder.weights.is_random and encoder.weights.location == "seed=0"


@pytest.mark.parametrize("name", ["dino2-s14", "dino2-b14", "dino2-s14-reg4", "sam2-t16"])
def test_default_resolution_shape_on_meta_device(name: str) -> None:
    """Shape inference without weights or compute: every spec at its default resolution, dino2-b14 included."""
    spec = ENCODERS.get(name)
    resolution = spec.default_resolution
    with torch.device("meta"):
        if spec.family == "dinov2":
            vit = timm.create_model(spec.timm_name, num_classes=0, img_size=resolution, dynamic_img_size=False, weight_init="skip")
            encoder: FrozenEncoder = DinoV2Encoder(spec, resolution, vit)  # checks channels and prefix tokens
        else:
            encoder = Sam2Encoder(spec, resolution, timm.create_model(spec.timm_name, num_classes=0, weight_init="skip"))
            assert [conv.conv.in_channels for conv in encoder.neck.convs] == [768, 384, 192, 96]  # coarsest first
        output = encoder(torch.empty(2, 3, resolution, resolution))
    assert output.shape == (2, 16, 16, spec.channels)


def test_dinov2_runs_at_default_resolution(tmp_path: Path) -> None:
    """Weights saved at 56 px load at 224 px (position embedding resampled 4x4 -> 16x16) and run."""
    path = tmp_path / "vits14_56px.safetensors"
    save_file({key: value.contiguous() for key, value in random_encoder("dino2-s14", 56).vit.state_dict().items()}, str(path))
    encoder = create_encoder("dino2-s14", weights=str(path))
    assert encoder.resolution == 224 and encoder.vit.pos_embed.shape == (1, 257, 384)
    assert run(encoder, images(224, batch=1)).shape == (1, 16, 16, 384)


def test_wrong_input_size_is_rejected() -> None:
    encoder = random_encoder("dino2-s14", 56)
    with pytest.raises(FeatcacheError, match=r"\(1, 3, 70, 70\)") as error:
        run(encoder, images(70, batch=1))
    assert_one_line(error)


# ---------------------------------------------------------------------------------------- stored vs derived


@pytest.mark.parametrize("name", ["dino2-s14", "dino2-s14-reg4"])
def test_last_block_plus_final_norm_matches_timm(name: str) -> None:
    spec = ENCODERS.get(name)
    encoder = random_encoder(name, 56)
    inputs = images(56)
    last_block = run(encoder, inputs)  # (2, 4, 4, C)
    with torch.inference_mode():
        reference = encoder.vit.forward_features(inputs)  # (2, prefix + 16, C), final norm applied
    assert reference.shape[1] == spec.prefix_tokens + 16
    normed = apply_final_norm(last_block, encoder.final_norm_parameters())
    torch.testing.assert_close(normed.reshape(2, 16, -1), reference[:, spec.prefix_tokens :], atol=1e-5, rtol=1e-5)
    # the stored kind really is before the norm
    assert not torch.allclose(last_block.reshape(2, 16, -1), reference[:, spec.prefix_tokens :], atol=1e-3)
    # numpy in, numpy out (the store reader's path)
    stored = last_block.numpy().astype(np.float16)
    stored.flags.writeable = False  # as read back from a store
    normed_numpy = apply_final_norm(stored, encoder.final_norm_parameters())
    assert isinstance(normed_numpy, np.ndarray) and normed_numpy.dtype == np.float32
    np.testing.assert_allclose(normed_numpy, normed.numpy(), atol=1e-2)  # float16 storage rounding


def test_final_norm_parameters_are_plain_floats() -> None:
    parameters = random_encoder("dino2-s14", 56).final_norm_parameters()
    assert len(parameters["weight"]) == 384 and len(parameters["bias"]) == 384
    assert isinstance(parameters["weight"][0], float) and parameters["eps"] == pytest.approx(1e-6)
    assert random_encoder("sam2-t16", 64).final_norm_parameters() is None
    with pytest.raises(FeatcacheError, match="expected 10"):
        apply_final_norm(torch.zeros(2, 10), parameters)


# ----------------------------------------------------------------------------------------------- seeding


def test_same_seed_same_weights_different_seed_different_weights() -> None:
    first = random_encoder("dino2-s14", 56, seed=0)
    rng_before = torch.get_rng_state()
    again = create_encoder("dino2-s14", weights="random", resolution=56, seed=0)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG stream is untouched
    other = random_encoder("dino2-s14", 56, seed=1)
    assert first.weights.sha256 == again.weights.sha256 == state_dict_sha256(again)
    for (name, value), (_, value_again) in zip(first.state_dict().items(), again.state_dict().items()):
        assert torch.equal(value, value_again), name
    assert other.weights.sha256 != first.weights.sha256
    assert other.weights.location == "seed=1"


# ---------------------------------------------------------------------------------------- argument errors


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(FeatcacheError) as error:
        create_encoder("dino4-s16", weights="random")
    message = assert_one_line(error)
    assert "dino4-s16" in message
    assert all(name in message for name in ("dino2-s14", "dino2-b14", "dino2-s14-reg4", "dino3-s16", "dino3-b16", "sam2-t16"))


@pytest.mark.parametrize(("name", "resolution", "stride"), [("dino2-s14", 100, "14"), ("sam2-t16", 240, "32")])
def test_resolution_must_be_a_multiple_of_the_stride(name: str, resolution: int, stride: str) -> None:
    with pytest.raises(FeatcacheError) as error:
        create_encoder(name, weights="random", resolution=resolution)
    message = assert_one_line(error)
    assert str(resolution) in message and stride in message


@pytest.mark.parametrize(("name", "hub_id"), [("dino2-s14", "vit_small_patch14_dinov2.lvd142m"), ("sam2-t16", "sam2_hiera_tiny")])
def test_hub_offline_fails_fast_with_one_line(
    name: str, hub_id: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))  # nothing cached
    offline_before = constants.HF_HUB_OFFLINE
    start = time.monotonic()
    with pytest.raises(WeightsError) as error:
        create_encoder(name, weights="hub", resolution=SMALL_RESOLUTION[name])
    assert time.monotonic() - start < 15
    message = assert_one_line(error)
    assert message.startswith(f"could not download {hub_id}")
    assert "--weights PATH" in message and "--weights random" in message
    assert constants.HF_HUB_OFFLINE == offline_before


# ------------------------------------------------------------------------------------------ file weights


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_state_dict_round_trips(suffix: str, tmp_path: Path) -> None:
    source = random_encoder("dino2-s14", 56)
    path = tmp_path / f"vits14{suffix}"
    state = {key: value.contiguous() for key, value in source.vit.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state, "epoch": 7}, path)  # wrapped, with a non-tensor entry
    loaded = create_encoder("dino2-s14", weights=str(path), resolution=56)
    assert loaded.weights.source == "file" and loaded.weights.location == str(path)
    assert loaded.weights.sha256 == source.weights.sha256
    assert loaded.weights.file_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    inputs = images(56)
    torch.testing.assert_close(run(loaded, inputs), run(source, inputs), atol=0, rtol=0)
    assert not any(parameter.requires_grad for parameter in loaded.parameters())


def test_featcache_sam2_state_dict_round_trips_and_runs_at_256(tmp_path: Path) -> None:
    source = random_encoder("sam2-t16", 64)
    path = tmp_path / "sam2.safetensors"
    save_file({key: value.contiguous() for key, value in source.state_dict().items()}, str(path))
    loaded = create_encoder("sam2-t16", weights=str(path), resolution=64)
    assert loaded.weights.sha256 == source.weights.sha256
    torch.testing.assert_close(run(loaded, images(64)), run(source, images(64)), atol=0, rtol=0)
    # Hiera's weights do not depend on the resolution: the default 256 px (16x16 grid) runs with the same ones
    default = create_encoder("sam2-t16", weights=str(path))
    assert default.resolution == 256 and default.weights.sha256 == source.weights.sha256
    assert run(default, images(256, batch=1)).shape == (1, 16, 16, 256)


def official_dinov2_state_dict(vit: torch.nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A timm DINOv2 state dict in the official release format: 518 px position embedding with the cls slot
    (1 + 37 * 37 = 1370 tokens), ``mask_token``, ``register_tokens``; everything else keeps its name."""
    state = {key: value.clone() for key, value in vit.state_dict().items()}
    channels = state["cls_token"].shape[-1]
    state["pos_embed"] = torch.randn(1, 1370, channels, generator=generator) * 0.02
    state["mask_token"] = torch.zeros(1, channels)
    if "reg_token" in state:
        state["register_tokens"] = state.pop("reg_token")
    return state


@pytest.mark.parametrize("name", ["dino2-s14", "dino2-s14-reg4"])
def test_official_dinov2_checkpoint_loads(name: str, tmp_path: Path) -> None:
    spec = ENCODERS.get(name)
    source = random_encoder(name, 56)
    official = official_dinov2_state_dict(source.vit, torch.Generator().manual_seed(11))
    assert any(key.endswith("ls1.gamma") for key in official)
    path = tmp_path / f"{name}_pretrain.pth"
    torch.save(official, path)

    # at the release's own 518 px nothing is resampled: the loaded tensors are the official ones
    full = create_encoder(name, weights=str(path), resolution=518)
    loaded = full.vit.state_dict()
    if spec.prefix_tokens == 1:
        assert torch.equal(loaded["pos_embed"], official["pos_embed"])
        assert torch.equal(loaded["cls_token"], official["cls_token"])
    else:  # timm keeps register models' cls position inside cls_token and registers apart
        assert torch.equal(loaded["pos_embed"], official["pos_embed"][:, 1:])
        assert torch.equal(loaded["cls_token"], official["cls_token"] + official["pos_embed"][:, :1])
        assert torch.equal(loaded["reg_token"], official["register_tokens"])
    for key in ("patch_embed.proj.weight", "blocks.11.ls2.gamma", "blocks.3.attn.qkv.weight", "norm.bias"):
        assert torch.equal(loaded[key], official[key]), key

    # at a small resolution the position embedding is resampled from 37 x 37 to 4 x 4
    small = create_encoder(name, weights=str(path), resolution=56)
    assert small.vit.pos_embed.shape == (1, 16 + (1 if spec.prefix_tokens == 1 else 0), spec.channels)
    assert run(small, images(56)).shape == (2, 4, 4, spec.channels)
    assert small.weights.source == "file" and small.weights.sha256 != source.weights.sha256

    if spec.prefix_tokens == 1:  # a DINOv2 training checkpoint wraps the weights as {"teacher": {"backbone.*"}}
        teacher_path = tmp_path / "teacher_checkpoint.pth"
        teacher = {f"backbone.{key}": value for key, value in official.items()} | {"dino_head.last_layer.weight": torch.zeros(2)}
        torch.save({"teacher": teacher, "iteration": 5}, teacher_path)
        assert create_encoder(name, weights=str(teacher_path), resolution=56).weights.sha256 == small.weights.sha256


def test_official_sam2_checkpoint_loads_trunk_and_neck(tmp_path: Path) -> None:
    source = random_encoder("sam2-t16", 64)
    model = {}
    for key, value in source.trunk.state_dict().items():
        official_key = key.replace("mlp.fc1", "mlp.layers.0").replace("mlp.fc2", "mlp.layers.1")
        model[f"image_encoder.trunk.{official_key}"] = value.clone()
    for index, conv in enumerate(source.neck.convs):
        model[f"image_encoder.neck.convs.{index}.conv.weight"] = conv.conv.weight.clone()
        model[f"image_encoder.neck.convs.{index}.conv.bias"] = conv.conv.bias.clone()
    model["sam_mask_decoder.iou_token.weight"] = torch.zeros(1, 256)  # the rest of SAM2 is ignored
    model["memory_encoder.out_proj.weight"] = torch.zeros(64, 256, 1, 1)
    assert any("mlp.layers.0" in key for key in model)
    path = tmp_path / "sam2_hiera_tiny.pt"
    torch.save({"model": model}, path)

    loaded = create_encoder("sam2-t16", weights=str(path), resolution=64)
    assert loaded.weights.sha256 == source.weights.sha256
    inputs = images(64)
    output = run(loaded, inputs)
    torch.testing.assert_close(output, run(source, inputs), atol=0, rtol=0)

    # SAM2's convention: convs[0] acts on the stride-32 map, convs[1] on stride 16 (nearest top-down sum)
    assert model["image_encoder.neck.convs.0.conv.weight"].shape[1] == 768
    with torch.inference_mode():
        levels = loaded.trunk.forward_intermediates(inputs, intermediates_only=True)  # strides 4, 8, 16, 32
        coarse = F.conv2d(levels[3], model["image_encoder.neck.convs.0.conv.weight"], model["image_encoder.neck.convs.0.conv.bias"])
        lateral = F.conv2d(levels[2], model["image_encoder.neck.convs.1.conv.weight"], model["image_encoder.neck.convs.1.conv.bias"])
        expected = lateral + F.interpolate(coarse, scale_factor=2.0, mode="nearest")  # (2, 256, 4, 4)
    torch.testing.assert_close(output, expected.permute(0, 2, 3, 1), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------ file errors


@pytest.mark.parametrize("name", ["dino2-s14", "sam2-t16"])
def test_checkpoint_with_wrong_keys_fails_naming_the_file(name: str, tmp_path: Path) -> None:
    path = tmp_path / "wrong.pth"
    torch.save({"model": {"encoder_layer.weight": torch.zeros(3, 3), "decoder.bias": torch.zeros(3)}}, path)
    with pytest.raises(WeightsError) as error:
        create_encoder(name, weights=str(path), resolution=SMALL_RESOLUTION[name])
    message = assert_one_line(error)
    assert str(path) in message and "unexpected" in message and "missing" in message


def test_timm_checkpoint_for_another_variant_fails(tmp_path: Path) -> None:
    path = tmp_path / "vits14.safetensors"
    save_file({key: value.contiguous() for key, value in random_encoder("dino2-s14", 56).vit.state_dict().items()}, str(path))
    with pytest.raises(WeightsError, match="reg_token") as error:
        create_encoder("dino2-s14-reg4", weights=str(path), resolution=56)
    assert str(path) in assert_one_line(error)


def test_bare_hiera_trunk_is_refused_for_sam2(tmp_path: Path) -> None:
    path = tmp_path / "trunk.safetensors"
    save_file({key: value.contiguous() for key, value in random_encoder("sam2-t16", 64).trunk.state_dict().items()}, str(path))
    with pytest.raises(WeightsError, match="without the FPN neck") as error:
        create_encoder("sam2-t16", weights=str(path), resolution=64)
    assert str(path) in assert_one_line(error)


def test_missing_or_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsError) as error:
        create_encoder("dino2-s14", weights=str(missing), resolution=56)
    assert str(missing) in assert_one_line(error)

    text = tmp_path / "weights.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(WeightsError, match=r"\.txt") as error:
        create_encoder("dino2-s14", weights=str(text), resolution=56)
    assert str(text) in assert_one_line(error)

    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x00garbage")
    with pytest.raises(WeightsError) as error:
        create_encoder("dino2-s14", weights=str(corrupt), resolution=56)
    assert str(corrupt) in assert_one_line(error)
