"""DINOv3 encoders: the official model's features from the same random weights (fixture), shapes, weights, extraction."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import timm
import torch
from parity import assert_close, fixture_config, load_fixture

from featcache.encoders import ENCODERS, DinoV3Encoder, apply_final_norm, create_encoder
from featcache.encoders.dinov3 import load_dinov3_state_dict, model_arguments
from featcache.encoders.weights import read_checkpoint
from featcache.errors import WeightsError


def reduced_encoder(config: dict) -> DinoV3Encoder:
    """dino3-s16's timm model at the fixture's reduced width and depth (the mapping is what is tested)."""
    spec = dataclasses.replace(ENCODERS.get("dino3-s16"), channels=config["embed_dim"])
    arguments = model_arguments(config["img_size"], embed_dim=config["embed_dim"], depth=config["depth"], num_heads=config["num_heads"])
    return DinoV3Encoder(spec, config["img_size"], timm.create_model(spec.timm_name, pretrained=False, **arguments)).eval()


@pytest.mark.parametrize("prefix", ["", "teacher.backbone."])
def test_official_dinov3_checkpoint_gives_the_official_features(prefix: str, tmp_path: Path) -> None:
    tensors, metadata = load_fixture("dinov3_vit")
    config = fixture_config(metadata)
    assert config["n_storage_tokens"] == 4 and config["mask_k_bias"] and config["qkv_bias"]
    path = tmp_path / "official.pth"
    torch.save({f"{prefix}{key}": value for key, value in tensors["weights"].items()}, path)
    encoder = reduced_encoder(config)
    load_dinov3_state_dict(encoder, read_checkpoint(path), path)
    with torch.no_grad():
        features = encoder(tensors["input"]["image"])  # (B, h, w, C) last block, cls + registers dropped
    assert_close(features, tensors["output"]["last_block"], what="last block")
    normed = apply_final_norm(features, encoder.final_norm_parameters())
    assert_close(normed, tensors["output"]["final_norm"], what="final norm")
    # The official key bias is masked out: timm has none, so a non-zero one in the checkpoint must not matter.
    assert tensors["weights"]["blocks.0.attn.qkv.bias"][32:64].abs().sum() > 0


def test_dinov3_checkpoint_of_another_patch_size_is_refused(tmp_path: Path) -> None:
    tensors, metadata = load_fixture("dinov3_vit")
    weights = dict(tensors["weights"])
    weights["patch_embed.proj.weight"] = torch.zeros(32, 3, 14, 14)
    path = tmp_path / "bad.pth"
    torch.save(weights, path)
    with pytest.raises(WeightsError, match="patch size"):
        load_dinov3_state_dict(reduced_encoder(fixture_config(metadata)), read_checkpoint(path), path)


def test_dinov3_registry_entries_and_random_weights() -> None:
    for name, channels in (("dino3-s16", 384), ("dino3-b16", 768)):
        spec = ENCODERS.get(name)
        assert spec.channels == channels and spec.prefix_tokens == 5 and spec.derivable_kinds == ("final_norm",)
        assert f"{spec.timm_name}.{spec.hub_tag}" in timm.list_pretrained(spec.timm_name + "*")  # a real hub weight
    encoder = create_encoder("dino3-s16", weights="random", resolution=32, seed=3)
    with torch.no_grad():
        assert encoder(torch.randn(1, 3, 32, 32)).shape == (1, 2, 2, 384)
    assert encoder.weights.is_random and encoder.weights.location == "seed=3"


def test_extract_with_random_dinov3_weights(tmp_path: Path, shapes_dir: Path) -> None:
    from featcache.datasets import open_dataset
    from featcache.extraction import ExtractConfig, extract
    from featcache.store import FeatureStore

    config = ExtractConfig(vfm="dino3-s16", weights="random", resolution=32, image_size=32, mask_size=32, samples_per_chunk=4, batch_size=8)
    extract(open_dataset(str(shapes_dir)), tmp_path / "s.zarr", config, device="cpu", show_progress=False)
    store = FeatureStore(tmp_path / "s.zarr", warn_random=False)
    assert store.layout.grid == (2, 2) and store.layout.channels == 384
    assert store.feature_kinds == ("last_block", "final_norm")
    features = store.features(slice(0, 4), kind="final_norm")  # derived from the stored LayerNorm
    assert features.shape == (4, 2, 2, 384) and abs(float(features.mean())) < 0.5
