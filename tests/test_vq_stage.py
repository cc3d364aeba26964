"""VQ pre-training from the cache and tokenizing into the store."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr
from safetensors.torch import load_file

from featcache.config import load_config
from featcache.datasets import open_dataset
from featcache.errors import ConfigError, FeatcacheError, StoreError
from featcache.extraction import ExtractConfig, extract
from featcache.quantize import QuantizerConfig, VQDecoderConfig
from featcache.store import FeatureStore, schema
from featcache.training.config import TrainSettings, VQTrainConfig
from featcache.training.metrics_log import MetricsLog
from featcache.training.runs import build_vq_model, load_vq_run
from featcache.training.tokenize import tokenize_store
from featcache.training.vq import train_vq

CONFIGS = Path(__file__).parent.parent / "configs" / "vq"


def tiny_vq_config(steps: int = 60) -> VQTrainConfig:
    return VQTrainConfig(
        quantizer=QuantizerConfig(codebook_size=16, code_dim=8, template_dim=8, encoder_layers=1, encoder_channels=32),
        decoder=VQDecoderConfig(target="pixels", channels=8, image_size=32),
        train=TrainSettings(steps=steps, batch_size=8, learning_rate=3e-3, log_every=5, checkpoint_every=10, loader="memory"),
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, shapes_dir: Path) -> Path:
    config = ExtractConfig(vfm="dino2-s14", weights="random", resolution=28, image_size=32, mask_size=48, samples_per_chunk=4, batch_size=8)
    out = tmp_path_factory.mktemp("vq") / "store.zarr"
    extract(open_dataset(str(shapes_dir)), out, config, device="cpu", show_progress=False)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, store: Path) -> Path:
    run = tmp_path_factory.mktemp("runs") / "vq"
    train_vq(store, tiny_vq_config(), run, device="cpu", show_progress=False)
    return run


def test_training_lowers_reconstruction_loss_and_uses_several_codes(trained: Path) -> None:
    rows = MetricsLog.read(trained / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, *range(5, 61, 5)]
    first, last = rows[0]["loss_reconstruction"], np.mean([r["loss_reconstruction"] for r in rows[-2:]])
    assert last < 0.5 * first
    assert max(row["used_codes"] for row in rows) > 1
    assert {"perplexity", "usage_cv", "gumbel_scale", "alpha", "learning_rate"} <= set(rows[-1])
    assert rows[0]["alpha"] > rows[-1]["alpha"] == 0.0  # residual annealed over the first half
    assert (trained / "metrics.csv").read_text().count("\n") == len(rows) + 1
    for name in ("model.safetensors", "config.yaml", "run.json", "train_state.pt", "reconstructions.png"):
        assert (trained / name).is_file(), name


def flatten_saved_config(run_dir: Path) -> None:
    """Rewrite a run folder's config.yaml as featcache wrote it before the ``train`` section: its keys at the top."""
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    train = saved.pop("train")
    train.pop("data_seed")  # VQ configs had none
    (run_dir / "config.yaml").write_text(yaml.safe_dump({**saved, **train}, sort_keys=False))


@pytest.mark.parametrize("layout", ["current", "flat"])
def test_resume_reproduces_an_uninterrupted_run(layout: str, tmp_path: Path, store: Path, trained: Path) -> None:
    """Also from a run folder saved before the ``train`` section (flat training keys)."""
    run = tmp_path / "resumed"
    config = tiny_vq_config()
    train_vq(store, config, run, device="cpu", show_progress=False, stop_after=30)
    if layout == "flat":
        flatten_saved_config(run)
        assert load_vq_run(run, torch.device("cpu"))[1] == config
    with pytest.raises(FeatcacheError, match="--resume"):
        train_vq(store, config, run, device="cpu", show_progress=False)
    with pytest.raises(ConfigError, match=r"train\.steps: 60 -> 70"):
        train_vq(store, replace(config, train=replace(config.train, steps=70)), run, device="cpu", show_progress=False, resume=True)
    result = train_vq(store, config, run, device="cpu", show_progress=False, resume=True)
    assert result.steps == 30
    resumed, uninterrupted = load_file(str(run / "model.safetensors")), load_file(str(trained / "model.safetensors"))
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        torch.testing.assert_close(resumed[key], uninterrupted[key], rtol=0, atol=0, msg=key)
    assert [r["step"] for r in MetricsLog.read(run / "metrics.jsonl")] == [1, *range(5, 61, 5)]


def test_online_baseline_matches_the_cache_in_the_first_steps(tmp_path: Path, store: Path) -> None:
    config = tiny_vq_config(steps=40)
    cached = train_vq(store, config, tmp_path / "cached", device="cpu", show_progress=False, stop_after=3)
    online = train_vq(store, config, tmp_path / "online", device="cpu", show_progress=False, stop_after=3, online=True)
    # Same seed, same samples and views: only the float16 storage of the features differs.
    np.testing.assert_allclose(online.first_losses, cached.first_losses, rtol=2e-2)


def test_tokenize_round_trip_and_determinism(tmp_path: Path, store: Path, trained: Path) -> None:
    work = tmp_path / "store.zarr"
    import shutil

    shutil.copytree(store, work)
    summary = tokenize_store(work, trained, "tiny", device="cpu", show_progress=False)
    assert summary.units_run == 3
    tokenize_store(work, trained, "again", device="cpu", show_progress=False)
    reader = FeatureStore(work, warn_random=False)
    assert reader.token_names() == ["again", "tiny"]
    tokens = reader.tokens("tiny", np.arange(12), view=None)  # (12, 2, 2, 2)
    assert tokens.dtype == np.uint16 and tokens.shape == (12, 2, 2, 2)
    np.testing.assert_array_equal(tokens, reader.tokens("again", np.arange(12), view=None))  # Gumbel off: deterministic
    # Independent check: the run's model on the store's final-norm features.
    model, _, info, _ = load_vq_run(trained, torch.device("cpu"))
    assert info["store"]["feature_kind"] == "final_norm"
    features = torch.from_numpy(reader.features(np.arange(12), view=1, kind="final_norm"))
    expected, errors = model.tokenize(features)
    np.testing.assert_array_equal(tokens[:, 1], expected.numpy())
    np.testing.assert_allclose(reader.token_errors("tiny", np.arange(12), view=1), errors.numpy(), rtol=2e-3, atol=1e-3)
    np.testing.assert_allclose(reader.codebook("tiny"), model.quantizer.codebook.codes().numpy(), rtol=1e-6)
    attributes = reader.token_attributes("tiny")
    assert attributes["vq"]["weights_sha256"] and attributes["completed"] and attributes["codebook_size"] == 16


def test_tokenize_refuses_existing_names_and_resumes_unfinished_sets(tmp_path: Path, store: Path, trained: Path) -> None:
    import shutil

    work = tmp_path / "store.zarr"
    shutil.copytree(store, work)
    tokenize_store(work, trained, "tiny", device="cpu", show_progress=False)
    before = FeatureStore(work, warn_random=False).tokens("tiny", np.arange(12), view=None)
    with pytest.raises(StoreError, match="'tiny'.*--overwrite"):
        tokenize_store(work, trained, "tiny", device="cpu", show_progress=False)
    # Simulate an interruption after unit 0: unit 1 and 2 not done, set not completed.
    group = zarr.open_group(str(work / "tokens" / "tiny"), mode="r+")
    group[schema.UNITS_DONE][1:] = 0
    attributes = dict(group.attrs["featcache_tokens"])
    attributes["completed"] = None
    group.attrs["featcache_tokens"] = attributes
    summary = tokenize_store(work, trained, "tiny", device="cpu", show_progress=False)
    assert summary.units_run == 2
    np.testing.assert_array_equal(FeatureStore(work, warn_random=False).tokens("tiny", np.arange(12), view=None), before)
    assert tokenize_store(work, trained, "tiny", overwrite=True, device="cpu", show_progress=False).units_run == 3


def test_tokenize_refuses_a_run_trained_on_another_vfm(tmp_path: Path, shapes_dir: Path, trained: Path) -> None:
    other = tmp_path / "reg4.zarr"
    config = ExtractConfig(vfm="dino2-s14-reg4", weights="random", resolution=28, image_size=32, mask_size=48, samples_per_chunk=4)
    extract(open_dataset(str(shapes_dir)), other, config, device="cpu", show_progress=False)
    with pytest.raises(StoreError, match="trained on dino2-s14 features.*holds dino2-s14-reg4"):
        tokenize_store(other, trained, "x", device="cpu", show_progress=False)


def test_bad_configs_and_stores_fail_in_one_line(tmp_path: Path, shapes_dir: Path, store: Path) -> None:
    with pytest.raises(ConfigError, match="unknown config key 'quantizer.codebok_size'.*quantizer.codebook_size"):
        load_config(VQTrainConfig, None, ["quantizer.codebok_size=3"])
    no_images = tmp_path / "noimages.zarr"
    config = ExtractConfig(vfm="dino2-s14", weights="random", resolution=28, image_size=0, mask_size=48, samples_per_chunk=4)
    extract(open_dataset(str(shapes_dir)), no_images, config, device="cpu", show_progress=False)
    with pytest.raises(StoreError, match="no cached images"):
        train_vq(no_images, tiny_vq_config(), tmp_path / "r1", device="cpu", show_progress=False)
    group = zarr.open_group(str(store), mode="r")
    assert group[schema.UNITS_DONE][:].all()
    incomplete = tmp_path / "incomplete.zarr"
    import shutil

    shutil.copytree(store, incomplete)
    zarr.open_group(str(incomplete), mode="r+")[schema.UNITS_DONE][2] = 0
    with pytest.raises(StoreError, match="incomplete"):
        train_vq(incomplete, tiny_vq_config(), tmp_path / "r2", device="cpu", show_progress=False)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_vq_config_loads_and_runs_one_step(path: Path) -> None:
    config = load_config(VQTrainConfig, path)
    grid = (16, 16)
    model = build_vq_model(config, 384, grid)
    features = torch.randn(2, *grid, 384)
    targets = torch.rand(2, 3, config.decoder.image_size, config.decoder.image_size) * 2 - 1 if config.decoder.target == "pixels" else features
    output = model(features, targets, progress=0.0)
    output.losses["total"].backward()
    assert torch.isfinite(output.losses["total"])
